//! The panic boundary and the argument/buffer helpers every export uses.

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::result::tl_result;

/// Why a call failed: a result code and a human-readable detail (never a token value).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: tl_result,
    pub(crate) detail: String,
}

impl Failure {
    pub(crate) fn new(code: tl_result, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }

    pub(crate) fn null(argument: &str) -> Self {
        Self::new(
            tl_result::TL_NULL_ARGUMENT,
            format!("argument `{argument}` is NULL"),
        )
    }

    pub(crate) fn panic() -> Self {
        Self::new(
            tl_result::TL_INTERNAL,
            "internal: a panic was caught at the C boundary (a bug in tokenlease)",
        )
    }
}

impl From<tl_core::Error> for Failure {
    fn from(err: tl_core::Error) -> Self {
        Self::new(tl_result::from_kind(err.kind()), err.to_string())
    }
}

/// Runs `f`, turning a panic into `TL_INTERNAL`. Every export returning `tl_result` goes
/// through this (directly or through `manager_call`).
pub(crate) fn ffi_boundary(f: impl FnOnce() -> tl_result) -> tl_result {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(tl_result::TL_INTERNAL)
}

/// Runs `f`, returning `on_panic` if it panics (exports that return a value or nothing).
pub(crate) fn ffi_boundary_or<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// Runs `f` catching panics, as a `Result` (used inside handle-aware boundaries).
pub(crate) fn catch<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(Failure::panic()))
}

/// A NUL-terminated UTF-8 argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string valid for the duration of the call.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|err| {
        Failure::new(
            tl_result::TL_INVALID_UTF8,
            format!(
                "argument `{name}` is not valid UTF-8 (byte {})",
                err.valid_up_to()
            ),
        )
    })
}

/// A UTF-8 argument given as pointer and length (no terminator needed).
///
/// # Safety
/// `ptr` is NULL or valid for reading `len` bytes for the duration of the call.
pub(crate) unsafe fn utf8_arg<'a>(
    ptr: *const c_char,
    len: usize,
    name: &str,
) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL and readable for `len` bytes per this function's contract.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    std::str::from_utf8(bytes).map_err(|err| {
        Failure::new(
            tl_result::TL_INVALID_UTF8,
            format!(
                "argument `{name}` is not valid UTF-8 (byte {})",
                err.valid_up_to()
            ),
        )
    })
}

/// Copies `bytes` and a NUL terminator into the caller's buffer.
///
/// `*written` receives `bytes.len()` on success, or the needed buffer size (terminator
/// included) with `TL_BUFFER_TOO_SMALL`; in that case nothing but an empty string is
/// written, so a secret is never half-copied. `buf` may be NULL only when `len` is 0 (a
/// size query).
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes; `written` is NULL or writable.
#[inline]
pub(crate) unsafe fn copy_out(
    bytes: &[u8],
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> Result<(), Failure> {
    if written.is_null() {
        return Err(Failure::null("written"));
    }
    if buf.is_null() && len > 0 {
        return Err(Failure::null("buf"));
    }
    let needed = bytes.len() + 1;
    if len < needed {
        // SAFETY: `written` is non-NULL and writable per the contract.
        unsafe { written.write(needed) };
        if len > 0 {
            // SAFETY: `buf` is non-NULL (checked above) and writable for `len >= 1` bytes.
            unsafe { buf.write(0) };
        }
        return Err(Failure::new(
            tl_result::TL_BUFFER_TOO_SMALL,
            format!("buffer of {len} bytes is too small: {needed} bytes needed"),
        ));
    }
    // SAFETY: `buf` is writable for `len >= needed` bytes and cannot overlap `bytes`, which
    // the library owns; the terminator goes to index `bytes.len() < len`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        buf.add(bytes.len()).write(0);
        written.write(bytes.len());
    }
    Ok(())
}

/// Writes `value` through an out-pointer that was checked for NULL, or ignores a NULL
/// optional out-pointer.
///
/// # Safety
/// `ptr` is NULL or valid for writing a `T`.
#[inline]
pub(crate) unsafe fn write_opt<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: non-NULL and writable per the contract.
        unsafe { ptr.write(value) };
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

thread_local! {
    /// How many tokenlease C callbacks are running on this thread (nested calls count).
    static CALLBACK_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as running a C callback while it lives.
pub(crate) struct CallbackScope(());

impl CallbackScope {
    pub(crate) fn enter() -> Self {
        CALLBACK_DEPTH.with(|depth| depth.set(depth.get() + 1));
        Self(())
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        CALLBACK_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// Refuses calls that would wait for the callback they are made from (`tl_manager_free`,
/// `tl_manager_set_event_callback`) with `TL_USAGE` instead of deadlocking.
pub(crate) fn refuse_inside_callback(function: &str) -> Result<(), Failure> {
    if CALLBACK_DEPTH.with(std::cell::Cell::get) > 0 {
        return Err(Failure::new(
            tl_result::TL_USAGE,
            format!(
                "{function} was called from inside a tokenlease callback, where it would wait \
                 for itself; call it from another thread"
            ),
        ));
    }
    Ok(())
}

/// Checks a token value or refresh token a C callback reports, as core checks every source.
pub(crate) fn token_text(value: &str, name: &str) -> Result<(), Failure> {
    tl_core::check_token_text(value).map_err(|problem| {
        Failure::new(
            tl_result::TL_INVALID_ARGUMENT,
            format!("the {name} {problem}"),
        )
    })
}

/// A C `void* userdata`, passed back to the callbacks it came with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserData(pub(crate) *mut c_void);

// SAFETY: the library never dereferences userdata; it only hands it back to the C callbacks
// registered with it. Those callbacks are documented to run on tokenlease's background
// threads, so the C caller guarantees that userdata may be used from any thread.
unsafe impl Send for UserData {}
// SAFETY: as above; sharing the pointer value between threads is what the C contract allows.
unsafe impl Sync for UserData {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_internal() {
        let result = ffi_boundary(|| panic!("boom"));
        assert_eq!(result, tl_result::TL_INTERNAL);
        assert_eq!(ffi_boundary_or(7, || panic!("boom")), 7);
        assert_eq!(
            catch::<()>(|| panic!("boom")).unwrap_err().code,
            tl_result::TL_INTERNAL
        );
    }

    #[test]
    fn copy_out_reports_needed_size() {
        let mut buf = [1 as c_char; 4];
        let mut written = 0usize;
        // SAFETY: buffer and counter are valid locals.
        let err = unsafe { copy_out(b"abcd", buf.as_mut_ptr(), 4, &mut written) }.unwrap_err();
        assert_eq!(err.code, tl_result::TL_BUFFER_TOO_SMALL);
        assert_eq!(written, 5);
        assert_eq!(buf[0], 0);
        // SAFETY: as above.
        unsafe { copy_out(b"abc", buf.as_mut_ptr(), 4, &mut written) }.unwrap();
        assert_eq!(written, 3);
        assert_eq!(buf[3], 0);
        // SAFETY: a size query with a NULL buffer and length 0.
        let err = unsafe { copy_out(b"abc", std::ptr::null_mut(), 0, &mut written) }.unwrap_err();
        assert_eq!(err.code, tl_result::TL_BUFFER_TOO_SMALL);
        assert_eq!(written, 4);
    }
}
