//! Errors: [`TokenleaseError`] (one variant per core error kind, thrown by foreign code to
//! choose a failure's kind) and [`ErrorKind`] with its stable numbers.

use tokenlease::{Error as CoreError, ErrorKind as CoreKind};

/// A tokenlease failure. One variant per core error kind, in the order of the stable codes
/// (1 = `InvalidCredentials` ... 16 = `LoginRequired`). `reason` never contains a token value.
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
    /// The user must log in again: the refresh token of their login is dead.
    #[error("login_required: {reason}")]
    LoginRequired {
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
            Self::LoginRequired { .. } => CoreKind::LoginRequired,
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
            | Self::Cancelled { reason }
            | Self::LoginRequired { reason } => reason,
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
            CoreKind::LoginRequired => Self::LoginRequired { reason },
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

pub(crate) type BindingResult<T> = std::result::Result<T, TokenleaseError>;

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
    /// 16
    LoginRequired,
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
            CoreKind::LoginRequired => Self::LoginRequired,
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
            ErrorKind::LoginRequired => CoreKind::LoginRequired,
        }
    }
}

/// The stable number of an error kind (1..=16), the same in C, Python, Kotlin and Swift.
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
}
