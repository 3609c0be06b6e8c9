//! [`ManagerStatus`]: a manager's state, deadlines, last error and counters.

use crate::errors::ErrorKind;
use crate::token::unix_ms;

/// Where the cached token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TokenState {
    /// No token.
    Empty,
    /// Valid and before its refresh point.
    Fresh,
    /// Advisory window: served, refreshed in the background.
    Stale,
    /// Mandatory window: callers wait for the refresh.
    Mandatory,
    /// Past expiry.
    Expired,
}

impl From<tokenlease::TokenState> for TokenState {
    fn from(state: tokenlease::TokenState) -> Self {
        match state {
            tokenlease::TokenState::Empty => Self::Empty,
            tokenlease::TokenState::Fresh => Self::Fresh,
            tokenlease::TokenState::Stale => Self::Stale,
            tokenlease::TokenState::Mandatory => Self::Mandatory,
            tokenlease::TokenState::Expired => Self::Expired,
        }
    }
}

/// Counters since the manager was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct ManagerCounters {
    /// Calls to the source's fetch.
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
    /// Events dropped because listeners fell behind (bounded queue).
    pub events_dropped: u64,
    /// Store calls abandoned after the store timeout.
    pub store_timeouts: u64,
    /// Source calls abandoned after the source timeout.
    pub source_timeouts: u64,
}

/// A snapshot of a manager.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ManagerStatus {
    /// Token state now.
    pub state: TokenState,
    /// Wall-clock expiry of the cached token, ms since the Unix epoch.
    pub expires_at_unix_ms: Option<u64>,
    /// Generation of the cached token (0 when none).
    pub generation: u64,
    /// When the last token was installed, ms since the Unix epoch.
    pub last_refresh_unix_ms: Option<u64>,
    /// Kind of the last failure, cleared by a success.
    pub last_error_kind: Option<ErrorKind>,
    /// Message of the last failure, cleared by a success.
    pub last_error_message: Option<String>,
    /// Whether a refresh is in flight.
    pub refreshing: bool,
    /// Counters.
    pub counters: ManagerCounters,
}

impl From<tokenlease::Status> for ManagerStatus {
    fn from(status: tokenlease::Status) -> Self {
        let c = status.counters;
        Self {
            state: status.state.into(),
            expires_at_unix_ms: status.expires_at.map(unix_ms),
            generation: status.generation,
            last_refresh_unix_ms: status.last_refresh.map(unix_ms),
            last_error_kind: status.last_error_kind.map(Into::into),
            last_error_message: status.last_error_message,
            refreshing: status.refreshing,
            counters: ManagerCounters {
                fetches: c.fetches,
                refreshes: c.refreshes,
                failures: c.failures,
                served_stale: c.served_stale,
                waits: c.waits,
                invalidations: c.invalidations,
                store_loads: c.store_loads,
                store_errors: c.store_errors,
                keep_alives: c.keep_alives,
                events_dropped: c.events_dropped,
                store_timeouts: c.store_timeouts,
                source_timeouts: c.source_timeouts,
            },
        }
    }
}
