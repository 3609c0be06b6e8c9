//! Tokens crossing the boundary: [`TokenInfo`] (handed to the application), [`FetchedToken`]
//! (returned by a foreign source) and the [`SecretString`] custom type they carry.

use std::time::{SystemTime, UNIX_EPOCH};

use tokenlease::{SecretString, Token};

#[cfg(doc)]
use crate::source::TokenSource;

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
    /// The OpenID Connect ID token of a user login (opaque: verify it before trusting
    /// what it says), or null/nil.
    pub id_token: Option<SecretString>,
    /// Other values the login response carried (a session profile's `values`, e.g.
    /// Zuora's `server_url`). Not secrets.
    pub attributes: std::collections::HashMap<String, String>,
}

impl From<&Token> for TokenInfo {
    fn from(token: &Token) -> Self {
        Self {
            value: token.value().clone(),
            token_type: token.token_type().to_owned(),
            expires_at_unix_ms: unix_ms(token.expires_at_wall()),
            generation: token.generation(),
            id_token: token.id_token().cloned(),
            attributes: token
                .attributes()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
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
    /// An OpenID Connect ID token (kept opaque, persisted with the login).
    #[uniffi(default = None)]
    pub id_token: Option<SecretString>,
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
        token.id_token = fetched.id_token;
        token
    }
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
