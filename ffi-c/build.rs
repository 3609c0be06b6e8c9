//! Gives the shared library a SONAME (`libtokenlease.so.<major>.<minor>` while the major
//! version is 0, `libtokenlease.so.<major>` after), as cargo-c would, so programs linked
//! against an installed copy find it by its versioned name.

fn main() {
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "android" || target_os.ends_with("bsd") {
        let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
        let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_else(|_| "0".into());
        let soname = if major == "0" {
            format!("libtokenlease.so.0.{minor}")
        } else {
            format!("libtokenlease.so.{major}")
        };
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
