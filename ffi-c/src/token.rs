//! `tl_token`: a token handle with borrowed accessors.

use std::ffi::{c_char, CString};
use std::sync::Arc;

use tl_core::Token;
use zeroize::Zeroizing;

use crate::boundary::{ffi_boundary, ffi_boundary_or, str_arg, unix_ms, write_opt};
use crate::events::c_text;
use crate::result::tl_result;

/// A token obtained with `tl_manager_token_handle`. Opaque; owns a copy of the token value
/// (wiped from memory by `tl_token_free`).
///
/// A `tl_token` is independent of its manager: it stays valid after the manager refreshed,
/// invalidated, closed or was freed, until `tl_token_free`. It is immutable, so its accessors
/// may be called from several threads at once; `tl_token_free` must not race with them.
pub struct tl_token {
    token: Arc<Token>,
    /// The value followed by a NUL terminator.
    value: Zeroizing<Vec<u8>>,
    token_type: CString,
    /// The OpenID Connect ID token followed by a NUL terminator, when there is one.
    id_token: Option<Zeroizing<Vec<u8>>>,
    /// The token's attributes (`Token::attributes`), values as C strings, sorted by name.
    attributes: Vec<(String, CString)>,
}

impl std::fmt::Debug for tl_token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token's own Debug redacts the value.
        f.debug_struct("tl_token")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl tl_token {
    pub(crate) fn new(token: Arc<Token>) -> Self {
        let mut value = Zeroizing::new(Vec::with_capacity(token.value().len() + 1));
        value.extend_from_slice(token.value().expose().as_bytes());
        value.push(0);
        let token_type = c_text(token.token_type());
        let id_token = token.id_token().map(|id_token| {
            let mut bytes = Zeroizing::new(Vec::with_capacity(id_token.len() + 1));
            bytes.extend_from_slice(id_token.expose().as_bytes());
            bytes.push(0);
            bytes
        });
        let attributes = token
            .attributes()
            .iter()
            .map(|(name, value)| (name.clone(), c_text(value)))
            .collect();
        Self {
            token,
            value,
            token_type,
            id_token,
            attributes,
        }
    }

    /// The core token this handle holds.
    pub(crate) fn token(&self) -> &Token {
        &self.token
    }
}

/// The token value: `*ptr` receives a pointer to the value (NUL-terminated, for convenience)
/// and `*len` its length in bytes without the terminator. `len` may be NULL.
///
/// Ownership: the value is borrowed from `tok`; it stays valid until `tl_token_free(tok)`.
/// Never free it, and never log it. Thread-safety: callable from any thread.
///
/// # Safety
/// `tok` must be NULL or a live `tl_token`; `ptr` must be writable; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_token_value(
    tok: *const tl_token,
    ptr: *mut *const c_char,
    len: *mut usize,
) -> tl_result {
    ffi_boundary(|| {
        // SAFETY: NULL or a live tl_token per the contract.
        let Some(tok) = (unsafe { tok.as_ref() }) else {
            return tl_result::TL_NULL_ARGUMENT;
        };
        if ptr.is_null() {
            return tl_result::TL_NULL_ARGUMENT;
        }
        // SAFETY: `ptr` is non-NULL and writable; `len` is NULL or writable.
        unsafe {
            ptr.write(tok.value.as_ptr().cast());
            write_opt(len, tok.value.len() - 1);
        }
        tl_result::TL_OK
    })
}

/// The token type (`"Bearer"` for most OAuth2 servers): `*ptr` receives a NUL-terminated
/// string and `*len` (may be NULL) its length.
///
/// Ownership: borrowed from `tok` until `tl_token_free(tok)`. Thread-safety: any thread.
///
/// # Safety
/// `tok` must be NULL or a live `tl_token`; `ptr` must be writable; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_token_type(
    tok: *const tl_token,
    ptr: *mut *const c_char,
    len: *mut usize,
) -> tl_result {
    ffi_boundary(|| {
        // SAFETY: NULL or a live tl_token per the contract.
        let Some(tok) = (unsafe { tok.as_ref() }) else {
            return tl_result::TL_NULL_ARGUMENT;
        };
        if ptr.is_null() {
            return tl_result::TL_NULL_ARGUMENT;
        }
        // SAFETY: `ptr` is non-NULL and writable; `len` is NULL or writable.
        unsafe {
            ptr.write(tok.token_type.as_ptr());
            write_opt(len, tok.token_type.as_bytes().len());
        }
        tl_result::TL_OK
    })
}

/// The OpenID Connect ID token of a user login (opaque: verify it before trusting what it
/// says): `*ptr` receives a pointer to it (NUL-terminated) and `*len` (may be NULL) its
/// length, or `*ptr` NULL and `*len` 0 when the token has none (`TL_OK` either way).
///
/// Ownership: borrowed from `tok` until `tl_token_free(tok)`; a secret like the value: never
/// log it. Thread-safety: callable from any thread.
///
/// # Safety
/// `tok` must be NULL or a live `tl_token`; `ptr` must be writable; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_token_id_token(
    tok: *const tl_token,
    ptr: *mut *const c_char,
    len: *mut usize,
) -> tl_result {
    ffi_boundary(|| {
        // SAFETY: NULL or a live tl_token per the contract.
        let Some(tok) = (unsafe { tok.as_ref() }) else {
            return tl_result::TL_NULL_ARGUMENT;
        };
        if ptr.is_null() {
            return tl_result::TL_NULL_ARGUMENT;
        }
        let (start, length) = match &tok.id_token {
            Some(bytes) => (bytes.as_ptr().cast::<c_char>(), bytes.len() - 1),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `ptr` is non-NULL and writable; `len` is NULL or writable.
        unsafe {
            ptr.write(start);
            write_opt(len, length);
        }
        tl_result::TL_OK
    })
}

/// A value the login response carried, kept with the token (a session configuration's
/// `values`, e.g. Zuora's `server_url`): a NUL-terminated string, or NULL when `tok` or
/// `name` is NULL, `name` is not UTF-8, or the token has no such value. Not secret.
///
/// Ownership: borrowed from `tok` until `tl_token_free(tok)`; never free it. `name` is only
/// read during the call. Thread-safety: callable from any thread.
///
/// # Safety
/// `tok` must be NULL or a live `tl_token`; `name` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tl_token_attribute(
    tok: *const tl_token,
    name: *const c_char,
) -> *const c_char {
    ffi_boundary_or(std::ptr::null(), || {
        // SAFETY: NULL or a live tl_token per the contract.
        let Some(tok) = (unsafe { tok.as_ref() }) else {
            return std::ptr::null();
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let Ok(name) = (unsafe { str_arg(name, "name") }) else {
            return std::ptr::null();
        };
        tok.attributes
            .binary_search_by(|(key, _)| key.as_str().cmp(name))
            .map_or(std::ptr::null(), |at| tok.attributes[at].1.as_ptr())
    })
}

/// The token's generation: increases by one with every token a manager installs; pass it to
/// `tl_manager_invalidate` or `tl_manager_token_after_rejection`. Returns 0 when `tok` is
/// NULL (a real generation is never 0).
///
/// Thread-safety: callable from any thread.
///
/// # Safety
/// `tok` must be NULL or a live `tl_token`.
#[no_mangle]
pub unsafe extern "C" fn tl_token_generation(tok: *const tl_token) -> u64 {
    ffi_boundary_or(0, || {
        // SAFETY: NULL or a live tl_token per the contract.
        unsafe { tok.as_ref() }.map_or(0, |tok| tok.token.generation())
    })
}

/// The token's wall-clock expiry in milliseconds since the Unix epoch (0 when `tok` is NULL).
/// For display and logging only: tokenlease itself tracks expiry on a monotonic clock.
///
/// Thread-safety: callable from any thread.
///
/// # Safety
/// `tok` must be NULL or a live `tl_token`.
#[no_mangle]
pub unsafe extern "C" fn tl_token_expires_at_unix_ms(tok: *const tl_token) -> u64 {
    ffi_boundary_or(0, || {
        // SAFETY: NULL or a live tl_token per the contract.
        unsafe { tok.as_ref() }.map_or(0, |tok| unix_ms(tok.token.expires_at_wall()))
    })
}

/// Frees a token handle and wipes its copy of the value. NULL is a no-op.
///
/// Ownership: takes ownership of `tok`; pointers obtained from `tl_token_value`,
/// `tl_token_type`, `tl_token_id_token` and `tl_token_attribute` dangle afterwards. Thread-safety: must not race with other calls on `tok`.
///
/// # Safety
/// `tok` must be NULL or a `tl_token` from `tl_manager_token_handle` not freed before.
#[no_mangle]
pub unsafe extern "C" fn tl_token_free(tok: *mut tl_token) {
    ffi_boundary_or((), || {
        if !tok.is_null() {
            // SAFETY: `tok` came from Box::into_raw in tl_manager_token_handle and ownership is
            // transferred back here exactly once per the contract.
            drop(unsafe { Box::from_raw(tok) });
        }
    });
}
