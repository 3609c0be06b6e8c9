//! A token store implemented in C: records exchanged as JSON text.

use std::ffi::{c_char, c_void, CString};
use std::fmt;
use std::sync::Arc;

use tl_core::{BlockingStore, Error, ErrorKind, Result, TokenRecord};
use zeroize::Zeroizing;

use crate::boundary::{ffi_boundary, utf8_arg, UserData};
use crate::result::tl_result;
use crate::source::{callback_error, Gate};

/// A token store written in C. A record is a JSON object (tokenlease's `TokenRecord`
/// format: version, value, token_type, scopes, refresh_token, expires_at_ms,
/// obtained_at_ms); store and return it verbatim. It contains the token value: keep it
/// private (e.g. a 0600 file).
///
/// Each callback returns `TL_OK` or an error kind (usually `TL_STORE`); a failing store
/// never fails token calls: tokenlease reports a `TL_EVENT_STORE_ERROR` event and carries on
/// from memory and the source.
///
/// Threads: callbacks run on tokenlease's background blocking threads and may overlap, so
/// `userdata` must be safe to use from any thread. After `tl_manager_free` returns, no
/// callback is called again. The struct is copied by `tl_manager_new_custom`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_store_callbacks {
    /// Passed unchanged to every callback. May be NULL.
    pub userdata: *mut c_void,
    /// Required. Looks up the record under `key` (NUL-terminated); when there is one,
    /// reports it with `tl_load_output_set_record(out, ...)`; otherwise just returns `TL_OK`.
    pub load: Option<
        unsafe extern "C" fn(
            userdata: *mut c_void,
            key: *const c_char,
            out: *mut tl_load_output,
        ) -> u32,
    >,
    /// Required. Stores `record_json` (`record_len` bytes, NUL-terminated, valid only during
    /// the call) under `key`, replacing what was there.
    pub save: Option<
        unsafe extern "C" fn(
            userdata: *mut c_void,
            key: *const c_char,
            record_json: *const c_char,
            record_len: usize,
        ) -> u32,
    >,
    /// Optional (NULL: nothing to do). Removes the record under `key`; no error when absent.
    pub remove: Option<unsafe extern "C" fn(userdata: *mut c_void, key: *const c_char) -> u32>,
}

/// What a C `load` callback reports. Opaque; valid only during the callback.
#[derive(Default)]
pub struct tl_load_output {
    record: Option<Zeroizing<String>>,
}

impl fmt::Debug for tl_load_output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("tl_load_output")
            .field("has_record", &self.record.is_some())
            .finish()
    }
}

/// Reports the loaded record: `json` (`len` bytes of UTF-8, copied; no terminator needed).
/// The JSON is parsed after the callback returns; a corrupt record becomes a store error
/// (reported as an event), not a token error.
///
/// Returns `TL_NULL_ARGUMENT` or `TL_INVALID_UTF8`. Thread-safety: only from inside the
/// `load` callback that received `out`.
///
/// # Safety
/// `out` must be the output passed to the running callback; `json` NULL or readable for
/// `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn tl_load_output_set_record(
    out: *mut tl_load_output,
    json: *const c_char,
    len: usize,
) -> tl_result {
    ffi_boundary(|| {
        // SAFETY: NULL or the output of the running load callback, used exclusively by it.
        let Some(out) = (unsafe { out.as_mut() }) else {
            return tl_result::TL_NULL_ARGUMENT;
        };
        // SAFETY: NULL or readable for `len` bytes per the contract.
        match unsafe { utf8_arg(json, len, "json") } {
            Ok(json) => {
                out.record = Some(Zeroizing::new(json.to_owned()));
                tl_result::TL_OK
            }
            Err(failure) => failure.code,
        }
    })
}

type LoadFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut tl_load_output) -> u32;
type SaveFn = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, usize) -> u32;
type RemoveFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> u32;

/// The C callbacks as a core `BlockingStore`.
pub(crate) struct CStore {
    userdata: UserData,
    load: LoadFn,
    save: SaveFn,
    remove: Option<RemoveFn>,
    gate: Arc<Gate>,
}

impl fmt::Debug for CStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CStore").finish_non_exhaustive()
    }
}

impl CStore {
    pub(crate) fn new(callbacks: &tl_store_callbacks, gate: Arc<Gate>) -> Option<Self> {
        Some(Self {
            userdata: UserData(callbacks.userdata),
            load: callbacks.load?,
            save: callbacks.save?,
            remove: callbacks.remove,
            gate,
        })
    }
}

fn c_key(key: &str) -> Result<CString> {
    CString::new(key).map_err(|_| Error::new(ErrorKind::Store, "the store key contains a NUL byte"))
}

fn check(code: u32, callback: &str) -> Result<()> {
    match tl_result::from_code(code) {
        Some(tl_result::TL_OK) => Ok(()),
        other => Err(callback_error(code, other, callback, None)),
    }
}

impl BlockingStore for CStore {
    fn load(&self, key: &str) -> Result<Option<TokenRecord>> {
        let _open = self.gate.enter()?;
        let key = c_key(key)?;
        let mut out = tl_load_output::default();
        // SAFETY: `load` and `userdata` were registered together through
        // tl_manager_new_custom, callable from any thread until tl_manager_free, which the
        // gate guard held here keeps from completing. `key` and `out` outlive the call.
        let code = unsafe { (self.load)(self.userdata.0, key.as_ptr(), &mut out) };
        check(code, "store load")?;
        out.record
            .map(|json| TokenRecord::from_json(&json))
            .transpose()
    }

    fn save(&self, key: &str, record: &TokenRecord) -> Result<()> {
        let _open = self.gate.enter()?;
        let key = c_key(key)?;
        let text = Zeroizing::new(record.to_json()?);
        let len = text.len();
        let mut json = Zeroizing::new(Vec::with_capacity(len + 1));
        json.extend_from_slice(text.as_bytes());
        json.push(0);
        // SAFETY: as in `load`; `json` is NUL-terminated, `len` bytes before the terminator,
        // and outlives the call.
        let code = unsafe { (self.save)(self.userdata.0, key.as_ptr(), json.as_ptr().cast(), len) };
        check(code, "store save")
    }

    fn delete(&self, key: &str) -> Result<()> {
        let Some(remove) = self.remove else {
            return Ok(());
        };
        let _open = self.gate.enter()?;
        let key = c_key(key)?;
        // SAFETY: as in `load`; `key` outlives the call.
        let code = unsafe { remove(self.userdata.0, key.as_ptr()) };
        check(code, "store remove")
    }
}
