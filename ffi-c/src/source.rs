//! A token source implemented in C: function pointers + userdata.

use std::ffi::{c_char, c_void};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{RwLock, RwLockReadGuard};
use tl_core::{
    BlockingSource, Error, ErrorKind, FetchedToken, Lifetime, Result, SecretString, Token,
};
use zeroize::Zeroizing;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::boundary::{
    ffi_boundary, ffi_boundary_or, str_arg, token_text, utf8_arg, CallbackScope, Failure, UserData,
};
use crate::result::tl_result;

/// A token source written in C.
///
/// Every callback returns a `tl_result` number: `TL_OK` (0) on success, or the error kind of
/// the failure (1..15), which tokenlease keeps: `TL_TRANSIENT`, `TL_RATE_LIMITED` and
/// `TL_TIMEOUT` are retried with backoff while the cached token stays in use, the others
/// (e.g. `TL_INVALID_CREDENTIALS`) reach callers at once. Any other number becomes
/// `TL_INTERNAL`.
///
/// Threads: callbacks run on tokenlease's background blocking threads, never on the caller's
/// thread. `fetch`, `refresh` and `revoke` of one manager never overlap, also when the
/// manager stopped waiting for a call that exceeded the policy's `source_timeout_ms`: the
/// next call starts only once that one returned (its late token is still used). `userdata`
/// must be safe to use from any thread. A callback must not call a blocking `tl_manager_*`
/// function of its own manager, `tl_manager_free` or `tl_manager_set_event_callback`: those
/// return `TL_USAGE` there. After `tl_manager_free` returns `TL_OK`, no callback is called
/// again, so userdata may be released then (see `tl_manager_free` for a callback that hangs).
///
/// The struct is copied by `tl_manager_new_custom`; it need not outlive that call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_source_callbacks {
    /// Passed unchanged to every callback. May be NULL.
    pub userdata: *mut c_void,
    /// Required. Obtains a new token with the primary grant and reports it through the
    /// `tl_fetch_output_set_*` functions on `out` (valid only during the call).
    pub fetch:
        Option<unsafe extern "C" fn(userdata: *mut c_void, out: *mut tl_fetch_output) -> u32>,
    /// Optional (NULL: `fetch` is used). Obtains a new token with `refresh_token`
    /// (`refresh_token_len` bytes, NUL-terminated, valid only during the call). Returning
    /// `TL_INVALID_GRANT` makes tokenlease fall back to `fetch`.
    pub refresh: Option<
        unsafe extern "C" fn(
            userdata: *mut c_void,
            refresh_token: *const c_char,
            refresh_token_len: usize,
            out: *mut tl_fetch_output,
        ) -> u32,
    >,
    /// Optional (NULL: revocation does nothing at the source). Revokes `token`
    /// (`token_len` bytes, NUL-terminated, valid only during the call).
    pub revoke: Option<
        unsafe extern "C" fn(userdata: *mut c_void, token: *const c_char, token_len: usize) -> u32,
    >,
}

/// A token result, filled through `tl_fetch_output_set_*`. Opaque.
///
/// Two uses: what a C `fetch`/`refresh` callback reports (then owned by tokenlease and valid
/// only during the callback), and the result of a login the application did itself (e.g.
/// with a platform SDK) for `tl_manager_login` / `tl_manager_seed` (then created with
/// `tl_fetch_output_new` and owned by the caller until `tl_fetch_output_free`).
#[derive(Default)]
pub struct tl_fetch_output {
    value: Option<SecretString>,
    expires_in_ms: u64,
    token_type: Option<String>,
    refresh_token: Option<SecretString>,
    message: Option<String>,
}

impl fmt::Debug for tl_fetch_output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("tl_fetch_output")
            .field("has_value", &self.value.is_some())
            .field("expires_in_ms", &self.expires_in_ms)
            .finish()
    }
}

impl tl_fetch_output {
    /// Turns a callback's return code and output into the source's result.
    fn finish(self, code: u32, callback: &str) -> Result<FetchedToken> {
        match tl_result::from_code(code) {
            Some(tl_result::TL_OK) => self.to_fetched().ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("the C {callback} callback returned TL_OK without calling tl_fetch_output_set_token"),
                )
            }),
            other => Err(callback_error(code, other, callback, self.message)),
        }
    }

    /// The token reported so far (`None` before `tl_fetch_output_set_token`).
    pub(crate) fn to_fetched(&self) -> Option<FetchedToken> {
        let value = self.value.clone()?;
        let lifetime = if self.expires_in_ms == 0 {
            Lifetime::Unknown
        } else {
            Lifetime::ExpiresIn(Duration::from_millis(self.expires_in_ms))
        };
        let mut fetched = FetchedToken::bearer(value, Duration::ZERO).with_lifetime(lifetime);
        fetched.token_type = self.token_type.clone().unwrap_or_default();
        fetched.refresh_token = self.refresh_token.clone();
        Some(fetched)
    }
}

/// The error a failing callback stands for: its kind is kept.
pub(crate) fn callback_error(
    code: u32,
    result: Option<tl_result>,
    callback: &str,
    message: Option<String>,
) -> Error {
    match result.and_then(tl_result::kind) {
        Some(kind) => Error::new(
            kind,
            message.unwrap_or_else(|| format!("the C {callback} callback failed ({kind})")),
        ),
        None => Error::new(
            ErrorKind::Internal,
            format!(
                "the C {callback} callback returned {code}, which is not an error kind (1..15)"
            ),
        ),
    }
}

/// Closes the way to a manager's C callbacks when the manager is freed: calls hold a read
/// guard, `shut` closes the gate (no callback starts afterwards) and then waits, for a
/// bounded time, for the running ones to return.
#[derive(Debug)]
pub(crate) struct Gate {
    open: AtomicBool,
    running: RwLock<()>,
}

/// A running C callback: holds the gate open and marks the thread as inside a callback.
pub(crate) struct Entered<'a> {
    _running: RwLockReadGuard<'a, ()>,
    _scope: CallbackScope,
}

impl Gate {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicBool::new(true),
            running: RwLock::new(()),
        })
    }

    pub(crate) fn enter(&self) -> Result<Entered<'_>> {
        // Recursive: a callback that triggers another on its own thread must not deadlock
        // behind a waiting `shut`.
        let running = self.running.read_recursive();
        if self.open.load(Ordering::SeqCst) {
            Ok(Entered {
                _running: running,
                _scope: CallbackScope::enter(),
            })
        } else {
            Err(Error::new(
                ErrorKind::Closed,
                "the token manager was freed; its C callbacks are no longer called",
            ))
        }
    }

    /// Closes the gate and waits at most `wait` for running callbacks to return; `false`
    /// when one was still running then.
    pub(crate) fn shut(&self, wait: Duration) -> bool {
        self.open.store(false, Ordering::SeqCst);
        self.running.try_write_for(wait).is_some()
    }
}

type FetchFn = unsafe extern "C" fn(*mut c_void, *mut tl_fetch_output) -> u32;
type RefreshFn =
    unsafe extern "C" fn(*mut c_void, *const c_char, usize, *mut tl_fetch_output) -> u32;
type RevokeFn = unsafe extern "C" fn(*mut c_void, *const c_char, usize) -> u32;

/// The C callbacks as a core `BlockingSource` (run on the blocking pool by the adapter).
pub(crate) struct CSource {
    userdata: UserData,
    fetch: FetchFn,
    refresh: Option<RefreshFn>,
    revoke: Option<RevokeFn>,
    gate: Arc<Gate>,
}

impl fmt::Debug for CSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CSource")
            .field("refresh", &self.refresh.is_some())
            .field("revoke", &self.revoke.is_some())
            .finish()
    }
}

impl CSource {
    pub(crate) fn new(callbacks: &tl_source_callbacks, gate: Arc<Gate>) -> Option<Self> {
        Some(Self {
            userdata: UserData(callbacks.userdata),
            fetch: callbacks.fetch?,
            refresh: callbacks.refresh,
            revoke: callbacks.revoke,
            gate,
        })
    }
}

/// A secret as a NUL-terminated buffer that is wiped when dropped.
fn c_secret(secret: &SecretString) -> Zeroizing<Vec<u8>> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(secret.len() + 1));
    bytes.extend_from_slice(secret.expose().as_bytes());
    bytes.push(0);
    bytes
}

impl BlockingSource for CSource {
    fn fetch(&self) -> Result<FetchedToken> {
        let _open = self.gate.enter()?;
        let mut out = tl_fetch_output::default();
        // SAFETY: `fetch` and `userdata` were registered together through
        // tl_manager_new_custom, whose contract makes them callable from any thread until
        // tl_manager_free, which the gate guard held here prevents from completing. `out`
        // is a valid, exclusively borrowed tl_fetch_output for the duration of the call.
        let code = unsafe { (self.fetch)(self.userdata.0, &mut out) };
        out.finish(code, "fetch")
    }

    fn refresh(&self, refresh_token: &SecretString) -> Result<FetchedToken> {
        let Some(refresh) = self.refresh else {
            return self.fetch();
        };
        let _open = self.gate.enter()?;
        let mut out = tl_fetch_output::default();
        let secret = c_secret(refresh_token);
        // SAFETY: as in `fetch`; `secret` is a NUL-terminated buffer of `len + 1` bytes that
        // outlives the call.
        let code = unsafe {
            refresh(
                self.userdata.0,
                secret.as_ptr().cast(),
                refresh_token.len(),
                &mut out,
            )
        };
        out.finish(code, "refresh")
    }

    fn revoke(&self, token: &Token) -> Result<()> {
        let Some(revoke) = self.revoke else {
            return Ok(());
        };
        let _open = self.gate.enter()?;
        let secret = c_secret(token.value());
        // SAFETY: as in `fetch`; `secret` outlives the call.
        let code = unsafe { revoke(self.userdata.0, secret.as_ptr().cast(), token.value().len()) };
        match tl_result::from_code(code) {
            Some(tl_result::TL_OK) => Ok(()),
            other => Err(callback_error(code, other, "revoke", None)),
        }
    }
}

/// Runs a setter on a callback's output object.
fn with_output(
    out: *mut tl_fetch_output,
    f: impl FnOnce(&mut tl_fetch_output) -> std::result::Result<(), Failure>,
) -> tl_result {
    ffi_boundary(|| {
        // SAFETY: NULL, the tl_fetch_output passed to the running callback, or a live one from
        // tl_fetch_output_new, per the setters' contract; the caller has exclusive use of it.
        let Some(out) = (unsafe { out.as_mut() }) else {
            return tl_result::TL_NULL_ARGUMENT;
        };
        match f(out) {
            Ok(()) => tl_result::TL_OK,
            Err(failure) => failure.code,
        }
    })
}

/// Reports the fetched token: `value` (`len` bytes of UTF-8, copied) valid for
/// `expires_in_ms` milliseconds from the moment the request was sent (0: unknown, the
/// policy's default lifetime applies; the same meaning as `expiresInMs` 0 in Kotlin and
/// Swift). Call it before returning `TL_OK`.
///
/// Returns `TL_NULL_ARGUMENT`, `TL_INVALID_UTF8`, or `TL_INVALID_ARGUMENT` for an empty
/// value, one with a control character (an interior NUL, CR, LF, ...), one over 64 KiB, or
/// a lifetime over ten years (e.g. a negative number cast to `uint64_t`). Ownership: the
/// bytes are copied; the caller keeps its buffer. Thread-safety: only from inside the
/// callback that received `out` (an output from `tl_fetch_output_new`: from one thread at a
/// time).
///
/// # Safety
/// `out` must be NULL, the output passed to the running callback or a live output from
/// `tl_fetch_output_new`; `value` NULL or readable for
/// `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn tl_fetch_output_set_token(
    out: *mut tl_fetch_output,
    value: *const c_char,
    len: usize,
    expires_in_ms: u64,
) -> tl_result {
    with_output(out, |out| {
        // SAFETY: `value` is NULL or readable for `len` bytes per the contract.
        let value = unsafe { utf8_arg(value, len, "value") }?;
        token_text(value, "token value")?;
        if Duration::from_millis(expires_in_ms) > tl_core::policy::MAX_TOKEN_LIFETIME {
            return Err(Failure::new(
                tl_result::TL_INVALID_ARGUMENT,
                format!(
                    "expires_in_ms {expires_in_ms} is beyond the ten-year bound (a negative \
                     number cast to uint64_t?)"
                ),
            ));
        }
        out.value = Some(SecretString::new(value));
        out.expires_in_ms = expires_in_ms;
        Ok(())
    })
}

/// Reports the token type (NUL-terminated UTF-8, copied). Optional; default `"Bearer"`.
///
/// Thread-safety: only from inside the callback that received `out` (an output from
/// `tl_fetch_output_new`: from one thread at a time).
///
/// # Safety
/// `out` must be NULL, the output passed to the running callback or a live output from
/// `tl_fetch_output_new`; `token_type` NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tl_fetch_output_set_token_type(
    out: *mut tl_fetch_output,
    token_type: *const c_char,
) -> tl_result {
    with_output(out, |out| {
        // SAFETY: NULL or NUL-terminated per the contract.
        let token_type = unsafe { str_arg(token_type, "token_type") }?;
        out.token_type = Some(token_type.to_owned());
        Ok(())
    })
}

/// Reports a refresh token (`len` bytes of UTF-8, copied). Optional; tokenlease passes it
/// to the `refresh` callback for the next refresh.
///
/// Thread-safety: only from inside the callback that received `out` (an output from
/// `tl_fetch_output_new`: from one thread at a time).
///
/// # Safety
/// `out` must be NULL, the output passed to the running callback or a live output from
/// `tl_fetch_output_new`; `value` NULL or readable for
/// `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn tl_fetch_output_set_refresh_token(
    out: *mut tl_fetch_output,
    value: *const c_char,
    len: usize,
) -> tl_result {
    with_output(out, |out| {
        // SAFETY: NULL or readable for `len` bytes per the contract.
        let value = unsafe { utf8_arg(value, len, "value") }?;
        token_text(value, "refresh token")?;
        out.refresh_token = Some(SecretString::new(value));
        Ok(())
    })
}

/// Sets the error message used when the callback returns an error code (NUL-terminated
/// UTF-8, copied). Optional. It reaches `tl_manager_last_error` and events: never put a
/// secret in it.
///
/// Thread-safety: only from inside the callback that received `out` (an output from
/// `tl_fetch_output_new`: from one thread at a time).
///
/// # Safety
/// `out` must be NULL, the output passed to the running callback or a live output from
/// `tl_fetch_output_new`; `message` NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tl_fetch_output_set_error_message(
    out: *mut tl_fetch_output,
    message: *const c_char,
) -> tl_result {
    with_output(out, |out| {
        // SAFETY: NULL or NUL-terminated per the contract.
        let message = unsafe { str_arg(message, "message") }?;
        out.message = Some(tl_core::redact_foreign_text(message));
        Ok(())
    })
}

/// Creates an empty `tl_fetch_output` for a login result the application obtained itself
/// (e.g. through a platform SDK such as AppAuth), to hand to `tl_manager_login` or
/// `tl_manager_seed`: fill it with `tl_fetch_output_set_token` (required; `expires_in_ms`
/// counts from the `tl_manager_login` call), `tl_fetch_output_set_refresh_token` and
/// `tl_fetch_output_set_token_type`.
///
/// On success `*out` receives the handle; `TL_NULL_ARGUMENT` when `out` is NULL.
/// Ownership: the caller owns the handle and releases it with `tl_fetch_output_free` (which
/// wipes the secrets it holds). Thread-safety: callable from any thread; one handle is used
/// by one thread at a time.
///
/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_fetch_output_new(out: *mut *mut tl_fetch_output) -> tl_result {
    ffi_boundary(|| {
        if out.is_null() {
            return tl_result::TL_NULL_ARGUMENT;
        }
        let handle = Box::into_raw(Box::default());
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(handle) };
        tl_result::TL_OK
    })
}

/// Frees a `tl_fetch_output` from `tl_fetch_output_new` and wipes the token values it holds
/// (they are secret values, zeroized on drop). NULL is a no-op. Never call it on the output a
/// callback received (tokenlease owns that one).
///
/// Ownership: takes ownership of `out`. Thread-safety: must not race with other calls on
/// `out`.
///
/// # Safety
/// `out` must be NULL or a handle from `tl_fetch_output_new` not freed before.
#[no_mangle]
pub unsafe extern "C" fn tl_fetch_output_free(out: *mut tl_fetch_output) {
    ffi_boundary_or((), || {
        if !out.is_null() {
            // SAFETY: `out` came from Box::into_raw in tl_fetch_output_new and ownership
            // returns here exactly once per the contract.
            drop(unsafe { Box::from_raw(out) });
        }
    });
}
