//! C ABI of tokenlease (`libtokenlease.so` / `libtokenlease.a`, header `include/tokenlease.h`).
//!
//! Conventions, following rustls-ffi:
//!
//! - Every function is named `tl_<type>_<verb>` and returns a [`tl_result`] unless it cannot
//!   fail (accessors of a `tl_token`, `tl_login_request` or `tl_device_login`,
//!   `tl_manager_needs_response_body`, `_free`).
//! - Handles (`tl_manager`, `tl_token`, `tl_login_request`, `tl_device_login`,
//!   `tl_fetch_output`, `tl_manual_clock`) are opaque pointers created by the library and
//!   released by a NULL-safe `_free`.
//! - Every export runs inside one panic boundary: a Rust panic becomes `TL_INTERNAL` and never
//!   unwinds into C.
//! - Text is copied into caller buffers, always NUL-terminated. A buffer that is too small
//!   yields `TL_BUFFER_TOO_SMALL` and the needed size (terminator included) in `*written`.
//! - Bad arguments (NULL pointers, non-UTF-8 text, unknown codes) return a result code.
//!
//! No function here contains lifecycle logic: they convert arguments and results and call
//! `tokenlease::Manager`, which does everything else.

#![allow(non_camel_case_types)]

mod boundary;
mod clock;
mod events;
mod http;
mod login;
mod manager;
mod result;
mod result_text;
mod source;
mod store;
mod token;

pub use clock::tl_manual_clock;
pub use events::{tl_event, tl_event_callback, tl_event_kind, tl_refresh_reason};
pub use http::tl_header;
pub use login::{tl_device_login, tl_login_request};
pub use manager::{tl_counters, tl_manager, tl_status, tl_token_state};
pub use result::tl_result;
pub use source::{tl_fetch_output, tl_source_callbacks};
pub use store::{tl_load_output, tl_store_callbacks};
pub use token::tl_token;

use std::ffi::c_char;

/// The library version as a static NUL-terminated string, e.g. `"0.1.0"`.
///
/// Ownership: the string is static; never free it. Thread-safety: callable from any thread.
#[no_mangle]
pub extern "C" fn tl_version() -> *const c_char {
    boundary::ffi_boundary_or(std::ptr::null(), || {
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    })
}
