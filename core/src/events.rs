//! What happened, for applications: events to listeners and counters in the status.

use std::fmt;
use std::time::SystemTime;

use crate::error::ErrorKind;

/// Why a refresh started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefreshReason {
    /// No token yet.
    Initial,
    /// The background timer reached the refresh point (or a backoff retry).
    Scheduled,
    /// A read found the token in its advisory window.
    Stale,
    /// A caller needed a token and the cached one was past its mandatory point or expired.
    Mandatory,
    /// The token was invalidated (e.g. a 401 from the resource server).
    Invalidated,
}

/// One thing a manager did. Never carries a token value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A call to the source started.
    RefreshStarted {
        /// Why.
        reason: RefreshReason,
    },
    /// A new token is installed.
    RefreshSucceeded {
        /// Its generation.
        generation: u64,
        /// Its wall-clock expiry.
        expires_at: SystemTime,
        /// Whether it came from the store rather than the source.
        from_store: bool,
    },
    /// The source failed.
    RefreshFailed {
        /// The error kind.
        kind: ErrorKind,
        /// The error message (no secrets).
        message: String,
        /// Failures in a row, this one included.
        consecutive_failures: u32,
        /// When the next attempt may happen.
        next_retry_at: Option<SystemTime>,
    },
    /// A caller got a token past its mandatory point because no refresh succeeded.
    ServedStale {
        /// Generation served.
        generation: u64,
        /// Its wall-clock expiry.
        expires_at: SystemTime,
    },
    /// A sliding session was kept alive (its idle timeout restarted).
    KeptAlive {
        /// Generation kept alive.
        generation: u64,
    },
    /// A token was invalidated (generation-guarded).
    Invalidated {
        /// Generation discarded.
        generation: u64,
    },
    /// The token was revoked and removed from memory and store.
    Revoked {
        /// Generation revoked, if a token was held.
        generation: Option<u64>,
    },
    /// The cached token expired without a replacement.
    Expired {
        /// Generation that expired.
        generation: u64,
    },
    /// The cross-process refresh lease was taken.
    LeaseAcquired {
        /// How long we waited for a sibling to release it.
        waited: std::time::Duration,
    },
    /// The store failed; the manager carried on from memory and the source.
    StoreError {
        /// What the store was doing: "load", "save", "delete", "lease" or "release".
        operation: &'static str,
        /// The error message.
        message: String,
    },
}

/// Receives events. Called synchronously on the thread that caused the event (often the
/// background thread): keep it quick and never block. A panic is caught and ignored.
pub trait EventListener: Send + Sync + 'static {
    /// Called with the manager's key and the event.
    fn on_event(&self, key: &str, event: &Event);
}

impl<F> EventListener for F
where
    F: Fn(&str, &Event) + Send + Sync + 'static,
{
    fn on_event(&self, key: &str, event: &Event) {
        self(key, event)
    }
}

/// Counters since the manager was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls to `Source::fetch`.
    pub fetches: u64,
    /// Calls to `Source::refresh`.
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
}

/// Where the cached token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenState {
    /// No token.
    Empty,
    /// Valid and before its refresh point.
    Fresh,
    /// In the advisory window: served, refreshed in the background.
    Stale,
    /// In the mandatory window: callers wait for a refresh.
    Mandatory,
    /// Past expiry.
    Expired,
}

impl TokenState {
    /// Stable lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            TokenState::Empty => "empty",
            TokenState::Fresh => "fresh",
            TokenState::Stale => "stale",
            TokenState::Mandatory => "mandatory",
            TokenState::Expired => "expired",
        }
    }
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A snapshot of a manager.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Token state now.
    pub state: TokenState,
    /// Wall-clock expiry of the cached token.
    pub expires_at: Option<SystemTime>,
    /// Generation of the cached token (0 when none).
    pub generation: u64,
    /// When the last token was installed.
    pub last_refresh: Option<SystemTime>,
    /// Kind of the last failure, cleared by a success.
    pub last_error_kind: Option<ErrorKind>,
    /// Message of the last failure, cleared by a success.
    pub last_error_message: Option<String>,
    /// Whether a refresh is in flight.
    pub refreshing: bool,
    /// Counters.
    pub counters: Counters,
}
