//! Kotlin and Swift bindings of tokenlease through UniFFI (proc-macros, library mode).
//!
//! This crate converts types and errors and nothing else: every lifecycle decision (cache,
//! single-flight, background refresh, retry, persistence) is made by [`tokenlease::Manager`].
//! The Kotlin and Swift sources are generated from the built library by this crate's
//! `uniffi-bindgen` binary (see `docs/mobile.md` and `scripts/test-kotlin`, `scripts/test-swift`).
//!
//! Exported:
//! - [`NativeTokenManager`], built from the shared JSON/TOML config
//!   ([`NativeTokenManager::from_config`]) or from foreign implementations of [`TokenSource`]
//!   and [`TokenStore`] ([`NativeTokenManager::with_source`]); `token()` is async (Kotlin
//!   `suspend`, Swift `async`) and runs on tokenlease's one background runtime,
//!   `token_blocking()` blocks the calling thread. Apps use the small hand-written
//!   `TokenManager` class of each language, which wraps it and adds the cached-read fast path
//!   (see [`NativeTokenManager::cached_generation`] and [`tokenlease_uniffi_fast_generation`]).
//! - [`TokenleaseError`]: one variant per [`tokenlease::ErrorKind`], in the same order (so
//!   the variant's position is the stable code), each carrying a message without secrets.
//! - Foreign traits [`TokenSource`] (or [`RefreshingTokenSource`], which also refreshes and
//!   revokes), [`TokenStore`] and [`EventListener`]; foreign code picks the error kind of a
//!   failure by throwing the matching `TokenleaseError` variant.
//! - Token values are core's [`SecretString`], mapped to a hand-written never-printing
//!   `SecretString` class/struct in Kotlin and Swift.
//! - [`CancelSignal`] for [`NativeTokenManager::token_cancellable`] (Swift task cancellation).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokenlease::{
    BlockingSourceAdapter, BlockingStoreAdapter, Error as CoreError, ErrorKind as CoreKind,
    Event as CoreEvent, Manager, SecretString, Token, TokenRecord,
};

uniffi::setup_scaffolding!();

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// A tokenlease failure. One variant per core error kind, in the order of the stable codes
/// (1 = `InvalidCredentials` ... 15 = `Cancelled`). `reason` never contains a token value.
///
/// Foreign sources, stores and listeners throw a variant of this type to choose the kind
/// of their failure (e.g. `TokenleaseException.Transient` in Kotlin is retried with backoff,
/// `InvalidCredentials` surfaces at once); any other exception becomes `Internal`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum TokenleaseError {
    /// The client credentials were rejected. Terminal.
    #[error("invalid_credentials: {reason}")]
    InvalidCredentials {
        /// What happened.
        reason: String,
    },
    /// The grant (refresh token, authorization) is invalid or expired. Terminal.
    #[error("invalid_grant: {reason}")]
    InvalidGrant {
        /// What happened.
        reason: String,
    },
    /// The token or session was revoked. Terminal.
    #[error("revoked: {reason}")]
    Revoked {
        /// What happened.
        reason: String,
    },
    /// The cached token expired and no replacement could be obtained.
    #[error("expired: {reason}")]
    Expired {
        /// What happened.
        reason: String,
    },
    /// A temporary failure; retried with backoff.
    #[error("transient: {reason}")]
    Transient {
        /// What happened.
        reason: String,
    },
    /// The server asked to slow down.
    #[error("rate_limited: {reason}")]
    RateLimited {
        /// What happened.
        reason: String,
    },
    /// A request, or a wait for the in-flight refresh, took too long.
    #[error("timeout: {reason}")]
    Timeout {
        /// What happened.
        reason: String,
    },
    /// The configuration is invalid. Terminal.
    #[error("configuration: {reason}")]
    Configuration {
        /// What happened.
        reason: String,
    },
    /// The token store failed.
    #[error("store: {reason}")]
    Store {
        /// What happened.
        reason: String,
    },
    /// The manager was closed.
    #[error("closed: {reason}")]
    Closed {
        /// What happened.
        reason: String,
    },
    /// The resource server rejected the token.
    #[error("token_rejected: {reason}")]
    TokenRejected {
        /// What happened.
        reason: String,
    },
    /// The server answered something tokenlease could not understand.
    #[error("protocol: {reason}")]
    Protocol {
        /// What happened.
        reason: String,
    },
    /// The API was misused (e.g. a blocking call from inside a callback).
    #[error("usage: {reason}")]
    Usage {
        /// What happened.
        reason: String,
    },
    /// A bug, a panic, or an unexpected exception in a foreign callback.
    #[error("internal: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
    /// The operation was cancelled.
    #[error("cancelled: {reason}")]
    Cancelled {
        /// What happened.
        reason: String,
    },
}

impl TokenleaseError {
    /// The core kind of this error.
    pub fn kind(&self) -> CoreKind {
        match self {
            Self::InvalidCredentials { .. } => CoreKind::InvalidCredentials,
            Self::InvalidGrant { .. } => CoreKind::InvalidGrant,
            Self::Revoked { .. } => CoreKind::Revoked,
            Self::Expired { .. } => CoreKind::Expired,
            Self::Transient { .. } => CoreKind::Transient,
            Self::RateLimited { .. } => CoreKind::RateLimited,
            Self::Timeout { .. } => CoreKind::Timeout,
            Self::Configuration { .. } => CoreKind::Configuration,
            Self::Store { .. } => CoreKind::Store,
            Self::Closed { .. } => CoreKind::Closed,
            Self::TokenRejected { .. } => CoreKind::TokenRejected,
            Self::Protocol { .. } => CoreKind::Protocol,
            Self::Usage { .. } => CoreKind::Usage,
            Self::Internal { .. } => CoreKind::Internal,
            Self::Cancelled { .. } => CoreKind::Cancelled,
        }
    }

    /// The message (without the kind prefix).
    pub fn reason(&self) -> &str {
        match self {
            Self::InvalidCredentials { reason }
            | Self::InvalidGrant { reason }
            | Self::Revoked { reason }
            | Self::Expired { reason }
            | Self::Transient { reason }
            | Self::RateLimited { reason }
            | Self::Timeout { reason }
            | Self::Configuration { reason }
            | Self::Store { reason }
            | Self::Closed { reason }
            | Self::TokenRejected { reason }
            | Self::Protocol { reason }
            | Self::Usage { reason }
            | Self::Internal { reason }
            | Self::Cancelled { reason } => reason,
        }
    }

    fn from_kind(kind: CoreKind, reason: String) -> Self {
        match kind {
            CoreKind::InvalidCredentials => Self::InvalidCredentials { reason },
            CoreKind::InvalidGrant => Self::InvalidGrant { reason },
            CoreKind::Revoked => Self::Revoked { reason },
            CoreKind::Expired => Self::Expired { reason },
            CoreKind::Transient => Self::Transient { reason },
            CoreKind::RateLimited => Self::RateLimited { reason },
            CoreKind::Timeout => Self::Timeout { reason },
            CoreKind::Configuration => Self::Configuration { reason },
            CoreKind::Store => Self::Store { reason },
            CoreKind::Closed => Self::Closed { reason },
            CoreKind::TokenRejected => Self::TokenRejected { reason },
            CoreKind::Protocol => Self::Protocol { reason },
            CoreKind::Usage => Self::Usage { reason },
            CoreKind::Cancelled => Self::Cancelled { reason },
            // Internal, and any kind a newer core adds before this binding knows it.
            _ => Self::Internal { reason },
        }
    }
}

impl From<CoreError> for TokenleaseError {
    fn from(err: CoreError) -> Self {
        // The message plus its cause ("token expired (caused by transient: ...)"), without
        // the "kind: " prefix the variant already says. Core messages hold no secrets.
        let full = err.to_string();
        let prefix = format!("{}: ", err.kind());
        let reason = full.strip_prefix(&prefix).unwrap_or(&full).to_owned();
        Self::from_kind(err.kind(), reason)
    }
}

/// A foreign callback's error: its kind is kept, its text redacted like every foreign
/// message (core's `redact_foreign_text`).
impl From<TokenleaseError> for CoreError {
    fn from(err: TokenleaseError) -> Self {
        CoreError::new(err.kind(), tokenlease::redact_foreign_text(err.reason()))
    }
}

/// A foreign callback threw something other than a `TokenleaseError`.
impl From<uniffi::UnexpectedUniFFICallbackError> for TokenleaseError {
    fn from(err: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Internal {
            reason: format!(
                "a foreign callback failed unexpectedly: {}",
                tokenlease::redact_foreign_text(&err.reason)
            ),
        }
    }
}

type BindingResult<T> = std::result::Result<T, TokenleaseError>;

// ---------------------------------------------------------------------------------------
// Records and enums
// ---------------------------------------------------------------------------------------

/// The kind of an error, with the same stable numbers as every other binding
/// ([`error_kind_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ErrorKind {
    /// 1
    InvalidCredentials,
    /// 2
    InvalidGrant,
    /// 3
    Revoked,
    /// 4
    Expired,
    /// 5
    Transient,
    /// 6
    RateLimited,
    /// 7
    Timeout,
    /// 8
    Configuration,
    /// 9
    Store,
    /// 10
    Closed,
    /// 11
    TokenRejected,
    /// 12
    Protocol,
    /// 13
    Usage,
    /// 14
    Internal,
    /// 15
    Cancelled,
}

impl From<CoreKind> for ErrorKind {
    fn from(kind: CoreKind) -> Self {
        match kind {
            CoreKind::InvalidCredentials => Self::InvalidCredentials,
            CoreKind::InvalidGrant => Self::InvalidGrant,
            CoreKind::Revoked => Self::Revoked,
            CoreKind::Expired => Self::Expired,
            CoreKind::Transient => Self::Transient,
            CoreKind::RateLimited => Self::RateLimited,
            CoreKind::Timeout => Self::Timeout,
            CoreKind::Configuration => Self::Configuration,
            CoreKind::Store => Self::Store,
            CoreKind::Closed => Self::Closed,
            CoreKind::TokenRejected => Self::TokenRejected,
            CoreKind::Protocol => Self::Protocol,
            CoreKind::Usage => Self::Usage,
            CoreKind::Cancelled => Self::Cancelled,
            _ => Self::Internal,
        }
    }
}

impl From<ErrorKind> for CoreKind {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidCredentials => CoreKind::InvalidCredentials,
            ErrorKind::InvalidGrant => CoreKind::InvalidGrant,
            ErrorKind::Revoked => CoreKind::Revoked,
            ErrorKind::Expired => CoreKind::Expired,
            ErrorKind::Transient => CoreKind::Transient,
            ErrorKind::RateLimited => CoreKind::RateLimited,
            ErrorKind::Timeout => CoreKind::Timeout,
            ErrorKind::Configuration => CoreKind::Configuration,
            ErrorKind::Store => CoreKind::Store,
            ErrorKind::Closed => CoreKind::Closed,
            ErrorKind::TokenRejected => CoreKind::TokenRejected,
            ErrorKind::Protocol => CoreKind::Protocol,
            ErrorKind::Usage => CoreKind::Usage,
            ErrorKind::Internal => CoreKind::Internal,
            ErrorKind::Cancelled => CoreKind::Cancelled,
        }
    }
}

/// The stable number of an error kind (1..=15), the same in C, Python, Kotlin and Swift.
#[uniffi::export]
pub fn error_kind_code(kind: ErrorKind) -> u32 {
    CoreKind::from(kind).code()
}

/// The kind of an error (for `when`/`switch` over kinds rather than exception classes).
#[uniffi::export]
pub fn error_kind_of(error: TokenleaseError) -> ErrorKind {
    error.kind().into()
}

/// The short stable name of an error kind (`"invalid_credentials"`).
#[uniffi::export]
pub fn error_kind_name(kind: ErrorKind) -> String {
    CoreKind::from(kind).name().to_owned()
}

// Token values cross as core's own secret type (redacted `Debug`, zeroized on drop), which
// Kotlin and Swift map to their hand-written `SecretString` (uniffi.toml): generated Kotlin
// data classes and Swift structs print every field, so a plain `String` would leak the value
// whenever a `TokenInfo` or `FetchedToken` is logged.
uniffi::custom_type!(SecretString, String, {
    remote,
    lower: |secret| secret.expose().to_owned(),
    try_lift: |value| Ok(SecretString::new(value)),
});

/// A token handed to the application. `value` is the secret to put on the wire: keep it
/// out of logs.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TokenInfo {
    /// The secret token value.
    pub value: SecretString,
    /// Token type (`"Bearer"`).
    pub token_type: String,
    /// Wall-clock expiry, ms since the Unix epoch.
    pub expires_at_unix_ms: u64,
    /// Generation; pass it to `invalidate` when a server rejects this token.
    pub generation: u64,
}

impl From<&Token> for TokenInfo {
    fn from(token: &Token) -> Self {
        Self {
            value: token.value().clone(),
            token_type: token.token_type().to_owned(),
            expires_at_unix_ms: unix_ms(token.expires_at_wall()),
            generation: token.generation(),
        }
    }
}

/// What a foreign [`TokenSource`] returns.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FetchedToken {
    /// The secret token value.
    pub value: SecretString,
    /// Lifetime in ms, counted from the moment the source was called; 0 means unknown
    /// (the policy's default lifetime applies), as in the C ABI. Lifetimes over ten years
    /// are refused as `Protocol` errors.
    pub expires_in_ms: u64,
    /// Token type.
    #[uniffi(default = "Bearer")]
    pub token_type: String,
    /// A refresh token, when the server issued one (persisted by the store).
    #[uniffi(default = None)]
    pub refresh_token: Option<SecretString>,
}

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

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Foreign traits
// ---------------------------------------------------------------------------------------

/// A token source implemented in Kotlin or Swift. Called on tokenlease's blocking pool
/// (never on the caller's thread, never concurrently for one manager); it may block.
/// Throw a `TokenleaseError` variant to choose the failure's kind.
#[uniffi::export(with_foreign)]
pub trait TokenSource: Send + Sync {
    /// Obtains a new token.
    fn fetch(&self) -> BindingResult<FetchedToken>;
}

/// A [`TokenSource`] that also uses refresh tokens and can log out (implemented in Kotlin or
/// Swift). The manager calls `refresh` with the refresh token of the current token (the one
/// the last `fetch`/`refresh` returned, or the one a store or sibling process saved) instead
/// of `fetch` when it has one, and falls back to `fetch` when `refresh` fails with
/// `InvalidGrant`; a rotated refresh token is saved before the new token is handed out.
#[uniffi::export(with_foreign)]
pub trait RefreshingTokenSource: Send + Sync {
    /// Obtains a new token with the primary grant (login, client credentials, ...).
    fn fetch(&self) -> BindingResult<FetchedToken>;
    /// Obtains a new token with `refresh_token`.
    fn refresh(&self, refresh_token: SecretString) -> BindingResult<FetchedToken>;
    /// Revokes `token` at the server (logout); called by the manager's `revoke()`.
    fn revoke(&self, token: TokenInfo) -> BindingResult<()>;
}

/// A token store implemented in Kotlin or Swift, holding opaque JSON records by key
/// (the records contain token values: keep them private). Called on the blocking pool.
#[uniffi::export(with_foreign)]
pub trait TokenStore: Send + Sync {
    /// The record stored under `key`, or null/nil.
    fn load(&self, key: String) -> BindingResult<Option<String>>;
    /// Stores `record_json` under `key`, replacing what was there.
    fn save(&self, key: String, record_json: String) -> BindingResult<()>;
    /// Removes the record under `key` (no error when absent).
    fn delete(&self, key: String) -> BindingResult<()>;
}

/// Receives a manager's events. Called synchronously on tokenlease's background thread:
/// keep it quick and never block or call back into the manager's blocking API.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// One event of the manager stored under `key`.
    fn on_event(&self, key: String, event: TokenEvent);
}

enum ForeignSource {
    FetchOnly(Arc<dyn TokenSource>),
    Refreshing(Arc<dyn RefreshingTokenSource>),
}

impl fmt::Debug for ForeignSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FetchOnly(_) => "ForeignSource(fetch only)",
            Self::Refreshing(_) => "ForeignSource(refreshing)",
        })
    }
}

impl From<FetchedToken> for tokenlease::FetchedToken {
    fn from(fetched: FetchedToken) -> Self {
        let lifetime = match fetched.expires_in_ms {
            0 => tokenlease::Lifetime::Unknown,
            ms => tokenlease::Lifetime::ExpiresIn(std::time::Duration::from_millis(ms)),
        };
        let mut token =
            Self::bearer(fetched.value, std::time::Duration::ZERO).with_lifetime(lifetime);
        if !fetched.token_type.is_empty() {
            token.token_type = fetched.token_type;
        }
        if let Some(refresh_token) = fetched.refresh_token {
            token = token.with_refresh_token(refresh_token);
        }
        token
    }
}

impl tokenlease::BlockingSource for ForeignSource {
    fn fetch(&self) -> tokenlease::Result<tokenlease::FetchedToken> {
        let fetched = match self {
            Self::FetchOnly(source) => source.fetch()?,
            Self::Refreshing(source) => source.fetch()?,
        };
        Ok(fetched.into())
    }

    fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> tokenlease::Result<tokenlease::FetchedToken> {
        match self {
            Self::FetchOnly(_) => self.fetch(),
            Self::Refreshing(source) => Ok(source.refresh(refresh_token.clone())?.into()),
        }
    }

    fn revoke(&self, token: &Token) -> tokenlease::Result<()> {
        match self {
            Self::FetchOnly(_) => Ok(()),
            Self::Refreshing(source) => Ok(source.revoke(TokenInfo::from(token))?),
        }
    }
}

struct ForeignStore(Arc<dyn TokenStore>);

impl fmt::Debug for ForeignStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForeignStore")
    }
}

impl tokenlease::BlockingStore for ForeignStore {
    fn load(&self, key: &str) -> tokenlease::Result<Option<TokenRecord>> {
        match self.0.load(key.to_owned())? {
            Some(json) => TokenRecord::from_json(&json).map(Some),
            None => Ok(None),
        }
    }

    fn save(&self, key: &str, record: &TokenRecord) -> tokenlease::Result<()> {
        Ok(self.0.save(key.to_owned(), record.to_json()?)?)
    }

    fn delete(&self, key: &str) -> tokenlease::Result<()> {
        Ok(self.0.delete(key.to_owned())?)
    }
}

struct ForeignListener(Arc<dyn EventListener>);

impl tokenlease::EventListener for ForeignListener {
    fn on_event(&self, key: &str, event: &CoreEvent) {
        self.0.on_event(key.to_owned(), event.into());
    }
}

// ---------------------------------------------------------------------------------------
// The manager
// ---------------------------------------------------------------------------------------

/// Gets, caches and refreshes the token of one credential (a [`tokenlease::Manager`]).
///
/// Named `Native…` because Kotlin and Swift code uses the hand-written `TokenManager` around
/// it (same methods, plus a cached read that does not pay for a generic UniFFI call and
/// record lifting on every call). Thread-safe; share one per credential. Dropping it (Kotlin `close()`/`use {}`, Swift
/// deinit) closes the core manager; [`NativeTokenManager::shutdown`] closes it explicitly while
/// the object is still referenced (later calls then fail with `Closed`).
#[derive(uniffi::Object)]
pub struct NativeTokenManager {
    manager: Manager,
}

impl fmt::Debug for NativeTokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeTokenManager")
            .field("manager", &self.manager)
            .finish()
    }
}

impl Drop for NativeTokenManager {
    fn drop(&mut self) {
        self.manager.close();
    }
}

#[uniffi::export]
impl NativeTokenManager {
    /// A manager described by the shared JSON or TOML configuration (the same text every
    /// binding accepts). Fails with `Configuration` naming the offending field.
    #[uniffi::constructor]
    pub fn from_config(config: String) -> BindingResult<Arc<Self>> {
        Ok(Arc::new(Self {
            manager: Manager::from_config(&config)?,
        }))
    }

    /// A manager around a foreign source, optionally persisting to a foreign store under
    /// `key` (default `"default"`). Source and store run on tokenlease's blocking pool.
    #[uniffi::constructor(default(store = None, key = None))]
    pub fn with_source(
        source: Arc<dyn TokenSource>,
        store: Option<Arc<dyn TokenStore>>,
        key: Option<String>,
    ) -> Arc<Self> {
        Self::with_foreign_source(ForeignSource::FetchOnly(source), store, key)
    }

    /// A manager around a foreign source that also refreshes with refresh tokens and
    /// revokes on logout; otherwise as [`NativeTokenManager::with_source`].
    #[uniffi::constructor(default(store = None, key = None))]
    pub fn with_refreshing_source(
        source: Arc<dyn RefreshingTokenSource>,
        store: Option<Arc<dyn TokenStore>>,
        key: Option<String>,
    ) -> Arc<Self> {
        Self::with_foreign_source(ForeignSource::Refreshing(source), store, key)
    }

    /// A valid token like `token()`, except that cancelling `signal` ends this caller's wait
    /// at once with `Cancelled` (the shared refresh goes on for the others). For callers
    /// whose generated async code does not forward cancellation (Swift tasks).
    pub async fn token_cancellable(&self, signal: Arc<CancelSignal>) -> BindingResult<TokenInfo> {
        tokio::select! {
            biased;
            () = signal.cancelled() => Err(TokenleaseError::Cancelled {
                reason: "the caller stopped waiting for the token".to_owned(),
            }),
            token = self.manager.token() => Ok(TokenInfo::from(&*token?)),
        }
    }

    /// A valid token: from the cache when fresh (no thread hop), otherwise after the one
    /// in-flight refresh, which runs on tokenlease's background runtime. Cancelling the
    /// Kotlin coroutine / dropping the future stops this caller's wait.
    pub async fn token(&self) -> BindingResult<TokenInfo> {
        // `Manager::token` serves a fresh token inline and otherwise spawns the wait on
        // core's background runtime (aborted when this future is dropped), so no foreign
        // or UniFFI executor ever runs lifecycle work.
        let token = self.manager.token().await?;
        Ok(TokenInfo::from(&*token))
    }

    /// Blocking form of `token()`. Fails with `Usage` when called from a source, store or
    /// listener callback (it would deadlock).
    pub fn token_blocking(&self) -> BindingResult<TokenInfo> {
        let token = self.manager.token_blocking()?;
        Ok(TokenInfo::from(&*token))
    }

    /// The cached token if it is fresh or stale, without waiting; null/nil otherwise.
    pub fn cached(&self) -> Option<TokenInfo> {
        self.manager.cached().map(|token| TokenInfo::from(&*token))
    }

    /// Discards the cached token if it is still `generation` (a late rejection of an
    /// older token never discards a newer one). Returns whether it did.
    pub fn invalidate(&self, generation: u64) -> bool {
        self.manager.invalidate_generation(generation)
    }

    /// Logs out: revokes at the source, clears memory and store. The next `token()`
    /// fetches a new token.
    pub async fn revoke(&self) -> BindingResult<()> {
        Ok(self.manager.revoke().await?)
    }

    /// Blocking form of `revoke()`.
    pub fn revoke_blocking(&self) -> BindingResult<()> {
        Ok(self.manager.revoke_blocking()?)
    }

    /// A snapshot of state, deadlines, last error and counters.
    pub fn status(&self) -> ManagerStatus {
        self.manager.status().into()
    }

    /// The store key.
    pub fn key(&self) -> String {
        self.manager.key().to_owned()
    }

    /// Waits until the events queued so far were delivered to listeners, at most
    /// `timeout_ms`; returns whether they were. Listeners run on tokenlease's event thread
    /// (never the refresh thread), after the call that caused the event returns.
    pub fn flush_events(&self, timeout_ms: u64) -> bool {
        self.manager
            .flush_events(std::time::Duration::from_millis(timeout_ms))
    }

    /// Adds an event listener.
    pub fn add_listener(&self, listener: Arc<dyn EventListener>) {
        self.manager
            .add_listener(Arc::new(ForeignListener(listener)));
    }

    /// Closes the manager now: cancels its timer, drops the cached token; later calls fail
    /// with `Closed`. (Named `shutdown` because Kotlin's generated `close()` frees the
    /// object; both close the manager.)
    pub fn shutdown(&self) {
        self.manager.close();
    }

    /// Whether the manager is closed.
    pub fn is_closed(&self) -> bool {
        self.manager.is_closed()
    }

    /// The generation of the token `cached()` would return, or 0 when it would return
    /// null/nil (generations start at 1). A stale token makes sure a background refresh is
    /// under way, exactly as `token()` does.
    ///
    /// This lets a foreign wrapper keep the last `TokenInfo` it lifted and hand it out again
    /// while the generation is unchanged (a generation's value, type and expiry never
    /// change), so the strings cross the boundary once per token instead of once per call.
    pub fn cached_generation(&self) -> u64 {
        self.manager.cached().map_or(0, |token| token.generation())
    }

    /// A strong reference to this manager for [`tokenlease_uniffi_fast_generation`], as an
    /// opaque non-zero handle. The caller owns it and gives it back exactly once with
    /// [`tokenlease_uniffi_fast_release`]; the manager lives at least that long.
    pub fn fast_handle(self: Arc<Self>) -> u64 {
        Arc::into_raw(self) as usize as u64
    }
}

impl NativeTokenManager {
    fn with_foreign_source(
        source: ForeignSource,
        store: Option<Arc<dyn TokenStore>>,
        key: Option<String>,
    ) -> Arc<Self> {
        let mut builder = Manager::builder(BlockingSourceAdapter::new(source));
        if let Some(store) = store {
            builder = builder.store(Arc::new(BlockingStoreAdapter::new(ForeignStore(store))));
        }
        if let Some(key) = key {
            builder = builder.key(key);
        }
        Arc::new(Self {
            manager: builder.build(),
        })
    }
}

/// Cancels the waits of the [`NativeTokenManager::token_cancellable`] calls it is given to.
/// Cancelling is permanent: use one signal per call.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelSignal {
    cancelled: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

#[uniffi::export]
impl CancelSignal {
    /// A signal that is not cancelled yet.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Ends the waits that use this signal (idempotent, callable from any thread).
    pub fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl CancelSignal {
    async fn cancelled(&self) {
        loop {
            // Registered before the check, so a `cancel` between the two still wakes it.
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The cached-read fast path for JNA
// ---------------------------------------------------------------------------------------
//
// Every UniFFI call from Kotlin allocates a JNA `Structure` for its call status, whose
// native memory JNA registers in a global map and frees on its cleaner thread: ~10 µs per
// call on this project's machines, whatever the arguments (docs/benchmarks.md). These two
// plain C functions take and return only integers, so Kotlin binds them with JNA direct
// mapping and a cached read costs one native call.

/// [`NativeTokenManager::cached_generation`] through a handle from
/// [`NativeTokenManager::fast_handle`]: 0 when no token can be served without waiting,
/// when `handle` is 0, or if anything inside panics (never unwinds into the caller).
///
/// # Safety
///
/// `handle` is 0 or a handle from `fast_handle` that has not been released yet.
#[no_mangle]
pub unsafe extern "C" fn tokenlease_uniffi_fast_generation(handle: u64) -> u64 {
    let pointer = handle as usize as *const NativeTokenManager;
    // SAFETY: the caller guarantees a live handle (a strong reference we handed out) or 0,
    // which `as_ref` turns into `None`.
    let Some(manager) = (unsafe { pointer.as_ref() }) else {
        return 0;
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| manager.cached_generation()))
        .unwrap_or(0)
}

/// Gives back a handle from [`NativeTokenManager::fast_handle`]; 0 is ignored. Dropping the
/// last reference closes the manager.
///
/// # Safety
///
/// `handle` is 0 or a handle from `fast_handle`, released at most once and not used after.
#[no_mangle]
pub unsafe extern "C" fn tokenlease_uniffi_fast_release(handle: u64) {
    if handle == 0 {
        return;
    }
    let pointer = handle as usize as *const NativeTokenManager;
    // SAFETY: the caller gives back the strong reference `fast_handle` leaked, once.
    let manager = unsafe { Arc::from_raw(pointer) };
    // Closing runs listeners and drops foreign objects; a panic there must not unwind
    // across the C boundary.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(manager)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_kind_maps_one_to_one() {
        for kind in CoreKind::ALL {
            let err = TokenleaseError::from(CoreError::new(kind, "boom"));
            assert_eq!(err.kind(), kind);
            assert_eq!(err.reason(), "boom");
            assert_eq!(err.to_string(), format!("{kind}: boom"));
            assert_eq!(CoreError::from(err).kind(), kind);
            assert_eq!(error_kind_code(ErrorKind::from(kind)), kind.code());
            assert_eq!(CoreKind::from(ErrorKind::from(kind)), kind);
        }
    }

    #[test]
    fn bad_config_is_a_configuration_error() {
        let err = NativeTokenManager::from_config("{\"nope\": 1}".into()).unwrap_err();
        assert!(
            matches!(err, TokenleaseError::Configuration { .. }),
            "{err}"
        );
    }

    #[derive(Debug)]
    struct CountingSource {
        calls: std::sync::atomic::AtomicU64,
        fail: bool,
    }

    impl CountingSource {
        fn new(fail: bool) -> Arc<Self> {
            Arc::new(Self {
                calls: 0.into(),
                fail,
            })
        }
    }

    impl TokenSource for CountingSource {
        fn fetch(&self) -> BindingResult<FetchedToken> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.fail {
                return Err(TokenleaseError::InvalidGrant {
                    reason: "the grant is gone".into(),
                });
            }
            Ok(FetchedToken {
                value: SecretString::new(format!("value-{n}")),
                expires_in_ms: 60_000,
                token_type: "Bearer".into(),
                refresh_token: None,
            })
        }
    }

    #[test]
    fn foreign_source_errors_keep_their_kind() {
        let manager = NativeTokenManager::with_source(CountingSource::new(true), None, None);
        let err = manager.token_blocking().unwrap_err();
        assert!(matches!(err, TokenleaseError::InvalidGrant { .. }), "{err}");
        assert_eq!(err.reason(), "the grant is gone");
        let status = manager.status();
        assert_eq!(status.last_error_kind, Some(ErrorKind::InvalidGrant));
    }

    #[test]
    fn tokens_flow_invalidate_and_close() {
        let manager = NativeTokenManager::with_source(CountingSource::new(false), None, None);
        let token = manager.token_blocking().unwrap();
        assert_eq!(token.value.expose(), "value-0");
        assert!(!format!("{token:?}").contains("value-0"));
        assert_eq!(manager.cached(), Some(token.clone()));
        assert!(manager.invalidate(token.generation));
        assert!(!manager.invalidate(token.generation));
        let again = block_on(manager.token()).unwrap();
        assert_eq!(again.generation, token.generation + 1);
        assert_eq!(again.value.expose(), "value-1");
        manager.shutdown();
        assert!(manager.is_closed());
        assert!(matches!(
            manager.token_blocking(),
            Err(TokenleaseError::Closed { .. })
        ));
    }

    #[test]
    fn fast_handle_reads_the_cached_generation_and_keeps_the_manager_alive() {
        let manager = NativeTokenManager::with_source(CountingSource::new(false), None, None);
        assert_eq!(manager.cached_generation(), 0);
        let handle = manager.clone().fast_handle();
        assert_ne!(handle, 0);
        // SAFETY: a live handle from fast_handle.
        assert_eq!(unsafe { tokenlease_uniffi_fast_generation(handle) }, 0);
        let token = manager.token_blocking().unwrap();
        // SAFETY: as above.
        let generation = unsafe { tokenlease_uniffi_fast_generation(handle) };
        assert_eq!(generation, token.generation);
        assert!(manager.invalidate(token.generation));
        // SAFETY: as above.
        assert_eq!(unsafe { tokenlease_uniffi_fast_generation(handle) }, 0);
        let weak = Arc::downgrade(&manager);
        drop(manager);
        // The handle is a strong reference: the manager is still usable through it.
        assert!(weak.upgrade().is_some_and(|manager| !manager.is_closed()));
        // SAFETY: released once, not used after.
        unsafe { tokenlease_uniffi_fast_release(handle) };
        assert!(weak.upgrade().is_none());
        // SAFETY: 0 is always accepted.
        assert_eq!(unsafe { tokenlease_uniffi_fast_generation(0) }, 0);
        // SAFETY: as above.
        unsafe { tokenlease_uniffi_fast_release(0) };
    }

    /// Records what the manager asks of a refreshing source.
    #[derive(Debug, Default)]
    struct RotatingSource {
        calls: std::sync::Mutex<Vec<String>>,
    }

    impl RotatingSource {
        fn token(&self, value: String, refresh: String) -> FetchedToken {
            FetchedToken {
                value: SecretString::new(value),
                expires_in_ms: 600,
                token_type: "Bearer".into(),
                refresh_token: Some(SecretString::new(refresh)),
            }
        }
    }

    impl RefreshingTokenSource for RotatingSource {
        fn fetch(&self) -> BindingResult<FetchedToken> {
            self.calls.lock().unwrap().push("fetch".into());
            Ok(self.token("access-0".into(), "refresh-0".into()))
        }

        fn refresh(&self, refresh_token: SecretString) -> BindingResult<FetchedToken> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(format!("refresh {}", refresh_token.expose()));
            let n = calls.len();
            Ok(self.token(format!("access-{n}"), format!("refresh-{n}")))
        }

        fn revoke(&self, token: TokenInfo) -> BindingResult<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("revoke {}", token.value.expose()));
            Ok(())
        }
    }

    #[test]
    fn a_refreshing_source_gets_the_rotated_refresh_token_and_the_revoked_token() {
        let source = Arc::new(RotatingSource::default());
        let manager = NativeTokenManager::with_refreshing_source(source.clone(), None, None);
        assert_eq!(manager.token_blocking().unwrap().value.expose(), "access-0");
        // Past the mandatory point of the 600 ms token: the next read refreshes.
        std::thread::sleep(std::time::Duration::from_millis(650));
        let second = manager.token_blocking().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(650));
        let third = manager.token_blocking().unwrap();
        manager.revoke_blocking().unwrap();
        let calls = source.calls.lock().unwrap().clone();
        // Background refreshes may add more; the chain must be unbroken and rotated.
        assert_eq!(calls[0], "fetch");
        assert_eq!(calls[1], "refresh refresh-0");
        assert_eq!(calls[2], "refresh refresh-2");
        assert!(
            calls.iter().filter(|call| *call == "fetch").count() == 1,
            "{calls:?}"
        );
        assert_eq!(
            calls.last().unwrap(),
            &format!("revoke {}", third.value.expose())
        );
        assert_ne!(second.value, third.value);
    }

    #[derive(Debug)]
    struct GatedSource(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

    impl TokenSource for GatedSource {
        fn fetch(&self) -> BindingResult<FetchedToken> {
            let _ = self.0.lock().unwrap().recv();
            Ok(FetchedToken {
                value: SecretString::new("gated"),
                expires_in_ms: 60_000,
                token_type: "Bearer".into(),
                refresh_token: None,
            })
        }
    }

    #[test]
    fn a_cancelled_signal_ends_only_that_wait() {
        let (open_gate, gate) = std::sync::mpsc::channel();
        let source = Arc::new(GatedSource(std::sync::Mutex::new(gate)));
        let manager = NativeTokenManager::with_source(source, None, None);
        let signal = CancelSignal::new();
        let waiter = {
            let (manager, signal) = (manager.clone(), signal.clone());
            std::thread::spawn(move || block_on(manager.token_cancellable(signal)))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "waits while the source is blocked");
        signal.cancel();
        assert!(signal.is_cancelled());
        let result = waiter.join().unwrap();
        assert!(
            matches!(result, Err(TokenleaseError::Cancelled { .. })),
            "{result:?}"
        );
        // The shared refresh went on: once the source answers, callers get its token.
        open_gate.send(()).unwrap();
        assert_eq!(manager.token_blocking().unwrap().value.expose(), "gated");
        // A signal cancelled before the call ends it at once.
        let cancelled = CancelSignal::new();
        cancelled.cancel();
        let result = block_on(manager.token_cancellable(cancelled));
        assert!(
            matches!(result, Err(TokenleaseError::Cancelled { .. })),
            "{result:?}"
        );
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }
}
