//! Events forwarded to a C callback.

use std::ffi::{c_char, c_void, CString};

use parking_lot::RwLock;
use tl_core::{Event, EventListener, RefreshReason};

use crate::boundary::{unix_ms, UserData};
use crate::result::tl_result;

/// What happened (the `kind` of a [`tl_event`]). In C the type is a `uint32_t`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tl_event_kind {
    /// An event kind this version of the C ABI does not know yet.
    TL_EVENT_OTHER = 0,
    /// A call to the source started (`reason` says why).
    TL_EVENT_REFRESH_STARTED = 1,
    /// A new token is installed (`generation`, `expires_at_unix_ms`, `from_store`).
    TL_EVENT_REFRESH_SUCCEEDED = 2,
    /// The source failed (`error`, `message`, `consecutive_failures`).
    TL_EVENT_REFRESH_FAILED = 3,
    /// A caller got a token past its mandatory point because no refresh succeeded.
    TL_EVENT_SERVED_STALE = 4,
    /// A token was invalidated (`generation`).
    TL_EVENT_INVALIDATED = 5,
    /// The token was revoked (`generation`, 0 when none was held).
    TL_EVENT_REVOKED = 6,
    /// The cached token expired without a replacement (`generation`).
    TL_EVENT_EXPIRED = 7,
    /// The store failed (`message`); the manager carried on.
    TL_EVENT_STORE_ERROR = 8,
}

/// Why a refresh started (the `reason` of a `TL_EVENT_REFRESH_STARTED` event).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tl_refresh_reason {
    /// Not a refresh-started event, or a reason this version does not know.
    TL_REASON_NONE = 0,
    /// No token yet.
    TL_REASON_INITIAL = 1,
    /// The background timer reached the refresh point (or a backoff retry).
    TL_REASON_SCHEDULED = 2,
    /// A read found the token in its advisory window.
    TL_REASON_STALE = 3,
    /// A caller needed a token past the mandatory point.
    TL_REASON_MANDATORY = 4,
    /// The token was invalidated.
    TL_REASON_INVALIDATED = 5,
}

/// One event. Plain data; never contains a token value.
///
/// Lifetime: the struct and the strings it points to are valid only during the callback
/// call; copy what you need to keep.
#[repr(C)]
#[derive(Debug)]
pub struct tl_event {
    /// What happened.
    pub kind: tl_event_kind,
    /// Why a refresh started (`TL_REASON_NONE` for other kinds).
    pub reason: tl_refresh_reason,
    /// The token generation concerned (0 when not applicable).
    pub generation: u64,
    /// Wall-clock expiry of the token concerned, ms since the Unix epoch (0 when not
    /// applicable).
    pub expires_at_unix_ms: u64,
    /// The error kind of a `TL_EVENT_REFRESH_FAILED` event (`TL_OK` otherwise).
    pub error: tl_result,
    /// Failures in a row, for `TL_EVENT_REFRESH_FAILED`.
    pub consecutive_failures: u32,
    /// For `TL_EVENT_REFRESH_SUCCEEDED`: the token came from the store, not the source.
    pub from_store: bool,
    /// The manager's key, NUL-terminated. Never NULL.
    pub key: *const c_char,
    /// Error detail for `TL_EVENT_REFRESH_FAILED` and `TL_EVENT_STORE_ERROR`, NUL-terminated;
    /// NULL for other kinds. Never contains a secret.
    pub message: *const c_char,
}

/// An event callback. Called on tokenlease's event thread (`tokenlease-events`, one per
/// process, never the thread that refreshes tokens), one event at a time and in order. A slow
/// callback delays later events, never a refresh; when events pile up past the queue bound
/// they are dropped and counted (`tl_status.counters.events_dropped`). `tl_manager_free` and
/// `tl_manager_set_event_callback` return `TL_USAGE` from inside it. `event` is valid only
/// during the call.
pub type tl_event_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, event: *const tl_event)>;

/// The currently registered callback of one manager.
#[derive(Debug, Default)]
pub(crate) struct EventSlot {
    callback: RwLock<Option<(unsafe extern "C" fn(*mut c_void, *const tl_event), UserData)>>,
    /// A replacement made while a callback hung; applied before the next event.
    replacement: parking_lot::Mutex<Option<Option<EventCallback>>>,
}

type EventCallback = (unsafe extern "C" fn(*mut c_void, *const tl_event), UserData);

impl EventSlot {
    /// Replaces the callback. Waits, at most `wait`, for a callback running now to return,
    /// so that afterwards the old callback and userdata are never used again; `false` when
    /// it was still running (the replacement is then made without waiting: the old
    /// userdata must stay valid until that call returns).
    pub(crate) fn set(
        &self,
        callback: Option<(unsafe extern "C" fn(*mut c_void, *const tl_event), UserData)>,
        wait: std::time::Duration,
    ) -> bool {
        if let Some(mut slot) = self.callback.try_write_for(wait) {
            *slot = callback;
            return true;
        }
        *self.replacement.lock() = Some(callback);
        false
    }
}

/// The one listener registered with the core manager; forwards to the slot.
pub(crate) struct CListener {
    pub(crate) slot: std::sync::Arc<EventSlot>,
    pub(crate) key: CString,
}

impl EventListener for CListener {
    fn on_event(&self, _key: &str, event: &Event) {
        // A recursive read lock: an event raised on a thread that already runs a callback
        // (e.g. the callback calls tl_manager_invalidate) must not deadlock on a waiting writer.
        if let Some(replacement) = self.slot.replacement.lock().take() {
            *self.slot.callback.write() = replacement;
        }
        let guard = self.slot.callback.read_recursive();
        let Some((callback, userdata)) = *guard else {
            return;
        };
        let _scope = crate::boundary::CallbackScope::enter();
        let mut message_holder: Option<CString> = None;
        let mut out = tl_event {
            kind: tl_event_kind::TL_EVENT_OTHER,
            reason: tl_refresh_reason::TL_REASON_NONE,
            generation: 0,
            expires_at_unix_ms: 0,
            error: tl_result::TL_OK,
            consecutive_failures: 0,
            from_store: false,
            key: self.key.as_ptr(),
            message: std::ptr::null(),
        };
        match event {
            Event::RefreshStarted { reason } => {
                out.kind = tl_event_kind::TL_EVENT_REFRESH_STARTED;
                out.reason = match reason {
                    RefreshReason::Initial => tl_refresh_reason::TL_REASON_INITIAL,
                    RefreshReason::Scheduled => tl_refresh_reason::TL_REASON_SCHEDULED,
                    RefreshReason::Stale => tl_refresh_reason::TL_REASON_STALE,
                    RefreshReason::Mandatory => tl_refresh_reason::TL_REASON_MANDATORY,
                    RefreshReason::Invalidated => tl_refresh_reason::TL_REASON_INVALIDATED,
                    _ => tl_refresh_reason::TL_REASON_NONE,
                };
            }
            Event::RefreshSucceeded {
                generation,
                expires_at,
                from_store,
            } => {
                out.kind = tl_event_kind::TL_EVENT_REFRESH_SUCCEEDED;
                out.generation = *generation;
                out.expires_at_unix_ms = unix_ms(*expires_at);
                out.from_store = *from_store;
            }
            Event::RefreshFailed {
                kind,
                message,
                consecutive_failures,
                ..
            } => {
                out.kind = tl_event_kind::TL_EVENT_REFRESH_FAILED;
                out.error = tl_result::from_kind(*kind);
                out.consecutive_failures = *consecutive_failures;
                message_holder = Some(c_text(message));
            }
            Event::ServedStale {
                generation,
                expires_at,
            } => {
                out.kind = tl_event_kind::TL_EVENT_SERVED_STALE;
                out.generation = *generation;
                out.expires_at_unix_ms = unix_ms(*expires_at);
            }
            Event::Invalidated { generation } => {
                out.kind = tl_event_kind::TL_EVENT_INVALIDATED;
                out.generation = *generation;
            }
            Event::Revoked { generation } => {
                out.kind = tl_event_kind::TL_EVENT_REVOKED;
                out.generation = generation.unwrap_or(0);
            }
            Event::Expired { generation } => {
                out.kind = tl_event_kind::TL_EVENT_EXPIRED;
                out.generation = *generation;
            }
            Event::StoreError { operation, message } => {
                out.kind = tl_event_kind::TL_EVENT_STORE_ERROR;
                message_holder = Some(c_text(&format!("store {operation}: {message}")));
            }
            _ => {}
        }
        if let Some(message) = &message_holder {
            out.message = message.as_ptr();
        }
        // SAFETY: the callback and userdata were registered together through
        // tl_manager_set_event_callback, whose contract makes them callable from any thread
        // until replaced; the read guard keeps them from being replaced during the call.
        // `out` and the strings it points to outlive the call.
        unsafe { callback(userdata.0, &out) };
    }
}

/// A C string of `text`, with any interior NUL replaced (messages never contain one in
/// practice).
pub(crate) fn c_text(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).unwrap_or_default()
}
