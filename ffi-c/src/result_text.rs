//! `tl_result_name` and `tl_result_message`: a result code's name and description for C.
//!
//! Apart from `result` (the type) so that the dependencies go one way:
//! `result` <- `boundary` <- these exports.

use std::ffi::c_char;

use crate::boundary::{copy_out, ffi_boundary, ffi_boundary_or};
use crate::result::tl_result;

/// The symbolic name of a result code (`"TL_TRANSIENT"`), or `"TL_UNKNOWN"` for a number
/// that is not a `tl_result`.
///
/// Ownership: the returned string is static; never free it. Thread-safety: callable from
/// any thread.
#[no_mangle]
pub extern "C" fn tl_result_name(code: u32) -> *const c_char {
    ffi_boundary_or(std::ptr::null(), || {
        tl_result::from_code(code)
            .map_or(c"TL_UNKNOWN", tl_result::name)
            .as_ptr()
    })
}

/// Copies a description of a result code into `buf`, e.g.
/// `"TL_TRANSIENT (transient): a temporary failure; retried with backoff"`.
///
/// `buf` receives at most `len` bytes, always NUL-terminated; `*written` receives the text
/// length (without the terminator), or with `TL_BUFFER_TOO_SMALL` the needed buffer size
/// (terminator included). `buf` may be NULL when `len` is 0 (a size query).
/// Returns `TL_INVALID_ARGUMENT` (and writes nothing) when `code` is not a `tl_result`.
///
/// Ownership: the caller owns `buf`; nothing is retained. Thread-safety: callable from any
/// thread.
///
/// # Safety
/// `buf` must be NULL or writable for `len` bytes; `written` must be writable.
#[no_mangle]
pub unsafe extern "C" fn tl_result_message(
    code: u32,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> tl_result {
    ffi_boundary(|| {
        let Some(result) = tl_result::from_code(code) else {
            return if written.is_null() {
                tl_result::TL_NULL_ARGUMENT
            } else {
                tl_result::TL_INVALID_ARGUMENT
            };
        };
        let name = result.name().to_str().unwrap_or_default();
        let text = match result.kind() {
            Some(kind) => format!("{name} ({kind}): {}", result.description()),
            None => format!("{name}: {}", result.description()),
        };
        // SAFETY: the caller guarantees `buf`/`len` and `written` per this function's contract.
        match unsafe { copy_out(text.as_bytes(), buf, len, written) } {
            Ok(()) => tl_result::TL_OK,
            Err(failure) => failure.code,
        }
    })
}
