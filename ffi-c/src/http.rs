//! Core's request decisions for C callers' own HTTP code: which header carries a token
//! (`tl_manager_request_header`), the body that carries it for configurations that place it
//! in bodies (`tl_manager_authorize_body`), and what a response means
//! (`tl_manager_needs_response_body`, `tl_manager_judge_response`), the DPoP proof of an
//! API request with a bound token and the server nonces it needs (`tl_manager_dpop_proof`,
//! `tl_manager_dpop_resend`, `tl_manager_remember_dpop_nonce`), plus the session info request
//! (`tl_manager_session_info`). All of it is `tokenlease::Manager`'s; these exports convert
//! arguments and results.

use std::ffi::{c_char, CStr};

use tl_core::http::MAX_INSPECTED_ERROR_BODY_BYTES;
use tl_core::{ResponseVerdict, MAX_JUDGED_HEADERS};

use crate::boundary::{copy_out, ffi_boundary_or, str_arg, utf8_arg, Failure};
use crate::manager::{manager_call, tl_manager};
use crate::result::tl_result;
use crate::token::tl_token;

/// The most response headers `tl_manager_judge_response` reads; later ones are ignored.
pub const TL_MAX_JUDGED_HEADERS: usize = 256;

/// The most response body bytes `tl_manager_judge_response` reads; pass at most this prefix.
pub const TL_MAX_JUDGED_BODY_BYTES: usize = 65536;

// The C constants are core's limits.
const _: () = assert!(TL_MAX_JUDGED_HEADERS == MAX_JUDGED_HEADERS);
const _: () = assert!(TL_MAX_JUDGED_BODY_BYTES == MAX_INSPECTED_ERROR_BODY_BYTES);

/// One response header for `tl_manager_judge_response`: NUL-terminated UTF-8 name and
/// value, borrowed for the duration of the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_header {
    /// Header name (any case), e.g. `"WWW-Authenticate"`.
    pub name: *const c_char,
    /// Header value.
    pub value: *const c_char,
}

/// The token of a `tl_token*` argument.
///
/// # Safety
/// `token` is NULL or a live `tl_token`.
unsafe fn token_arg<'a>(token: *const tl_token) -> Result<&'a tl_token, Failure> {
    // SAFETY: NULL or a live tl_token per the contract.
    unsafe { token.as_ref() }.ok_or_else(|| Failure::null("token"))
}

/// Writes an empty string into a caller buffer that has room for one.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
unsafe fn clear(buf: *mut c_char, len: usize) {
    if !buf.is_null() && len > 0 {
        // SAFETY: writable for `len >= 1` bytes per the contract.
        unsafe { buf.write(0) };
    }
}

/// A NUL-terminated UTF-8 string inside a `tl_header`.
///
/// # Safety
/// `ptr` is NULL or NUL-terminated.
unsafe fn header_text<'a>(
    ptr: *const c_char,
    what: &str,
    index: usize,
) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::new(
            tl_result::TL_NULL_ARGUMENT,
            format!("headers[{index}].{what} is NULL"),
        ));
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|err| {
        Failure::new(
            tl_result::TL_INVALID_UTF8,
            format!(
                "headers[{index}].{what} is not valid UTF-8 (byte {})",
                err.valid_up_to()
            ),
        )
    })
}

/// The header that carries `token` on an API request, as the manager's configuration says:
/// `Authorization` / `Bearer <token>` for OAuth2, a session's own header
/// (`vmware-api-session-id`, with its configured prefix), or `Cookie` / `NAME=<token>`.
/// Names come in lower case (HTTP header names are case-insensitive).
///
/// On `TL_OK`, `*has_header` tells whether there is a header: `false` when the configuration
/// carries the token only in the request body (use `tl_manager_authorize_body`); then both
/// buffers receive empty strings and both `*written` 0. Otherwise the name goes into
/// `name_buf` and the value into `value_buf`, NUL-terminated, with their lengths in
/// `*name_written` and `*value_written`. When either buffer is too small the result is
/// `TL_BUFFER_TOO_SMALL`: both `*written` receive the sizes needed (terminators included),
/// nothing but empty strings is written, and `*has_header` is `true`. A buffer may be NULL
/// when its length is 0 (a size query).
///
/// The value contains the token: wipe `value_buf` when done and never log it.
/// Thread-safety: callable from any thread; never blocks.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `token` NULL or a live `tl_token`; each buffer NULL
/// or writable for its length; `name_written`, `value_written` and `has_header` NULL or
/// writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tl_manager_request_header(
    mgr: *const tl_manager,
    token: *const tl_token,
    name_buf: *mut c_char,
    name_len: usize,
    name_written: *mut usize,
    value_buf: *mut c_char,
    value_len: usize,
    value_written: *mut usize,
    has_header: *mut bool,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or a live tl_token per the contract.
        let token = unsafe { token_arg(token) }?.token();
        for (ptr, name) in [
            (name_written, "name_written"),
            (value_written, "value_written"),
        ] {
            if ptr.is_null() {
                return Err(Failure::null(name));
            }
        }
        if has_header.is_null() {
            return Err(Failure::null("has_header"));
        }
        if name_buf.is_null() && name_len > 0 {
            return Err(Failure::null("name_buf"));
        }
        if value_buf.is_null() && value_len > 0 {
            return Err(Failure::null("value_buf"));
        }
        let header = mgr
            .manager
            .request_header(token.value(), token.token_type())?;
        // SAFETY: the buffers and out-pointers per the contract (checked above).
        unsafe {
            clear(name_buf, name_len);
            clear(value_buf, value_len);
            has_header.write(header.is_some());
        }
        let Some((name, value)) = header else {
            // SAFETY: as above.
            unsafe {
                name_written.write(0);
                value_written.write(0);
            }
            return Ok(());
        };
        let value = value.expose().as_bytes();
        if name_len <= name.len() || value_len <= value.len() {
            // SAFETY: as above.
            unsafe {
                name_written.write(name.len() + 1);
                value_written.write(value.len() + 1);
            }
            return Err(Failure::new(
                tl_result::TL_BUFFER_TOO_SMALL,
                format!(
                    "the header needs buffers of {} (name) and {} (value) bytes",
                    name.len() + 1,
                    value.len() + 1
                ),
            ));
        }
        // SAFETY: as above; both buffers are large enough (checked).
        unsafe {
            copy_out(name.as_bytes(), name_buf, name_len, name_written)?;
            copy_out(value, value_buf, value_len, value_written)?;
        }
        Ok(())
    })
}

/// For a configuration that carries the token in request bodies (`"send": {"body":
/// "{{session}}"}`, a SOAP `SessionHeader`): copies `body` (`body_len` bytes of UTF-8, no
/// terminator needed) with the placeholder replaced by the XML-escaped token into `buf`,
/// NUL-terminated, its length in `*written`, and sets `*placed` to `true`. Send that body
/// instead of yours; on a retry, render yours again with the new token.
///
/// When the token does not travel in bodies, `*placed` is `false`, `buf` receives an empty
/// string and `*written` 0: send your body as it is (any bytes; it is not read).
///
/// Buffer rules as for `tl_manager_token` (`TL_BUFFER_TOO_SMALL` with the needed size in
/// `*written`; nothing of the token is written then). `body` may be NULL when `body_len` is
/// 0. A body that is not UTF-8 is `TL_INVALID_UTF8` when the token goes into it.
///
/// The result contains the token: wipe `buf` when done and never log it. Thread-safety:
/// callable from any thread; never blocks.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `token` NULL or a live `tl_token`; `body` NULL or
/// readable for `body_len` bytes; `buf` NULL or writable for `len` bytes; `written` and
/// `placed` NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tl_manager_authorize_body(
    mgr: *const tl_manager,
    token: *const tl_token,
    body: *const c_char,
    body_len: usize,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
    placed: *mut bool,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or a live tl_token per the contract.
        let token = unsafe { token_arg(token) }?.token();
        if written.is_null() {
            return Err(Failure::null("written"));
        }
        if placed.is_null() {
            return Err(Failure::null("placed"));
        }
        if buf.is_null() && len > 0 {
            return Err(Failure::null("buf"));
        }
        if body.is_null() && body_len > 0 {
            return Err(Failure::null("body"));
        }
        if isize::try_from(body_len).is_err() {
            return Err(Failure::new(
                tl_result::TL_INVALID_ARGUMENT,
                format!("body_len {body_len} is larger than any object can be"),
            ));
        }
        // SAFETY: the buffer and out-pointers per the contract (checked above).
        unsafe {
            clear(buf, len);
            written.write(0);
            placed.write(false);
        }
        if mgr.manager.authorizer().body_placeholder().is_none() {
            return Ok(());
        }
        let text = if body_len == 0 {
            ""
        } else {
            // SAFETY: non-NULL and readable for `body_len` bytes per the contract.
            unsafe { utf8_arg(body, body_len, "body") }?
        };
        let Some(rendered) = mgr.manager.authorize_body(token.value(), text) else {
            return Ok(());
        };
        // SAFETY: as above.
        unsafe {
            placed.write(true);
            copy_out(rendered.expose().as_bytes(), buf, len, written)
        }
    })
}

/// Whether a response with `status` needs a prefix of its body (at most
/// `TL_MAX_JUDGED_BODY_BYTES`) for `tl_manager_judge_response`. Successful responses never
/// do. `false` when `mgr` is NULL.
///
/// Thread-safety: callable from any thread; never blocks.
///
/// # Safety
/// `mgr` must be NULL or a live manager.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_needs_response_body(
    mgr: *const tl_manager,
    status: u16,
) -> bool {
    ffi_boundary_or(false, || {
        // SAFETY: NULL or a live manager per the contract.
        unsafe { mgr.as_ref() }.is_some_and(|mgr| mgr.manager.needs_response_body(status))
    })
}

/// Judges the response to a request made with the token of `generation`, by the
/// configuration's rules (a Bearer 401 `invalid_token`; a session's `expired` rules, e.g.
/// 401 with `UNAUTHENTICATED` or 500 with `INVALID_SESSION` in the body).
///
/// `*rejected` receives `true` when the response rejects that token: the manager has then
/// discarded it (exactly that generation: a late verdict never discards a newer token), so
/// get a token again (`tl_manager_token_handle` / `tl_manager_token`) and retry the request
/// once, if it can be replayed. `false` otherwise: for a sliding session the use is
/// recorded (and a remaining lifetime the configured response header reports). Call it for
/// every response, successful ones too.
///
/// `headers`: `count` response headers (at most `TL_MAX_JUDGED_HEADERS` are read; `headers`
/// may be NULL when `count` is 0); each name and value NUL-terminated UTF-8
/// (`TL_NULL_ARGUMENT` / `TL_INVALID_UTF8` otherwise, before anything is judged). `body`: the
/// first `len` bytes of the response body when `tl_manager_needs_response_body(mgr, status)`
/// (at most `TL_MAX_JUDGED_BODY_BYTES` are read; NULL when `len` is 0).
///
/// Thread-safety: callable from any thread; never blocks.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `headers` NULL or readable for
/// `min(count, TL_MAX_JUDGED_HEADERS)` elements whose strings are NULL or NUL-terminated;
/// `body` NULL or readable for `min(len, TL_MAX_JUDGED_BODY_BYTES)` bytes; `rejected` NULL or
/// writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tl_manager_judge_response(
    mgr: *const tl_manager,
    generation: u64,
    status: u16,
    headers: *const tl_header,
    count: usize,
    body: *const u8,
    len: usize,
    rejected: *mut bool,
) -> tl_result {
    manager_call(mgr, |mgr| {
        if rejected.is_null() {
            return Err(Failure::null("rejected"));
        }
        if headers.is_null() && count > 0 {
            return Err(Failure::null("headers"));
        }
        if body.is_null() && len > 0 {
            return Err(Failure::null("body"));
        }
        // SAFETY: per the contract.
        let pairs = unsafe { header_args(headers, count) }?;
        let len = len.min(TL_MAX_JUDGED_BODY_BYTES);
        let body: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: non-NULL and readable for `min(len, TL_MAX_JUDGED_BODY_BYTES)` bytes per
            // the contract.
            unsafe { std::slice::from_raw_parts(body, len) }
        };
        let verdict = mgr.manager.judge_response(generation, status, &pairs, body);
        // SAFETY: non-NULL (checked) and writable per the contract.
        unsafe { rejected.write(verdict == ResponseVerdict::Rejected) };
        Ok(())
    })
}

/// Response headers as `(name, value)` pairs: at most `TL_MAX_JUDGED_HEADERS` of `count`, each
/// string checked (`TL_NULL_ARGUMENT` / `TL_INVALID_UTF8`).
///
/// # Safety
/// `headers` NULL (then `count` must be 0) or readable for `min(count,
/// TL_MAX_JUDGED_HEADERS)` elements whose strings are NULL or NUL-terminated.
unsafe fn header_args<'a>(
    headers: *const tl_header,
    count: usize,
) -> Result<Vec<(&'a str, &'a str)>, Failure> {
    if headers.is_null() && count > 0 {
        return Err(Failure::null("headers"));
    }
    let count = count.min(TL_MAX_JUDGED_HEADERS);
    let headers: &[tl_header] = if count == 0 {
        &[]
    } else {
        // SAFETY: non-NULL and readable for `min(count, TL_MAX_JUDGED_HEADERS)` elements per
        // the contract.
        unsafe { std::slice::from_raw_parts(headers, count) }
    };
    let mut pairs = Vec::with_capacity(headers.len());
    for (index, header) in headers.iter().enumerate() {
        // SAFETY: each string NULL or NUL-terminated per the contract.
        let name = unsafe { header_text(header.name, "name", index) }?;
        // SAFETY: as above.
        let value = unsafe { header_text(header.value, "value", index) }?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// An absolute URL argument (`TL_USAGE` otherwise, as core's `dpop_proof` says).
fn absolute_url(url: &str, function: &str) -> Result<reqwest::Url, Failure> {
    reqwest::Url::parse(url).map_err(|_| {
        Failure::new(
            tl_result::TL_USAGE,
            format!("{function}: url is not an absolute URL"),
        )
    })
}

/// The DPoP proof (RFC 9449) for an API request `method` (e.g. `"GET"`) to `url` (the
/// absolute URL the request goes to) with `token`, when that token is bound to the manager's
/// key (token type `DPoP`, from a configuration with `"dpop": true`): send it as the `DPoP`
/// request header, next to `tl_manager_request_header`'s `authorization: DPoP <token>`.
///
/// On `TL_OK`, `*has_proof` tells whether there is a proof: `false` for other tokens (Bearer,
/// sessions); then `buf` receives an empty string and `*written` 0. Otherwise the proof goes
/// into `buf`, NUL-terminated, its length in `*written`. Every call signs a new proof (a new
/// `jti`, the server's latest nonce for that origin): with `TL_BUFFER_TOO_SMALL`, `*written`
/// is the size that proof needed (terminator included; the next one for the same request has
/// the same size unless a new nonce came in between: 1024 bytes plus the URL's length is
/// ample), nothing but an empty string is written, and `*has_proof` is `true`. `buf` may be
/// NULL when `len` is 0 (a size query). `TL_USAGE` when `url` is not an absolute URL.
///
/// The proof is a credential: wipe `buf` when done and never log it. Thread-safety:
/// callable from any thread; never blocks (it signs with ES256, tens of microseconds).
///
/// # Safety
/// `mgr` must be NULL or a live manager; `token` NULL or a live `tl_token`; `method` and
/// `url` NULL or NUL-terminated; `buf` NULL or writable for `len` bytes; `written` and
/// `has_proof` NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tl_manager_dpop_proof(
    mgr: *const tl_manager,
    token: *const tl_token,
    method: *const c_char,
    url: *const c_char,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
    has_proof: *mut bool,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or a live tl_token per the contract.
        let token = unsafe { token_arg(token) }?.token();
        // SAFETY: NULL or NUL-terminated per the contract.
        let method = unsafe { str_arg(method, "method") }?;
        // SAFETY: as above.
        let url = unsafe { str_arg(url, "url") }?;
        if written.is_null() {
            return Err(Failure::null("written"));
        }
        if has_proof.is_null() {
            return Err(Failure::null("has_proof"));
        }
        if buf.is_null() && len > 0 {
            return Err(Failure::null("buf"));
        }
        // SAFETY: the buffer and out-pointers per the contract (checked above).
        unsafe {
            clear(buf, len);
            written.write(0);
            has_proof.write(false);
        }
        let proof = mgr
            .manager
            .dpop_proof(method, url, token.value(), token.token_type())?;
        let Some(proof) = proof else {
            return Ok(());
        };
        // SAFETY: as above.
        unsafe {
            has_proof.write(true);
            copy_out(proof.expose().as_bytes(), buf, len, written)
        }
    })
}

/// Keeps the `DPoP-Nonce` a response from `url` carried (`headers`, as received), for the
/// next DPoP proofs to that origin (`tl_manager_dpop_proof`, and the manager's own token
/// requests). `*is_new` receives `true` when the nonce is new: a 401 that brings one is
/// worth sending once more (once), with a new proof. `false` without a nonce, for one
/// already known, or for a manager without DPoP. Call it for every response to a request
/// that carried a proof.
///
/// `headers`: `count` response headers (at most `TL_MAX_JUDGED_HEADERS` are read; NULL when
/// `count` is 0), each name and value NUL-terminated UTF-8 (`TL_NULL_ARGUMENT` /
/// `TL_INVALID_UTF8` otherwise). `TL_USAGE` when `url` is not an absolute URL.
///
/// Thread-safety: callable from any thread; never blocks.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `url` NULL or NUL-terminated; `headers` NULL or
/// readable for `min(count, TL_MAX_JUDGED_HEADERS)` elements whose strings are NULL or
/// NUL-terminated; `is_new` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_remember_dpop_nonce(
    mgr: *const tl_manager,
    url: *const c_char,
    headers: *const tl_header,
    count: usize,
    is_new: *mut bool,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or NUL-terminated per the contract.
        let url = unsafe { str_arg(url, "url") }?;
        if is_new.is_null() {
            return Err(Failure::null("is_new"));
        }
        // SAFETY: writable per the contract (checked above).
        unsafe { is_new.write(false) };
        // SAFETY: per the contract.
        let pairs = unsafe { header_args(headers, count) }?;
        let url = absolute_url(url, "tl_manager_remember_dpop_nonce")?;
        let fresh = mgr.manager.observe_dpop_nonce(url.as_str(), &pairs);
        // SAFETY: as above.
        unsafe { is_new.write(fresh) };
        Ok(())
    })
}

/// Core's answer after an API request made with `token` to `url` was answered with
/// `status` and `headers`: it keeps the `DPoP-Nonce` the response carried, whatever the
/// status, and `*resend` receives whether to send the same request once more with a new
/// proof (`tl_manager_dpop_proof`) — only for a DPoP-bound token whose 401 brought a new
/// nonce (RFC 9449 §9). Call it for every response to a request that carried a proof, before
/// `tl_manager_judge_response`; resend at most once. (This replaces checking
/// `tl_manager_remember_dpop_nonce`'s answer and the status yourself.)
///
/// `headers`: `count` response headers (at most `TL_MAX_JUDGED_HEADERS` are read; NULL when
/// `count` is 0), each name and value NUL-terminated UTF-8 (`TL_NULL_ARGUMENT` /
/// `TL_INVALID_UTF8` otherwise). `TL_USAGE` when `url` is not an absolute URL.
///
/// Thread-safety: callable from any thread; never blocks.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `token` NULL or a live `tl_token`; `url` NULL or
/// NUL-terminated; `headers` NULL or readable for `min(count, TL_MAX_JUDGED_HEADERS)`
/// elements whose strings are NULL or NUL-terminated; `resend` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_dpop_resend(
    mgr: *const tl_manager,
    token: *const tl_token,
    url: *const c_char,
    status: u16,
    headers: *const tl_header,
    count: usize,
    resend: *mut bool,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: NULL or a live tl_token per the contract.
        let token = unsafe { token_arg(token) }?.token();
        // SAFETY: NULL or NUL-terminated per the contract.
        let url = unsafe { str_arg(url, "url") }?;
        if resend.is_null() {
            return Err(Failure::null("resend"));
        }
        // SAFETY: writable per the contract (checked above).
        unsafe { resend.write(false) };
        // SAFETY: per the contract.
        let pairs = unsafe { header_args(headers, count) }?;
        let url = absolute_url(url, "tl_manager_dpop_resend")?;
        let again =
            mgr.manager
                .dpop_resend_with_pairs(token.token_type(), url.as_str(), status, &pairs);
        // SAFETY: as above.
        unsafe { resend.write(again) };
        Ok(())
    })
}

/// Asks the server about the current session (`session.info` in the configuration, e.g.
/// vSphere's `GET /api/session`: whose session it is, whether it is alive) and copies the
/// response body into `buf`, NUL-terminated, its length in `*written`. Gets a session
/// first when there is none. Blocks until the server answered.
///
/// `TL_CONFIGURATION` when the configuration has no `session.info`; `TL_TOKEN_REJECTED`
/// when the server says the session ended (the manager has then discarded it). Buffer rules
/// as for `tl_manager_token`, except that every call makes a new request: pass a buffer
/// large enough for the answer (with `TL_BUFFER_TOO_SMALL`, `*written` is the size that
/// answer needed).
///
/// Thread-safety: callable from any thread; not from inside a tokenlease callback.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `buf` NULL or writable for `len` bytes; `written`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_session_info(
    mgr: *const tl_manager,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> tl_result {
    manager_call(mgr, |mgr| {
        if written.is_null() {
            return Err(Failure::null("written"));
        }
        if buf.is_null() && len > 0 {
            return Err(Failure::null("buf"));
        }
        // SAFETY: the buffer per the contract (checked above).
        unsafe {
            clear(buf, len);
            written.write(0);
        }
        let body = mgr.manager.session_info_blocking()?;
        // SAFETY: the buffer and `written` per the contract.
        unsafe { copy_out(body.as_bytes(), buf, len, written) }
    })
}
