//! One error type whose kind survives every boundary (C, Python, Kotlin, Swift).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong, as a stable number every binding maps one-to-one.
///
/// The numbers are part of the public ABI: never renumber, only append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The client credentials were rejected (`invalid_client`, bad password). Terminal.
    InvalidCredentials = 1,
    /// The grant (refresh token, authorization) is invalid or expired. Terminal.
    InvalidGrant = 2,
    /// The token or session was revoked. Terminal.
    Revoked = 3,
    /// The cached token expired and no replacement could be obtained.
    Expired = 4,
    /// A temporary failure (5xx, connection error, `temporarily_unavailable`). Retried with backoff.
    Transient = 5,
    /// The server asked us to slow down (HTTP 429 / `slow_down`). Retried after Retry-After.
    RateLimited = 6,
    /// A request, or a wait for the in-flight refresh, took too long.
    Timeout = 7,
    /// The configuration is invalid (unknown field, missing value, bad URL, `invalid_scope`). Terminal.
    Configuration = 8,
    /// The token store failed (I/O, corrupt record, unavailable backend).
    Store = 9,
    /// The manager was closed.
    Closed = 10,
    /// The resource server rejected the token (401 `invalid_token`, session expired).
    TokenRejected = 11,
    /// The server answered something we could not understand.
    Protocol = 12,
    /// The API was misused (e.g. a blocking call from inside the async runtime, bad argument).
    Usage = 13,
    /// A bug in tokenlease or a panic in a callback.
    Internal = 14,
    /// The operation was cancelled.
    Cancelled = 15,
    /// The user must log in again: the refresh token of a user login is dead (refused,
    /// revoked, past the server's session limits) and there is no other way to a token.
    /// Terminal: show the login screen, then hand the new login to the manager.
    LoginRequired = 16,
}

impl ErrorKind {
    /// Every kind, in numeric order (bindings use this to build their tables).
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::InvalidCredentials,
        ErrorKind::InvalidGrant,
        ErrorKind::Revoked,
        ErrorKind::Expired,
        ErrorKind::Transient,
        ErrorKind::RateLimited,
        ErrorKind::Timeout,
        ErrorKind::Configuration,
        ErrorKind::Store,
        ErrorKind::Closed,
        ErrorKind::TokenRejected,
        ErrorKind::Protocol,
        ErrorKind::Usage,
        ErrorKind::Internal,
        ErrorKind::Cancelled,
        ErrorKind::LoginRequired,
    ];

    /// The stable number of this kind.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The kind with this stable number, if any.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|kind| kind.code() == code)
    }

    /// Whether retrying later may succeed. Transient kinds are retried with backoff;
    /// the others surface at once.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Transient | ErrorKind::RateLimited | ErrorKind::Timeout | ErrorKind::Store
        )
    }

    /// A short stable name (`"invalid_credentials"`), the same in every language.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidCredentials => "invalid_credentials",
            ErrorKind::InvalidGrant => "invalid_grant",
            ErrorKind::Revoked => "revoked",
            ErrorKind::Expired => "expired",
            ErrorKind::Transient => "transient",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Configuration => "configuration",
            ErrorKind::Store => "store",
            ErrorKind::Closed => "closed",
            ErrorKind::TokenRejected => "token_rejected",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Usage => "usage",
            ErrorKind::Internal => "internal",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::LoginRequired => "login_required",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error every tokenlease operation returns.
///
/// Cheap to clone (all waiters of one refresh receive the same error). The message never
/// contains a token value or a secret: sources build it from status codes, error codes
/// and endpoint names only.
#[derive(Clone)]
pub struct Error {
    inner: Arc<ErrorInner>,
}

struct ErrorInner {
    kind: ErrorKind,
    message: String,
    retry_after: Option<Duration>,
    cause: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a human-readable message (no secrets!).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(ErrorInner {
                kind,
                message: message.into(),
                retry_after: None,
                cause: None,
            }),
        }
    }

    /// A transient error (retried with backoff).
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    /// A rate-limit error; `retry_after` is honoured by the backoff.
    pub fn rate_limited(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self::new(ErrorKind::RateLimited, message).with_retry_after(retry_after)
    }

    /// Sets how long the server asked us to wait before retrying.
    pub fn with_retry_after(self, retry_after: Option<Duration>) -> Self {
        self.rebuild(|inner| inner.retry_after = retry_after)
    }

    /// Attaches the underlying cause (shown by `source()`).
    pub fn with_cause(self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.with_shared_cause(Arc::new(cause))
    }

    /// Attaches an already shared cause.
    pub fn with_shared_cause(
        self,
        cause: Arc<dyn std::error::Error + Send + Sync + 'static>,
    ) -> Self {
        self.rebuild(|inner| inner.cause = Some(cause))
    }

    fn rebuild(self, change: impl FnOnce(&mut ErrorInner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => ErrorInner {
                kind: shared.kind,
                message: shared.message.clone(),
                retry_after: shared.retry_after,
                cause: shared.cause.clone(),
            },
        };
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// How long the server asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.inner.kind.is_transient()
    }

    /// The underlying cause as a tokenlease error, when it is one (e.g. the failure behind
    /// an `Expired` error).
    pub fn cause_error(&self) -> Option<&Error> {
        self.inner
            .cause
            .as_deref()
            .and_then(|cause| (cause as &(dyn std::error::Error + 'static)).downcast_ref())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(retry_after) = self.inner.retry_after {
            debug.field("retry_after", &retry_after);
        }
        if let Some(cause) = &self.inner.cause {
            debug.field("cause", &format_args!("{cause}"));
        }
        debug.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)?;
        if let Some(cause) = &self.inner.cause {
            write!(f, " (caused by {cause})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest foreign error text kept, in characters.
pub const MAX_FOREIGN_TEXT_CHARS: usize = 300;

/// Makes text that foreign code produced (a Python exception's message, a C callback's
/// error message, a Kotlin or Swift error) fit to appear in tokenlease's errors, events and
/// logs: URL passwords, query strings and fragments, `Bearer`/`Basic` credentials, values of
/// `token=`/`secret=`/`password=`-like pairs and long token-like words are replaced by
/// `[redacted]`, control characters by spaces, and the text is cut to
/// [`MAX_FOREIGN_TEXT_CHARS`] characters. Every binding passes foreign text through this.
pub fn redact_foreign_text(text: &str) -> String {
    const SENSITIVE_KEYS: [&str; 8] = [
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "assertion",
        "apikey",
        "api_key",
    ];
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = Vec::new();
    let mut redact_next = false;
    for word in cleaned.split(' ') {
        if redact_next && !word.is_empty() {
            out.push("[redacted]".to_owned());
            redact_next = false;
            continue;
        }
        let lower = word.to_ascii_lowercase();
        let names_a_secret = (lower.ends_with(':') || lower.ends_with('='))
            && SENSITIVE_KEYS.iter().any(|key| lower.contains(key));
        if lower == "bearer" || lower == "basic" || lower == "dpop" || names_a_secret {
            redact_next = true;
            out.push(word.to_owned());
            continue;
        }
        out.push(redact_word(word, &SENSITIVE_KEYS));
    }
    let joined = out.join(" ");
    let mut kept: String = joined.chars().take(MAX_FOREIGN_TEXT_CHARS).collect();
    if joined.chars().count() > MAX_FOREIGN_TEXT_CHARS {
        kept.push_str("...");
    }
    kept
}

fn redact_word(word: &str, sensitive_keys: &[&str]) -> String {
    if let Some(scheme_end) = word.find("://") {
        let (scheme, rest) = word.split_at(scheme_end + 3);
        let cut = rest.find(['?', '#']).unwrap_or(rest.len());
        let (mut authority_and_path, dropped) = (rest[..cut].to_owned(), cut < rest.len());
        let authority_end = authority_and_path
            .find('/')
            .unwrap_or(authority_and_path.len());
        if let Some(at) = authority_and_path[..authority_end].rfind('@') {
            authority_and_path = format!("[redacted]@{}", &authority_and_path[at + 1..]);
        }
        let suffix = if dropped { "?[redacted]" } else { "" };
        return format!("{scheme}{authority_and_path}{suffix}");
    }
    for separator in ['=', ':'] {
        if let Some(at) = word.find(separator) {
            let key = word[..at].to_ascii_lowercase();
            let key = key.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            if !key.is_empty()
                && at + 1 < word.len()
                && sensitive_keys
                    .iter()
                    .any(|sensitive| key.contains(sensitive))
            {
                return format!("{}[redacted]", &word[..=at]);
            }
        }
    }
    let core = word.trim_matches(|c: char| "\"'(),;[]{}<>".contains(c));
    let token_like = core.len() >= 24
        && core
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~+/=".contains(c))
        && core.chars().any(|c| c.is_ascii_digit())
        && core.chars().any(|c| c.is_ascii_alphabetic());
    if token_like {
        return word.replace(core, "[redacted]");
    }
    word.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_text_is_redacted_and_bounded() {
        let text = "HTTPError: 401 for url https://user:hunter2@idp.example/token?code=abc123 \
                    with Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig and token=opaque-value \
                    password: pw1 refresh 8f2a9c1e7b3d4f6a0c5e8b2d1a7f3c9e\n\0next";
        let redacted = redact_foreign_text(text);
        for secret in [
            "hunter2",
            "code=abc123",
            "eyJhbGci",
            "opaque-value",
            "8f2a9c1e7b3d",
            "pw1",
        ] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        assert!(
            redacted.contains("https://[redacted]@idp.example/token?[redacted]"),
            "{redacted}"
        );
        assert!(redacted.contains("token=[redacted]"), "{redacted}");
        assert!(redacted.contains("HTTPError: 401"), "{redacted}");
        assert!(!redacted.contains('\0') && !redacted.contains('\n'));
        let long = redact_foreign_text(&"word ".repeat(200));
        assert!(long.chars().count() <= MAX_FOREIGN_TEXT_CHARS + 3);
    }

    #[test]
    fn codes_are_stable_and_round_trip() {
        for (index, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.code() as usize, index + 1);
            assert_eq!(ErrorKind::from_code(kind.code()), Some(*kind));
        }
        assert_eq!(ErrorKind::from_code(0), None);
        assert_eq!(ErrorKind::from_code(999), None);
        assert_eq!(ErrorKind::InvalidCredentials.code(), 1);
        assert_eq!(ErrorKind::Cancelled.code(), 15);
    }

    #[test]
    fn display_names_kind_and_cause() {
        let cause = Error::transient("token endpoint answered 503");
        let error = Error::new(ErrorKind::Expired, "token expired").with_cause(cause);
        assert_eq!(
            error.to_string(),
            "expired: token expired (caused by transient: token endpoint answered 503)"
        );
        assert_eq!(error.cause_error().unwrap().kind(), ErrorKind::Transient);
    }

    #[test]
    fn retry_after_survives_sharing() {
        let error = Error::rate_limited("429", Some(Duration::from_secs(7)));
        let shared = error.clone();
        let rebuilt = shared.with_retry_after(Some(Duration::from_secs(9)));
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(rebuilt.retry_after(), Some(Duration::from_secs(9)));
        assert_eq!(rebuilt.kind(), ErrorKind::RateLimited);
    }
}
