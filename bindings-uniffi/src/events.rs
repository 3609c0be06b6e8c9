//! Events: [`TokenEvent`] and [`RefreshReason`], and the foreign [`EventListener`] that
//! receives them.

use std::sync::Arc;

use tokenlease::Event as CoreEvent;

use crate::errors::ErrorKind;
use crate::token::unix_ms;

/// Why a refresh started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RefreshReason {
    /// No token yet.
    Initial,
    /// The background timer (or a backoff retry).
    Scheduled,
    /// A read found the token in its advisory window.
    Stale,
    /// A caller needed a token past its mandatory point.
    Mandatory,
    /// The token was invalidated.
    Invalidated,
    /// A reason this binding does not know yet.
    Other,
}

impl From<tokenlease::RefreshReason> for RefreshReason {
    fn from(reason: tokenlease::RefreshReason) -> Self {
        match reason {
            tokenlease::RefreshReason::Initial => Self::Initial,
            tokenlease::RefreshReason::Scheduled => Self::Scheduled,
            tokenlease::RefreshReason::Stale => Self::Stale,
            tokenlease::RefreshReason::Mandatory => Self::Mandatory,
            tokenlease::RefreshReason::Invalidated => Self::Invalidated,
            _ => Self::Other,
        }
    }
}

/// One thing a manager did. Never carries a token value.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TokenEvent {
    /// A call to the source started.
    RefreshStarted {
        /// Why.
        reason: RefreshReason,
    },
    /// A new token is installed.
    RefreshSucceeded {
        /// Its generation.
        generation: u64,
        /// Its wall-clock expiry, ms since the Unix epoch.
        expires_at_unix_ms: u64,
        /// Whether it came from the store.
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
        /// When the next attempt may happen, ms since the Unix epoch.
        next_retry_at_unix_ms: Option<u64>,
    },
    /// A token past its mandatory point was served because no refresh succeeded.
    ServedStale {
        /// Generation served.
        generation: u64,
        /// Its wall-clock expiry, ms since the Unix epoch.
        expires_at_unix_ms: u64,
    },
    /// A token was invalidated.
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
    /// The store failed; the manager carried on.
    StoreError {
        /// "load", "save" or "delete".
        operation: String,
        /// The error message.
        message: String,
    },
    /// An event this binding does not know yet (its debug form; never a token).
    Other {
        /// Debug rendering of the core event.
        description: String,
    },
}

impl From<&CoreEvent> for TokenEvent {
    fn from(event: &CoreEvent) -> Self {
        match event {
            CoreEvent::RefreshStarted { reason } => Self::RefreshStarted {
                reason: (*reason).into(),
            },
            CoreEvent::RefreshSucceeded {
                generation,
                expires_at,
                from_store,
            } => Self::RefreshSucceeded {
                generation: *generation,
                expires_at_unix_ms: unix_ms(*expires_at),
                from_store: *from_store,
            },
            CoreEvent::RefreshFailed {
                kind,
                message,
                consecutive_failures,
                next_retry_at,
            } => Self::RefreshFailed {
                kind: (*kind).into(),
                message: message.clone(),
                consecutive_failures: *consecutive_failures,
                next_retry_at_unix_ms: next_retry_at.map(unix_ms),
            },
            CoreEvent::ServedStale {
                generation,
                expires_at,
            } => Self::ServedStale {
                generation: *generation,
                expires_at_unix_ms: unix_ms(*expires_at),
            },
            CoreEvent::Invalidated { generation } => Self::Invalidated {
                generation: *generation,
            },
            CoreEvent::Revoked { generation } => Self::Revoked {
                generation: *generation,
            },
            CoreEvent::Expired { generation } => Self::Expired {
                generation: *generation,
            },
            CoreEvent::StoreError { operation, message } => Self::StoreError {
                operation: (*operation).to_owned(),
                message: message.clone(),
            },
            other => Self::Other {
                description: format!("{other:?}"),
            },
        }
    }
}

/// Receives a manager's events. Called synchronously on tokenlease's background thread:
/// keep it quick and never block or call back into the manager's blocking API.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// One event of the manager stored under `key`.
    fn on_event(&self, key: String, event: TokenEvent);
}

pub(crate) struct ForeignListener(pub(crate) Arc<dyn EventListener>);

impl tokenlease::EventListener for ForeignListener {
    fn on_event(&self, key: &str, event: &CoreEvent) {
        self.0.on_event(key.to_owned(), event.into());
    }
}
