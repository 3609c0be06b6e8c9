//! Interactive user logins (a manager with the `user_login` grant): the authorization code
//! with PKCE (`tl_login_request`), the device flow (`tl_device_login`), and login results the
//! application obtained itself (`tl_manager_login`, `tl_manager_seed`).
//!
//! The protocol and the install of the tokens are core's (`Manager::begin_login`,
//! `complete_login`, `start_device_login`, `complete_device_login`, `login`, `seed`); these
//! exports convert arguments and results.

use std::ffi::{c_char, CString};
use std::time::{Duration, UNIX_EPOCH};

use tl_core::source::authorization::AuthorizationRequest;
use tl_core::source::device::DeviceAuthorization;
use tl_core::TokenRef;
use zeroize::Zeroizing;

use crate::boundary::{ffi_boundary_or, str_arg, write_opt, Failure};
use crate::manager::{manager_call, tl_manager};
use crate::result::tl_result;
use crate::source::tl_fetch_output;
use crate::token::tl_token;

/// An interactive login in progress with the authorization code grant and PKCE (RFC 7636),
/// from `tl_manager_begin_login`. Opaque; holds the secret `state` and PKCE verifier that
/// `tl_manager_complete_login` checks the redirect with (wiped by `tl_login_request_free`).
///
/// Immutable: its accessors and `tl_manager_complete_login` may use it from several threads
/// at once; `tl_login_request_free` must not race with them. It does not refer to its
/// manager: freeing the manager first is allowed.
pub struct tl_login_request {
    request: AuthorizationRequest,
    /// The URL (it carries the `state`) followed by a NUL terminator.
    url: Zeroizing<Vec<u8>>,
    redirect_uri: CString,
}

impl std::fmt::Debug for tl_login_request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The request's own Debug redacts the state and the PKCE verifier.
        f.debug_struct("tl_login_request")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// A device login in progress (RFC 8628), from `tl_manager_start_device_login`: what to show
/// the user, and the secret device code. Opaque.
///
/// Its accessors, `tl_device_login_cancel` and `tl_manager_complete_device_login` may be
/// called from any threads at once; `tl_device_login_free` must not race with them (cancel,
/// wait for `tl_manager_complete_device_login` to return, then free).
pub struct tl_device_login {
    device: DeviceAuthorization,
    user_code: CString,
    verification_uri: CString,
    verification_uri_complete: Option<CString>,
}

impl std::fmt::Debug for tl_device_login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The device authorization's own Debug redacts the device code.
        f.debug_struct("tl_device_login")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// A text core checked (no control characters) as a C string.
fn c_string(text: &str) -> CString {
    CString::new(text).unwrap_or_default()
}

/// Clears an optional `tl_token**` out-parameter before the call can fail.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn clear_token_out(out: *mut *mut tl_token) {
    // SAFETY: NULL or writable per the contract.
    unsafe { write_opt(out, std::ptr::null_mut()) };
}

/// Hands the installed token to the caller as a `tl_token` when it asked for one.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn give_token(out: *mut *mut tl_token, token: TokenRef) {
    if !out.is_null() {
        let handle = Box::into_raw(Box::new(tl_token::new(token.into_arc())));
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(handle) };
    }
}

/// Starts an interactive login with the authorization code grant and PKCE: `*out` receives a
/// request whose URL (`tl_login_request_url`) the application opens in the user's browser.
/// When the browser comes back to `redirect_uri` (with `code` and `state` in its query), hand
/// that whole URL to `tl_manager_complete_login`.
///
/// `redirect_uri` (NUL-terminated UTF-8) must be registered for the client; desktop apps and
/// CLIs use a loopback one (`http://127.0.0.1:PORT/callback`, RFC 8252). The manager's source
/// must be an `oauth2` source (e.g. with `"grant": {"type": "user_login"}`), else
/// `TL_CONFIGURATION`; a `redirect_uri` that is not an absolute URL is `TL_USAGE`. Blocks for
/// the discovery request when the issuer's metadata is not cached yet.
///
/// On failure `*out` is NULL and the detail is in `tl_manager_last_error`. Ownership: the
/// caller owns the request and releases it with `tl_login_request_free`. Thread-safety:
/// callable from any thread; not from inside a tokenlease callback (`TL_USAGE`).
///
/// # Safety
/// `mgr` must be NULL or a live manager; `redirect_uri` NULL or NUL-terminated; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_begin_login(
    mgr: *const tl_manager,
    redirect_uri: *const c_char,
    out: *mut *mut tl_login_request,
) -> tl_result {
    manager_call(mgr, |mgr| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or NUL-terminated per the contract.
        let redirect_uri = unsafe { str_arg(redirect_uri, "redirect_uri") }?;
        let request = mgr.manager.begin_login_blocking(redirect_uri)?;
        let mut url = Zeroizing::new(Vec::with_capacity(request.url().len() + 1));
        url.extend_from_slice(request.url().as_bytes());
        url.push(0);
        let handle = Box::new(tl_login_request {
            redirect_uri: c_string(request.redirect_uri()),
            url,
            request,
        });
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// The URL to open in the user's browser (NUL-terminated), or NULL when `req` is NULL. It
/// carries the request's `state`: do not log it.
///
/// Ownership: borrowed from `req`; valid until `tl_login_request_free(req)`. Thread-safety:
/// callable from any thread.
///
/// # Safety
/// `req` must be NULL or a live `tl_login_request`.
#[no_mangle]
pub unsafe extern "C" fn tl_login_request_url(req: *const tl_login_request) -> *const c_char {
    ffi_boundary_or(std::ptr::null(), || {
        // SAFETY: NULL or a live tl_login_request per the contract.
        unsafe { req.as_ref() }.map_or(std::ptr::null(), |req| req.url.as_ptr().cast())
    })
}

/// The redirect URI the request names (NUL-terminated, normalised as a URL, e.g.
/// `http://127.0.0.1:49152/callback`), or NULL when `req` is NULL: where to listen for the
/// browser's return.
///
/// Ownership: borrowed from `req`; valid until `tl_login_request_free(req)`. Thread-safety:
/// callable from any thread.
///
/// # Safety
/// `req` must be NULL or a live `tl_login_request`.
#[no_mangle]
pub unsafe extern "C" fn tl_login_request_redirect_uri(
    req: *const tl_login_request,
) -> *const c_char {
    ffi_boundary_or(std::ptr::null(), || {
        // SAFETY: NULL or a live tl_login_request per the contract.
        unsafe { req.as_ref() }.map_or(std::ptr::null(), |req| req.redirect_uri.as_ptr())
    })
}

/// Frees a login request and wipes its secrets. NULL is a no-op.
///
/// Ownership: takes ownership of `req`; pointers from its accessors dangle afterwards.
/// Thread-safety: must not race with other calls on `req`.
///
/// # Safety
/// `req` must be NULL or a request from `tl_manager_begin_login` not freed before.
#[no_mangle]
pub unsafe extern "C" fn tl_login_request_free(req: *mut tl_login_request) {
    ffi_boundary_or((), || {
        if !req.is_null() {
            // SAFETY: `req` came from Box::into_raw in tl_manager_begin_login and ownership
            // returns here exactly once per the contract.
            drop(unsafe { Box::from_raw(req) });
        }
    });
}

/// Finishes an interactive login: checks `redirect_url` (the whole URL the browser was sent
/// back to, NUL-terminated UTF-8: its `state` must be the request's, an `error` answer is
/// reported), redeems the code with the PKCE verifier, stores the tokens (with their refresh
/// token) and serves them from now on; a refresh of an earlier session still in flight is
/// overtaken. Blocks for the token request.
///
/// Results: `TL_OK`; `TL_CANCELLED` when the user denied the login (`access_denied`);
/// `TL_PROTOCOL` for a redirect with another `state`, none, or to another place than the
/// request's redirect URI (forged or foreign); `TL_INVALID_GRANT` when the server refuses the
/// code (e.g. used twice); `TL_NULL_ARGUMENT` / `TL_INVALID_UTF8` for bad arguments. The
/// detail is in `tl_manager_last_error` (never a token value).
///
/// `out` may be NULL; otherwise `*out` receives the new token as a `tl_token` (NULL on
/// failure), which the caller releases with `tl_token_free`. Ownership: `req` and
/// `redirect_url` are only read. Thread-safety: callable from any thread; not from inside a
/// tokenlease callback (`TL_USAGE`).
///
/// # Safety
/// `mgr` must be NULL or a live manager; `req` NULL or a live `tl_login_request`;
/// `redirect_url` NULL or NUL-terminated; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_complete_login(
    mgr: *const tl_manager,
    req: *const tl_login_request,
    redirect_url: *const c_char,
    out: *mut *mut tl_token,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or writable per the contract.
        unsafe { clear_token_out(out) };
        // SAFETY: NULL or a live tl_login_request per the contract.
        let Some(req) = (unsafe { req.as_ref() }) else {
            return Err(Failure::null("req"));
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let redirect_url = unsafe { str_arg(redirect_url, "redirect_url") }?;
        let token = mgr
            .manager
            .complete_login_blocking(&req.request, redirect_url)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { give_token(out, token) };
        Ok(())
    })
}

/// Starts a device login (RFC 8628, for CLIs and devices without a browser): `*out` receives
/// what to show the user (`tl_device_login_user_code`, `tl_device_login_verification_uri`,
/// and for a QR code `tl_device_login_verification_uri_complete`); then call
/// `tl_manager_complete_device_login`, which waits for the user. Blocks for the device
/// authorization request.
///
/// The manager's source must be an `oauth2` source whose server has a device authorization
/// endpoint (discovered, or `device_authorization_url`), else `TL_CONFIGURATION`. On failure
/// `*out` is NULL and the detail is in `tl_manager_last_error`. Ownership: the caller owns the
/// handle and releases it with `tl_device_login_free`. Thread-safety: callable from any
/// thread; not from inside a tokenlease callback (`TL_USAGE`).
///
/// # Safety
/// `mgr` must be NULL or a live manager; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_start_device_login(
    mgr: *const tl_manager,
    out: *mut *mut tl_device_login,
) -> tl_result {
    manager_call(mgr, |mgr| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let device = mgr.manager.start_device_login_blocking()?;
        let handle = Box::new(tl_device_login {
            user_code: c_string(device.user_code()),
            verification_uri: c_string(device.verification_uri()),
            verification_uri_complete: device.verification_uri_complete().map(c_string),
            device,
        });
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Runs `f` on a live device login, or returns `on_null` (and on a panic).
fn with_device<T: Copy>(
    dev: *const tl_device_login,
    on_null: T,
    f: impl FnOnce(&tl_device_login) -> T,
) -> T {
    ffi_boundary_or(on_null, || {
        // SAFETY: every caller is an export whose contract requires `dev` to be NULL or a
        // live tl_device_login, and passes it unchanged.
        unsafe { dev.as_ref() }.map_or(on_null, f)
    })
}

/// The code the user enters at the verification URI (NUL-terminated), or NULL when `dev` is
/// NULL.
///
/// Ownership: borrowed from `dev`; valid until `tl_device_login_free(dev)`. Thread-safety:
/// callable from any thread.
///
/// # Safety
/// `dev` must be NULL or a live `tl_device_login`.
#[no_mangle]
pub unsafe extern "C" fn tl_device_login_user_code(dev: *const tl_device_login) -> *const c_char {
    with_device(dev, std::ptr::null(), |dev| dev.user_code.as_ptr())
}

/// Where the user goes to approve, on a phone or computer (an http(s) URL, NUL-terminated),
/// or NULL when `dev` is NULL.
///
/// Ownership: borrowed from `dev`; valid until `tl_device_login_free(dev)`. Thread-safety:
/// callable from any thread.
///
/// # Safety
/// `dev` must be NULL or a live `tl_device_login`.
#[no_mangle]
pub unsafe extern "C" fn tl_device_login_verification_uri(
    dev: *const tl_device_login,
) -> *const c_char {
    with_device(dev, std::ptr::null(), |dev| dev.verification_uri.as_ptr())
}

/// The verification URI with the user code in it (for a QR code), NUL-terminated; NULL when
/// the server gave none or `dev` is NULL.
///
/// Ownership: borrowed from `dev`; valid until `tl_device_login_free(dev)`. Thread-safety:
/// callable from any thread.
///
/// # Safety
/// `dev` must be NULL or a live `tl_device_login`.
#[no_mangle]
pub unsafe extern "C" fn tl_device_login_verification_uri_complete(
    dev: *const tl_device_login,
) -> *const c_char {
    with_device(dev, std::ptr::null(), |dev| {
        dev.verification_uri_complete
            .as_ref()
            .map_or(std::ptr::null(), |uri| uri.as_ptr())
    })
}

/// How long the user has to approve, in milliseconds from `tl_manager_start_device_login`
/// (bounded by 30 minutes); 0 when `dev` is NULL.
///
/// Thread-safety: callable from any thread.
///
/// # Safety
/// `dev` must be NULL or a live `tl_device_login`.
#[no_mangle]
pub unsafe extern "C" fn tl_device_login_expires_in_ms(dev: *const tl_device_login) -> u64 {
    with_device(dev, 0, |dev| duration_ms(dev.device.expires_in()))
}

/// The polling interval the server asked for, in milliseconds (5000 when it named none;
/// `tl_manager_complete_device_login` follows it and slows down when told to); 0 when `dev`
/// is NULL.
///
/// Thread-safety: callable from any thread.
///
/// # Safety
/// `dev` must be NULL or a live `tl_device_login`.
#[no_mangle]
pub unsafe extern "C" fn tl_device_login_interval_ms(dev: *const tl_device_login) -> u64 {
    with_device(dev, 0, |dev| duration_ms(dev.device.interval()))
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Cancels the device login: a `tl_manager_complete_device_login` waiting on `dev` (on any
/// thread) returns `TL_CANCELLED` promptly, and so does one started later. Idempotent. Returns
/// `TL_NULL_ARGUMENT` when `dev` is NULL.
///
/// Thread-safety: callable from any thread, also while another thread waits in
/// `tl_manager_complete_device_login` (not concurrently with `tl_device_login_free`). Never
/// blocks.
///
/// # Safety
/// `dev` must be NULL or a live `tl_device_login`.
#[no_mangle]
pub unsafe extern "C" fn tl_device_login_cancel(dev: *const tl_device_login) -> tl_result {
    with_device(dev, tl_result::TL_NULL_ARGUMENT, |dev| {
        dev.device.cancel();
        tl_result::TL_OK
    })
}

/// Frees a device login and wipes its device code. NULL is a no-op.
///
/// Ownership: takes ownership of `dev`; pointers from its accessors dangle afterwards.
/// Thread-safety: must not race with other calls on `dev` (cancel it and wait for a
/// `tl_manager_complete_device_login` on it to return first).
///
/// # Safety
/// `dev` must be NULL or a handle from `tl_manager_start_device_login` not freed before.
#[no_mangle]
pub unsafe extern "C" fn tl_device_login_free(dev: *mut tl_device_login) {
    ffi_boundary_or((), || {
        if !dev.is_null() {
            // SAFETY: `dev` came from Box::into_raw in tl_manager_start_device_login and
            // ownership returns here exactly once per the contract.
            drop(unsafe { Box::from_raw(dev) });
        }
    });
}

/// Waits until the user approved the device login, polling the token endpoint as the server
/// asks (its interval; 5 s longer after each `slow_down`), then stores the tokens and serves
/// them from now on, as `tl_manager_complete_login` does. Blocks the calling thread, at most
/// until the device code expires.
///
/// Results: `TL_OK`; `TL_CANCELLED` when the user denied it or `tl_device_login_cancel` was
/// called (from any thread); `TL_LOGIN_REQUIRED` when the code expired before the user
/// approved; `TL_NULL_ARGUMENT` for a NULL `mgr` or `dev`. The detail is in
/// `tl_manager_last_error`.
///
/// `out` may be NULL; otherwise `*out` receives the new token as a `tl_token` (NULL on
/// failure), which the caller releases with `tl_token_free`. Thread-safety: callable from any
/// thread; not from inside a tokenlease callback (`TL_USAGE`).
///
/// # Safety
/// `mgr` must be NULL or a live manager; `dev` NULL or a live `tl_device_login` (not freed
/// before this returns); `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_complete_device_login(
    mgr: *const tl_manager,
    dev: *const tl_device_login,
    out: *mut *mut tl_token,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or writable per the contract.
        unsafe { clear_token_out(out) };
        // SAFETY: NULL or a live tl_device_login per the contract.
        let Some(dev) = (unsafe { dev.as_ref() }) else {
            return Err(Failure::null("dev"));
        };
        let token = mgr.manager.complete_device_login_blocking(&dev.device)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { give_token(out, token) };
        Ok(())
    })
}

/// The login result in a `tl_fetch_output` the application filled.
///
/// # Safety
/// `login` is NULL or a live `tl_fetch_output`.
unsafe fn login_arg(login: *const tl_fetch_output) -> Result<tl_core::FetchedToken, Failure> {
    // SAFETY: NULL or a live tl_fetch_output per the contract.
    let Some(login) = (unsafe { login.as_ref() }) else {
        return Err(Failure::null("login"));
    };
    login.to_fetched().ok_or_else(|| {
        Failure::new(
            tl_result::TL_INVALID_ARGUMENT,
            "argument `login` has no token: call tl_fetch_output_set_token on it first",
        )
    })
}

/// Hands the manager the result of a new interactive login the application did itself (e.g.
/// through AppAuth or another platform SDK), filled into a `tl_fetch_output` from
/// `tl_fetch_output_new`: the token (and its refresh token, which the manager refreshes with
/// from then on) is stored and served, replacing whatever the manager held; a refresh of the
/// previous session still in flight is overtaken. Use `tl_manager_seed` instead for a result
/// kept from before (it never rolls back a newer one). Blocks for the store.
///
/// `login` must hold a token (`TL_INVALID_ARGUMENT` otherwise). `out` may be NULL; otherwise
/// `*out` receives the installed token as a `tl_token` (NULL on failure). Ownership: `login`
/// is only read (its values are copied); the caller still frees it. Thread-safety: callable
/// from any thread; not from inside a tokenlease callback (`TL_USAGE`).
///
/// # Safety
/// `mgr` must be NULL or a live manager; `login` NULL or a live `tl_fetch_output` not used by
/// another thread during the call; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_login(
    mgr: *const tl_manager,
    login: *const tl_fetch_output,
    out: *mut *mut tl_token,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or writable per the contract.
        unsafe { clear_token_out(out) };
        // SAFETY: NULL or a live tl_fetch_output per the contract.
        let login = unsafe { login_arg(login) }?;
        let token = mgr.manager.login_blocking(login)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { give_token(out, token) };
        Ok(())
    })
}

/// Hands the manager a login result the application kept from before (a platform SDK's
/// saved state, a token from an earlier run) without ever rolling back anything newer: when
/// memory or the store already hold a token obtained at or after `issued_at_unix_ms`
/// (milliseconds since the Unix epoch; 0 means unknown, and then any stored token counts as
/// newer), that token is served (refreshed with its own, possibly rotated, refresh token when
/// due) and `login` is ignored; otherwise `login` is installed as `tl_manager_login` does.
/// Blocks for the store (and a refresh, when the stored token needs one).
///
/// `login` must hold a token (`TL_INVALID_ARGUMENT` otherwise). `out` may be NULL; otherwise
/// `*out` receives the token served from now on (NULL on failure). Ownership and
/// thread-safety as for `tl_manager_login`.
///
/// # Safety
/// As for `tl_manager_login`.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_seed(
    mgr: *const tl_manager,
    login: *const tl_fetch_output,
    issued_at_unix_ms: u64,
    out: *mut *mut tl_token,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or writable per the contract.
        unsafe { clear_token_out(out) };
        // SAFETY: NULL or a live tl_fetch_output per the contract.
        let login = unsafe { login_arg(login) }?;
        let issued_at = (issued_at_unix_ms != 0)
            .then(|| UNIX_EPOCH.checked_add(Duration::from_millis(issued_at_unix_ms)))
            .map(|time| {
                time.ok_or_else(|| {
                    Failure::new(
                        tl_result::TL_INVALID_ARGUMENT,
                        format!("issued_at_unix_ms {issued_at_unix_ms} is out of range"),
                    )
                })
            })
            .transpose()?;
        let token = mgr.manager.seed_blocking(login, issued_at)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { give_token(out, token) };
        Ok(())
    })
}
