//! Tokens as handed to callers, and as sources return them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::clock::MonoTime;
use crate::secret::SecretString;

/// A token held by a manager.
///
/// The value is a [`SecretString`]; `Debug` never shows it. Deadlines are monotonic
/// instants of the manager's clock (immune to wall-clock jumps); the wall-clock expiry is
/// kept for display and persistence.
pub struct Token {
    pub(crate) value: SecretString,
    pub(crate) token_type: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) refresh_token: Option<SecretString>,
    pub(crate) id_token: Option<SecretString>,
    /// Other values the login response carried (not secrets), e.g. a session API's server URL.
    pub(crate) attributes: std::collections::BTreeMap<String, String>,
    pub(crate) generation: u64,
    pub(crate) obtained_at: MonoTime,
    pub(crate) refresh_at: MonoTime,
    pub(crate) mandatory_at: MonoTime,
    pub(crate) expires_at: MonoTime,
    pub(crate) expires_at_wall: SystemTime,
    /// Sliding sessions: the idle timeout and its windows; `None` for tokens that only
    /// expire at a fixed time.
    pub(crate) idle: Option<IdleWindows>,
    /// Last use reported for a sliding session (monotonic nanoseconds).
    pub(crate) last_used: AtomicU64,
}

/// Windows of a sliding idle timeout, relative to the last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdleWindows {
    pub(crate) timeout: Duration,
    /// Keep-alive starts this long before the idle timeout lapses.
    pub(crate) advisory: Duration,
    /// Callers wait for the keep-alive from this long before it lapses.
    pub(crate) mandatory: Duration,
}

impl Clone for Token {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            token_type: self.token_type.clone(),
            scopes: self.scopes.clone(),
            refresh_token: self.refresh_token.clone(),
            id_token: self.id_token.clone(),
            attributes: self.attributes.clone(),
            generation: self.generation,
            obtained_at: self.obtained_at,
            refresh_at: self.refresh_at,
            mandatory_at: self.mandatory_at,
            expires_at: self.expires_at,
            expires_at_wall: self.expires_at_wall,
            idle: self.idle,
            last_used: AtomicU64::new(self.last_used.load(Ordering::Relaxed)),
        }
    }
}

impl Token {
    /// The secret value to put on the wire.
    pub fn value(&self) -> &SecretString {
        &self.value
    }

    /// The token type (`"Bearer"` for most OAuth2 servers).
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// Granted scopes, when the server said.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The refresh token that came with this token, if any.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    /// The OpenID Connect ID token of the login, kept opaque (never parsed or verified
    /// here): for `id_token_hint` at logout, or for the app to verify and read. A refresh
    /// that returns none keeps the login's.
    pub fn id_token(&self) -> Option<&SecretString> {
        self.id_token.as_ref()
    }

    /// A value the login response carried besides the token (a session source's
    /// `values`, e.g. Zuora's `server_url`: where to send later requests).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// All such values.
    pub fn attributes(&self) -> &std::collections::BTreeMap<String, String> {
        &self.attributes
    }

    /// Increases by one with every token a manager installs; used to invalidate exactly
    /// the token a server rejected.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Monotonic instant after which the token must not be used: the absolute expiry,
    /// or for a sliding session the end of its idle timeout if that comes first.
    #[inline]
    pub fn expires_at(&self) -> MonoTime {
        match &self.idle {
            None => self.expires_at,
            Some(idle) => self.expires_at.min(self.last_used() + idle.timeout),
        }
    }

    /// The idle timeout of a sliding session (`None` for fixed-expiry tokens).
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle.map(|idle| idle.timeout)
    }

    /// The last use reported for a sliding session (or when it was obtained).
    pub fn last_used(&self) -> MonoTime {
        MonoTime::from_nanos(self.last_used.load(Ordering::Acquire))
    }

    /// Records a use: a sliding session's idle timeout restarts now.
    pub(crate) fn mark_used(&self, now: MonoTime) {
        self.last_used.fetch_max(now.as_nanos(), Ordering::AcqRel);
    }

    /// Records a use after which the server says `remaining` of the idle timeout is left:
    /// the idle deadline becomes `now + remaining` (at most a full timeout from now). The
    /// server's word wins also when it is shorter than what we assumed.
    pub(crate) fn mark_used_with_remaining(&self, now: MonoTime, remaining: Duration) {
        let Some(idle) = self.idle else {
            return;
        };
        let remaining = remaining.min(idle.timeout);
        let timeout_nanos = u64::try_from(idle.timeout.as_nanos()).unwrap_or(u64::MAX);
        let used = (now + remaining).as_nanos().saturating_sub(timeout_nanos);
        self.last_used.store(used, Ordering::Release);
    }

    /// Whether the keep-alive (not a new token) is what the refresh point is about.
    pub(crate) fn idle_is_due_first(&self) -> bool {
        match &self.idle {
            None => false,
            Some(idle) => self.last_used() + idle.timeout - idle.advisory < self.refresh_at,
        }
    }

    /// Wall-clock expiry (for display and persistence).
    pub fn expires_at_wall(&self) -> SystemTime {
        self.expires_at_wall
    }

    /// Monotonic instant at which a background refresh (or keep-alive) starts: the
    /// advisory window.
    #[inline]
    pub fn refresh_at(&self) -> MonoTime {
        match &self.idle {
            None => self.refresh_at,
            Some(idle) => self
                .refresh_at
                .min(self.last_used() + idle.timeout - idle.advisory),
        }
    }

    /// Monotonic instant from which callers wait for a refresh (the mandatory window).
    #[inline]
    pub fn mandatory_at(&self) -> MonoTime {
        match &self.idle {
            None => self.mandatory_at,
            Some(idle) => self
                .mandatory_at
                .min(self.last_used() + idle.timeout - idle.mandatory),
        }
    }

    /// Monotonic instant at which the request that produced this token was sent.
    pub fn obtained_at(&self) -> MonoTime {
        self.obtained_at
    }

    /// The token's full lifetime as granted.
    pub fn lifetime(&self) -> Duration {
        self.expires_at.saturating_duration_since(self.obtained_at)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &self.value)
            .field("token_type", &self.token_type)
            .field("scopes", &self.scopes)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("generation", &self.generation)
            .field("expires_at_wall", &self.expires_at_wall)
            .field("idle_timeout", &self.idle_timeout())
            .finish()
    }
}

/// How long a fetched token lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Valid for this long, counted from the moment the request was sent (`expires_in`).
    ExpiresIn(Duration),
    /// Valid until this wall-clock time (a JWT `exp`, an absolute session deadline),
    /// already corrected for server clock skew by the source.
    ExpiresAt(SystemTime),
    /// The server didn't say; the policy's default lifetime applies.
    Unknown,
}

/// What a [`Source`](crate::Source) returns: a token value and what is known about it.
///
/// Build it with [`FetchedToken::bearer`] and the `with_*` methods; fields may be added.
#[derive(Clone)]
#[non_exhaustive]
pub struct FetchedToken {
    /// The secret value.
    pub value: SecretString,
    /// Token type; `"Bearer"` when empty.
    pub token_type: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// A refresh token, when the server issued (or rotated) one.
    pub refresh_token: Option<SecretString>,
    /// An OpenID Connect ID token, kept opaque.
    pub id_token: Option<SecretString>,
    /// Other values of the response kept with the token (not secrets).
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The lifetime.
    pub lifetime: Lifetime,
    /// When the request was sent, if the source measured it; otherwise the manager uses
    /// the moment it called the source (never later than the actual send).
    pub sent_at: Option<MonoTime>,
    /// For sliding sessions: the idle timeout that every use restarts. The manager keeps
    /// the session alive (keep-alive request or re-login) before it lapses.
    pub idle_timeout: Option<Duration>,
}

impl FetchedToken {
    /// A bearer token valid for `expires_in` from the moment the request was sent.
    pub fn bearer(value: impl Into<SecretString>, expires_in: Duration) -> Self {
        Self {
            value: value.into(),
            token_type: "Bearer".to_owned(),
            scopes: Vec::new(),
            refresh_token: None,
            id_token: None,
            attributes: Default::default(),
            lifetime: Lifetime::ExpiresIn(expires_in),
            sent_at: None,
            idle_timeout: None,
        }
    }

    /// Makes this a sliding session with the given idle timeout.
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = Some(idle_timeout);
        self
    }

    /// Adds a refresh token.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<SecretString>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// Sets the granted scopes.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the lifetime.
    pub fn with_lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Checks what any source (server, foreign callback) handed over, the same way for every
    /// binding: a non-empty value and refresh token of at most [`MAX_TOKEN_BYTES`] bytes
    /// without control characters (they would break or inject into an HTTP header), a sane
    /// token type, and relative lifetimes within [`crate::lifecycle::policy::MAX_TOKEN_LIFETIME`].
    /// The manager runs it on every fetched token; a `Protocol` error names the field,
    /// never its content.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |what: String| {
            Err(crate::Error::new(
                crate::ErrorKind::Protocol,
                format!("the token source returned {what}"),
            ))
        };
        if let Err(problem) = check_token_text(self.value.expose()) {
            return bad(format!("a token value that {problem}"));
        }
        if let Some(refresh_token) = &self.refresh_token {
            if let Err(problem) = check_token_text(refresh_token.expose()) {
                return bad(format!("a refresh token that {problem}"));
            }
        }
        if let Some(id_token) = &self.id_token {
            if let Err(problem) = check_token_text(id_token.expose()) {
                return bad(format!("an ID token that {problem}"));
            }
        }
        if self.token_type.len() > 64 || !self.token_type.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("a token type that is not a short word of visible ASCII".to_owned());
        }
        let max = crate::lifecycle::policy::MAX_TOKEN_LIFETIME;
        if let Lifetime::ExpiresIn(lifetime) = self.lifetime {
            if lifetime > max {
                return bad(format!(
                    "a lifetime of {} s, beyond the {} s bound",
                    lifetime.as_secs(),
                    max.as_secs()
                ));
            }
        }
        if self
            .idle_timeout
            .is_some_and(|idle| idle > max || idle.is_zero())
        {
            return bad("an idle timeout of zero or beyond the ten-year bound".to_owned());
        }
        Ok(())
    }
}

/// Longest token value or refresh token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Why `text` cannot be a token value or refresh token (empty, longer than
/// [`MAX_TOKEN_BYTES`], control characters such as NUL, CR or LF); `Ok` when it can. Every
/// binding checks values it receives with this, so they are judged the same everywhere.
pub fn check_token_text(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        Err("is empty")
    } else if text.len() > MAX_TOKEN_BYTES {
        Err("is longer than 65536 bytes")
    } else if text.chars().any(char::is_control) {
        Err("contains a control character (NUL, CR, LF, ...)")
    } else {
        Ok(())
    }
}

impl fmt::Debug for FetchedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedToken")
            .field("value", &self.value)
            .field("token_type", &self.token_type)
            .field("scopes", &self.scopes)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_id_token", &self.id_token.is_some())
            .field("lifetime", &self.lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}
