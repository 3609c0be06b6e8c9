//! `tl_manager`: one credential's token manager.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::sync::Arc;

use parking_lot::Mutex;
use tl_core::config::ManagerConfig;
use tl_core::store::BlockingStoreAdapter;
use tl_core::{BlockingSourceAdapter, Clock, Manager, TokenState};

use crate::boundary::{
    catch, copy_out, ffi_boundary, refuse_inside_callback, str_arg, unix_ms, write_opt, Failure,
    UserData,
};
use crate::events::{c_text, tl_event, tl_event_callback, CListener, EventSlot};
use crate::result::tl_result;
use crate::source::{tl_source_callbacks, CSource, Gate};
use crate::store::{tl_store_callbacks, CStore};
use crate::token::tl_token;

/// A token manager for one credential: gets, caches and refreshes its token in the
/// background, makes concurrent callers share one refresh. Opaque.
///
/// Create it with `tl_manager_from_config`, `tl_manager_from_config_on_clock` (tests) or
/// `tl_manager_new_custom`, release it with `tl_manager_free`. Every function taking a
/// `tl_manager*` may be called from any number of threads at once, except
/// `tl_manager_free`, which must be the last call on the handle.
/// Blocking functions (`tl_manager_token` on an empty or expiring cache,
/// `tl_manager_revoke`) must not be called from inside a tokenlease callback: they return
/// `TL_USAGE` there.
pub struct tl_manager {
    pub(crate) manager: Manager,
    last_error: Mutex<String>,
    events: Arc<EventSlot>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for tl_manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tl_manager")
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

impl tl_manager {
    fn record(&self, failure: Failure) -> tl_result {
        *self.last_error.lock() = failure.detail;
        failure.code
    }

    /// Stops every C callback: none starts after this. Waits at most `TL_FREE_WAIT_MS` in
    /// all for running ones; `false` when one was still running then.
    fn shutdown(&self) -> bool {
        self.manager.close();
        let wait = std::time::Duration::from_millis(TL_FREE_WAIT_MS);
        let started = std::time::Instant::now();
        let events_done = self.events.set(None, wait);
        let callbacks_done = self.gate.shut(wait.saturating_sub(started.elapsed()));
        events_done && callbacks_done
    }
}

thread_local! {
    /// Detail of the last failed constructor call on this thread.
    static CREATE_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f` on a live manager inside the panic boundary; a failure is recorded as the
/// handle's last error.
///
/// Callers pass `mgr` straight from an export whose contract requires it to be NULL or a
/// live `tl_manager`.
#[inline]
pub(crate) fn manager_call(
    mgr: *const tl_manager,
    f: impl FnOnce(&tl_manager) -> Result<(), Failure>,
) -> tl_result {
    ffi_boundary(|| {
        // SAFETY: every caller is an export whose contract requires `mgr` to be NULL or a
        // live tl_manager, and passes it unchanged.
        let Some(mgr) = (unsafe { mgr.as_ref() }) else {
            return tl_result::TL_NULL_ARGUMENT;
        };
        match catch(|| f(mgr)) {
            Ok(()) => tl_result::TL_OK,
            Err(failure) => mgr.record(failure),
        }
    })
}

/// Shared tail of the constructors: `*out` is set to NULL first, then to the new handle.
///
/// Callers pass `out` straight from an export whose contract requires it to be NULL or
/// writable.
pub(crate) fn create(
    out: *mut *mut tl_manager,
    build: impl FnOnce() -> Result<(Manager, Arc<Gate>), Failure>,
) -> tl_result {
    ffi_boundary(|| {
        let result = catch(|| {
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            // SAFETY: non-NULL (checked) and writable per the exporting caller's contract.
            unsafe { out.write(std::ptr::null_mut()) };
            let (manager, gate) = build()?;
            let events = Arc::new(EventSlot::default());
            manager.add_listener(Arc::new(CListener {
                slot: events.clone(),
                key: c_text(manager.key()),
            }));
            let handle = Box::new(tl_manager {
                manager,
                last_error: Mutex::new(String::new()),
                events,
                gate,
            });
            // SAFETY: as above.
            unsafe { out.write(Box::into_raw(handle)) };
            Ok(())
        });
        match result {
            Ok(()) => tl_result::TL_OK,
            Err(failure) => {
                let code = failure.code;
                CREATE_ERROR.with(|slot| *slot.borrow_mut() = failure.detail);
                code
            }
        }
    })
}

/// Creates a manager from a configuration text, JSON (when it starts with `{`) or TOML: the
/// same configuration every tokenlease binding accepts (source, policy, store; see the
/// README). Nothing is fetched until the first token call.
///
/// On success `*out` receives a new handle; on failure `*out` is set to NULL and the result
/// is e.g. `TL_CONFIGURATION`, `TL_INVALID_UTF8` or `TL_NULL_ARGUMENT`; the detail (naming
/// the bad field, never a secret) is available from `tl_manager_last_error(NULL, ...)` on the
/// same thread.
///
/// Ownership: `config` is only read during the call. The caller owns the returned handle and
/// must release it with `tl_manager_free`. Thread-safety: callable from any thread.
///
/// # Safety
/// `config` must be NULL or a NUL-terminated string; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_from_config(
    config: *const c_char,
    out: *mut *mut tl_manager,
) -> tl_result {
    // SAFETY: NULL or NUL-terminated per the contract.
    create(out, || unsafe { from_config_text(config, None) })
}

/// The manager a configuration text describes, on `clock` (the system clock when `None`):
/// the one way `tl_manager_from_config` and `tl_manager_from_config_on_clock` build.
///
/// # Safety
/// `config` is NULL or a NUL-terminated string valid for the duration of the call.
pub(crate) unsafe fn from_config_text(
    config: *const c_char,
    clock: Option<Arc<dyn Clock>>,
) -> Result<(Manager, Arc<Gate>), Failure> {
    // SAFETY: NULL or NUL-terminated per this function's contract.
    let config = unsafe { str_arg(config, "config") }?;
    let mut builder = ManagerConfig::parse(config)?.builder()?;
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    Ok((builder.build(), Gate::new()))
}

/// Creates a manager around a token source written in C (and optionally a store written in
/// C). See `tl_source_callbacks` and `tl_store_callbacks` for the callback rules: they run on
/// tokenlease's background threads.
///
/// - `source`: required; its `fetch` callback is required.
/// - `store`: NULL for an in-memory cache only; otherwise `load` and `save` are required.
/// - `key`: the store key (NUL-terminated UTF-8); NULL means `"default"`.
/// - `policy_json`: NULL for the default policy, or a JSON object with the fields of the
///   configuration's `policy` section, e.g. `{"advisory_min_s": 1, "waiter_timeout_ms": 5000}`.
///
/// On failure `*out` is NULL and the detail is available from
/// `tl_manager_last_error(NULL, ...)` on the same thread.
///
/// Ownership: both callback structs are copied; `key` and `policy_json` are only read during
/// the call. The userdata pointers must stay valid until `tl_manager_free` returns. The caller
/// owns the returned handle. Thread-safety: callable from any thread.
///
/// # Safety
/// `source` must be NULL or a valid `tl_source_callbacks`; `store` NULL or a valid
/// `tl_store_callbacks`; `key` and `policy_json` NULL or NUL-terminated; `out` NULL or
/// writable. The callbacks must behave as documented on their structs.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_new_custom(
    source: *const tl_source_callbacks,
    store: *const tl_store_callbacks,
    key: *const c_char,
    policy_json: *const c_char,
    out: *mut *mut tl_manager,
) -> tl_result {
    create(out, || {
        // SAFETY: NULL or a valid struct per the contract.
        let Some(source) = (unsafe { source.as_ref() }) else {
            return Err(Failure::null("source"));
        };
        let gate = Gate::new();
        let source =
            CSource::new(source, gate.clone()).ok_or_else(|| Failure::null("source->fetch"))?;
        let key = if key.is_null() {
            "default"
        } else {
            // SAFETY: NUL-terminated per the contract.
            unsafe { str_arg(key, "key") }?
        };
        let mut builder = Manager::builder(BlockingSourceAdapter::new(source)).key(key);
        if !policy_json.is_null() {
            // SAFETY: NUL-terminated per the contract.
            let text = unsafe { str_arg(policy_json, "policy_json") }?;
            let config: tl_core::config::PolicyConfig =
                serde_json::from_str(text).map_err(|err| {
                    Failure::new(tl_result::TL_CONFIGURATION, format!("policy_json: {err}"))
                })?;
            builder = builder.policy(config.to_policy()?);
        }
        // SAFETY: NULL or a valid struct per the contract.
        if let Some(store) = unsafe { store.as_ref() } {
            let store = CStore::new(store, gate.clone())
                .ok_or_else(|| Failure::null("store->load or store->save"))?;
            builder = builder.store(Arc::new(BlockingStoreAdapter::new(store)));
        }
        Ok((builder.build(), gate))
    })
}

/// Copies a valid token value into `buf`, NUL-terminated. A fresh cached token is a
/// lock-free read with no allocation (tens of nanoseconds); when the cache is empty or the
/// token is past its mandatory refresh point, the call blocks until the one shared refresh
/// finishes (at most the policy's waiter timeout).
///
/// `*written` receives the value's length (without the terminator); with
/// `TL_BUFFER_TOO_SMALL` it receives the needed buffer size (terminator included) and no
/// part of the token is written. `buf` may be NULL when `len` is 0 (a size query).
/// `generation` may be NULL; otherwise it receives the token's generation (for
/// `tl_manager_invalidate` / `tl_manager_token_after_rejection`).
/// Errors keep their kind (`TL_INVALID_CREDENTIALS`, `TL_EXPIRED`, `TL_CLOSED`...), with the
/// detail in `tl_manager_last_error`.
///
/// Ownership: the caller owns `buf`; wipe it when done. Thread-safety: callable from any
/// thread concurrently; not from inside a tokenlease callback when it would block.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `buf` NULL or writable for `len` bytes; `written`
/// NULL or writable; `generation` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_token(
    mgr: *const tl_manager,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
    generation: *mut u64,
) -> tl_result {
    manager_call(mgr, |mgr| {
        if written.is_null() {
            return Err(Failure::null("written"));
        }
        if buf.is_null() && len > 0 {
            return Err(Failure::null("buf"));
        }
        let token = mgr.manager.token_blocking()?;
        // SAFETY: buffer, `written` and `generation` per the contract.
        unsafe {
            copy_out(token.value().expose().as_bytes(), buf, len, written)?;
            write_opt(generation, token.generation());
        }
        Ok(())
    })
}

/// Gets a valid token as a `tl_token` handle (same waiting rules as `tl_manager_token`).
///
/// On success `*out` receives a handle the caller owns and releases with `tl_token_free`;
/// on failure `*out` is NULL. The handle keeps its own copy of the value: it stays valid
/// after refreshes, `tl_manager_close` and `tl_manager_free`.
///
/// Thread-safety: callable from any thread concurrently.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_token_handle(
    mgr: *const tl_manager,
    out: *mut *mut tl_token,
) -> tl_result {
    manager_call(mgr, |mgr| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let token = mgr.manager.token_blocking()?.into_arc();
        let handle = Box::into_raw(Box::new(tl_token::new(token)));
        // SAFETY: as above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Discards the cached token if its generation is still `generation` (call it when a server
/// rejected that token). A late rejection of an older token never discards a newer one.
/// `*invalidated` (may be NULL) tells whether the token was discarded. Never blocks; the
/// next token call fetches a new token.
///
/// Thread-safety: callable from any thread concurrently.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `invalidated` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_invalidate(
    mgr: *const tl_manager,
    generation: u64,
    invalidated: *mut bool,
) -> tl_result {
    manager_call(mgr, |mgr| {
        let done = mgr.manager.invalidate_generation(generation);
        // SAFETY: NULL or writable per the contract.
        unsafe { write_opt(invalidated, done) };
        Ok(())
    })
}

/// Retry-on-expiry for C: the server rejected the token of generation
/// `rejected_generation`, so invalidate exactly that token, wait for the one shared refresh
/// (concurrent callers reporting the same rejection cause a single refresh) and copy the new
/// token like `tl_manager_token`. Retry the request once with it; do not retry
/// non-replayable requests.
///
/// Buffer rules, ownership and thread-safety as for `tl_manager_token`.
///
/// # Safety
/// As for `tl_manager_token`.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_token_after_rejection(
    mgr: *const tl_manager,
    rejected_generation: u64,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
    generation: *mut u64,
) -> tl_result {
    manager_call(mgr, |mgr| {
        if written.is_null() {
            return Err(Failure::null("written"));
        }
        if buf.is_null() && len > 0 {
            return Err(Failure::null("buf"));
        }
        mgr.manager.invalidate_generation(rejected_generation);
        let token = mgr.manager.token_blocking()?;
        // SAFETY: buffer, `written` and `generation` per the contract.
        unsafe {
            copy_out(token.value().expose().as_bytes(), buf, len, written)?;
            write_opt(generation, token.generation());
        }
        Ok(())
    })
}

/// Logs out: revokes the token at the source, clears it from memory and the store. Memory and
/// store are cleared even when the source fails (its error is returned). The next token call
/// fetches a new token. Blocks until the source answered.
///
/// Thread-safety: callable from any thread; not from inside a tokenlease callback.
///
/// # Safety
/// `mgr` must be NULL or a live manager.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_revoke(mgr: *const tl_manager) -> tl_result {
    manager_call(mgr, |mgr| Ok(mgr.manager.revoke_blocking()?))
}

/// Where the cached token is in its life (the `state` of a `tl_status`). In C the type is a
/// `uint32_t`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tl_token_state {
    /// No token.
    TL_STATE_EMPTY = 0,
    /// Valid and before its refresh point.
    TL_STATE_FRESH = 1,
    /// In the advisory window: served, refreshed in the background.
    TL_STATE_STALE = 2,
    /// In the mandatory window: callers wait for a refresh.
    TL_STATE_MANDATORY = 3,
    /// Past expiry.
    TL_STATE_EXPIRED = 4,
}

/// Counters since the manager was created.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_counters {
    /// Calls to the source's primary grant (fetch).
    pub fetches: u64,
    /// Calls to the source's refresh.
    pub refreshes: u64,
    /// Source calls that failed.
    pub failures: u64,
    /// Tokens served past their mandatory point because refresh failed.
    pub served_stale: u64,
    /// Callers that waited for an in-flight refresh.
    pub waits: u64,
    /// Successful invalidations.
    pub invalidations: u64,
    /// Tokens adopted from the store.
    pub store_loads: u64,
    /// Store failures.
    pub store_errors: u64,
    /// Keep-alive requests for sliding sessions.
    pub keep_alives: u64,
    /// Events dropped because the event callback fell behind (bounded queue).
    pub events_dropped: u64,
    /// Store calls abandoned after the policy's `store_timeout_ms`.
    pub store_timeouts: u64,
    /// Source calls abandoned after the policy's `source_timeout_ms`.
    pub source_timeouts: u64,
}

/// A snapshot of a manager. Plain data, filled by `tl_manager_status`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_status {
    /// Token state now.
    pub state: tl_token_state,
    /// Generation of the cached token (0 when none).
    pub generation: u64,
    /// Wall-clock expiry of the cached token, ms since the Unix epoch (0 when none).
    pub expires_at_unix_ms: u64,
    /// When the last token was installed, ms since the Unix epoch (0 when never).
    pub last_refresh_unix_ms: u64,
    /// Kind of the last refresh failure, cleared by a success (`TL_OK` when none).
    pub last_error: tl_result,
    /// Whether a refresh is in flight.
    pub refreshing: bool,
    /// Counters.
    pub counters: tl_counters,
}

/// Fills `*out` with a snapshot of state, deadlines, last failure kind and counters. Never
/// blocks on a refresh.
///
/// Ownership: the caller owns `*out`. Thread-safety: callable from any thread concurrently.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_status(
    mgr: *const tl_manager,
    out: *mut tl_status,
) -> tl_result {
    manager_call(mgr, |mgr| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let status = mgr.manager.status();
        let counters = status.counters;
        let snapshot = tl_status {
            state: match status.state {
                TokenState::Empty => tl_token_state::TL_STATE_EMPTY,
                TokenState::Fresh => tl_token_state::TL_STATE_FRESH,
                TokenState::Stale => tl_token_state::TL_STATE_STALE,
                TokenState::Mandatory => tl_token_state::TL_STATE_MANDATORY,
                TokenState::Expired => tl_token_state::TL_STATE_EXPIRED,
            },
            generation: status.generation,
            expires_at_unix_ms: status.expires_at.map_or(0, unix_ms),
            last_refresh_unix_ms: status.last_refresh.map_or(0, unix_ms),
            last_error: status
                .last_error_kind
                .map_or(tl_result::TL_OK, tl_result::from_kind),
            refreshing: status.refreshing,
            counters: tl_counters {
                fetches: counters.fetches,
                refreshes: counters.refreshes,
                failures: counters.failures,
                served_stale: counters.served_stale,
                waits: counters.waits,
                invalidations: counters.invalidations,
                store_loads: counters.store_loads,
                store_errors: counters.store_errors,
                keep_alives: counters.keep_alives,
                events_dropped: counters.events_dropped,
                store_timeouts: counters.store_timeouts,
                source_timeouts: counters.source_timeouts,
            },
        };
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(snapshot) };
        Ok(())
    })
}

/// Registers the event callback (replacing any previous one); `callback` NULL removes it.
/// When this returns, the previous callback is not running and will not be called again, so
/// its userdata may be released.
///
/// The callback runs on the thread that caused the event, usually a tokenlease background
/// thread: keep it quick, never block in it, and never call `tl_manager_free` or
/// `tl_manager_set_event_callback` from it. `userdata` must be usable from any thread and stay
/// valid until the callback is replaced or the manager freed.
///
/// Thread-safety: callable from any thread (not from inside the event callback).
///
/// # Safety
/// `mgr` must be NULL or a live manager; `callback` NULL or a function that behaves as
/// documented.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_set_event_callback(
    mgr: *const tl_manager,
    callback: tl_event_callback,
    userdata: *mut c_void,
) -> tl_result {
    manager_call(mgr, |mgr| {
        refuse_inside_callback("tl_manager_set_event_callback")?;
        let callback: Option<unsafe extern "C" fn(*mut c_void, *const tl_event)> = callback;
        let replaced = mgr.events.set(
            callback.map(|callback| (callback, UserData(userdata))),
            std::time::Duration::from_millis(TL_FREE_WAIT_MS),
        );
        if replaced {
            Ok(())
        } else {
            Err(Failure::new(
                tl_result::TL_TIMEOUT,
                format!(
                    "the previous event callback was still running after {TL_FREE_WAIT_MS} ms; \
                     it is replaced before the next event, keep its userdata valid until it \
                     returns"
                ),
            ))
        }
    })
}

/// Waits until the events queued so far (by every manager of the process) were passed to
/// their event callbacks, at most `timeout_ms` milliseconds. Events are delivered on
/// tokenlease's event thread, after the call that caused them returns; call this before
/// reading what a callback recorded. Returns `TL_OK`, `TL_TIMEOUT`, or `TL_USAGE` from inside
/// an event callback (it would wait for itself).
///
/// Thread-safety: callable from any thread.
///
/// # Safety
/// `mgr` must be NULL or a live manager.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_flush_events(
    mgr: *const tl_manager,
    timeout_ms: u64,
) -> tl_result {
    manager_call(mgr, |mgr| {
        refuse_inside_callback("tl_manager_flush_events")?;
        if mgr
            .manager
            .flush_events(std::time::Duration::from_millis(timeout_ms))
        {
            Ok(())
        } else {
            Err(Failure::new(
                tl_result::TL_TIMEOUT,
                format!("events were not all delivered within {timeout_ms} ms"),
            ))
        }
    })
}

/// Closes the manager: stops its background refreshes and drops the cached token; later
/// token calls fail with `TL_CLOSED`. Idempotent. The handle must still be freed with
/// `tl_manager_free`.
///
/// Thread-safety: callable from any thread concurrently.
///
/// # Safety
/// `mgr` must be NULL or a live manager.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_close(mgr: *const tl_manager) -> tl_result {
    manager_call(mgr, |mgr| {
        mgr.manager.close();
        Ok(())
    })
}

/// Copies the detail of the most recent failure on this handle (from any thread) into `buf`,
/// NUL-terminated, e.g. `"invalid_credentials: token endpoint answered 401 invalid_client"`.
/// An empty string when nothing failed yet. With `mgr` NULL, copies the detail of the last
/// failed `tl_manager_from_config` / `tl_manager_from_config_on_clock` /
/// `tl_manager_new_custom` call on the calling thread.
/// Never contains a token value.
///
/// Buffer rules as for `tl_result_message`. Ownership: the caller owns `buf`.
/// Thread-safety: callable from any thread.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `buf` NULL or writable for `len` bytes; `written`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_last_error(
    mgr: *const tl_manager,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> tl_result {
    ffi_boundary(|| {
        // SAFETY: NULL or a live manager per the contract.
        let detail = match unsafe { mgr.as_ref() } {
            Some(mgr) => mgr.last_error.lock().clone(),
            None => CREATE_ERROR.with(|slot| slot.borrow().clone()),
        };
        // SAFETY: buffer and `written` per the contract.
        match unsafe { copy_out(detail.as_bytes(), buf, len, written) } {
            Ok(()) => tl_result::TL_OK,
            Err(failure) => failure.code,
        }
    })
}

/// Copies the manager's store key into `buf`, NUL-terminated (buffer rules as for
/// `tl_result_message`).
///
/// Thread-safety: callable from any thread.
///
/// # Safety
/// `mgr` must be NULL or a live manager; `buf` NULL or writable for `len` bytes; `written`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_key(
    mgr: *const tl_manager,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> tl_result {
    manager_call(mgr, |mgr| {
        // SAFETY: buffer and `written` per the contract.
        unsafe { copy_out(mgr.manager.key().as_bytes(), buf, len, written) }
    })
}

/// Longest `tl_manager_free` waits for C callbacks of the manager that are running when it
/// is called (and `tl_manager_set_event_callback` for the previous event callback).
pub const TL_FREE_WAIT_MS: u64 = 5000;

/// Closes and frees a manager. NULL is a no-op (`TL_OK`). No C callback of this manager starts
/// after the call begins; callbacks running at that moment are waited for, at most
/// `TL_FREE_WAIT_MS` milliseconds.
///
/// Returns `TL_OK` when none is running any more: the userdata of its source, store and
/// event callback may be released. Returns `TL_TIMEOUT` when a callback was still running
/// after the wait (a hung callback): the handle is freed all the same, but that callback's
/// userdata must stay valid until the callback returns; its result is discarded. Returns
/// `TL_USAGE` without freeing anything when called from inside a tokenlease callback, where
/// it would wait for itself. `tl_token` handles obtained from the manager stay valid.
///
/// Ownership: takes ownership of `mgr` (except with `TL_USAGE`). Thread-safety: must be the
/// last call on `mgr`, with no other call on it running on any thread.
///
/// # Safety
/// `mgr` must be NULL or a manager from a tokenlease constructor, not freed before.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_free(mgr: *mut tl_manager) -> tl_result {
    ffi_boundary(|| {
        if mgr.is_null() {
            return tl_result::TL_OK;
        }
        if let Err(failure) = refuse_inside_callback("tl_manager_free") {
            // SAFETY: `mgr` is live per the contract; it is not freed on this path.
            return unsafe { &*mgr }.record(failure);
        }
        // SAFETY: `mgr` came from Box::into_raw in `create`; ownership returns here exactly
        // once per the contract.
        let handle = unsafe { Box::from_raw(mgr) };
        let all_returned = handle.shutdown();
        drop(handle);
        if all_returned {
            tl_result::TL_OK
        } else {
            tl_result::TL_TIMEOUT
        }
    })
}
