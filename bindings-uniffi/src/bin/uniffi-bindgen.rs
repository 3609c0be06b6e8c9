//! `uniffi-bindgen`, built from the workspace's UniFFI version so the generated Kotlin and
//! Swift always match the scaffolding in `libtokenlease_uniffi`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
