//! Where token records live between runs and between processes.

#[cfg(unix)]
pub mod file;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub use memory::MemoryStore;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::secret::SecretString;

/// The serialisable form of a token, as stores keep it.
///
/// Times are wall-clock milliseconds since the Unix epoch, because monotonic instants mean
/// nothing to another process. `version` lets the format evolve.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Record format version ([`TokenRecord::VERSION`]).
    pub version: u32,
    /// The token value.
    pub value: SecretString,
    /// Token type.
    pub token_type: String,
    /// Granted scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Refresh token, if any.
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    /// OpenID Connect ID token, if any (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<SecretString>,
    /// Expiry, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// When the token was obtained, ms since the Unix epoch.
    pub obtained_at_ms: u64,
    /// A sliding session's idle state, so a restarted process keeps it alive (or logs in
    /// again) exactly when the first one would have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleRecord>,
    /// Other values kept with the token (see `Token::attribute`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// The idle state of a sliding session in a [`TokenRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleRecord {
    /// The idle timeout every use restarts, ms.
    pub timeout_ms: u64,
    /// The last use known when the record was written, ms since the Unix epoch.
    pub last_used_ms: u64,
}

impl TokenRecord {
    /// The current record format version.
    pub const VERSION: u32 = 1;

    /// Expiry as wall-clock time.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_at_ms)
    }

    /// When the token was obtained, as wall-clock time.
    pub fn obtained_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.obtained_at_ms)
    }

    /// Checks what a record from outside (a file, Redis, a foreign store callback) claims:
    /// a non-empty value of visible characters and an expiry within
    /// [`crate::lifecycle::policy::MAX_TOKEN_LIFETIME`] of when it was obtained. A `Store` error names
    /// what is wrong, never the content.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| {
            Err(Error::new(
                ErrorKind::Store,
                format!("token record: {what}"),
            ))
        };
        if let Err(problem) = crate::lifecycle::token::check_token_text(self.value.expose()) {
            return bad(&format!("value {problem}"));
        }
        if let Some(refresh_token) = &self.refresh_token {
            if let Err(problem) = crate::lifecycle::token::check_token_text(refresh_token.expose())
            {
                return bad(&format!("refresh_token {problem}"));
            }
        }
        let max_ms = u64::try_from(crate::lifecycle::policy::MAX_TOKEN_LIFETIME.as_millis())
            .unwrap_or(u64::MAX);
        if self.expires_at_ms.saturating_sub(self.obtained_at_ms) > max_ms {
            return bad("lifetime is longer than the ten-year bound");
        }
        if let Some(idle) = &self.idle {
            if idle.timeout_ms == 0 || idle.timeout_ms > max_ms {
                return bad("idle timeout is zero or beyond the ten-year bound");
            }
        }
        Ok(())
    }

    /// Serialises to JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|err| {
            Error::new(
                ErrorKind::Store,
                format!("cannot encode token record: {err}"),
            )
        })
    }

    /// Parses JSON, with a store error naming what is wrong (never the content).
    pub fn from_json(json: &str) -> Result<Self> {
        let record: TokenRecord = serde_json::from_str(json).map_err(|err| {
            Error::new(
                ErrorKind::Store,
                format!(
                    "corrupt token record: {} at line {} column {}",
                    classify_json_error(&err),
                    err.line(),
                    err.column()
                ),
            )
        })?;
        if record.version != Self::VERSION {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "token record version {} is not supported (expected {})",
                    record.version,
                    Self::VERSION
                ),
            ));
        }
        Ok(record)
    }
}

fn classify_json_error(err: &serde_json::Error) -> &'static str {
    match err.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected or missing field",
        serde_json::error::Category::Eof => "truncated",
    }
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("version", &self.version)
            .field("value", &self.value)
            .field("token_type", &self.token_type)
            .field("scopes", &self.scopes)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_id_token", &self.id_token.is_some())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// A held refresh lease: while it is held, no other manager sharing the store refreshes
/// the same key (cross-process single-flight).
#[async_trait]
pub trait Lease: Send + Sync + fmt::Debug {
    /// Increases with every acquisition of the key's lease; a store may refuse writes
    /// carrying an older fencing token.
    fn fencing_token(&self) -> u64;
    /// Releases the lease early (it also lapses at its expiry).
    async fn release(self: Box<Self>) -> Result<()>;

    /// Extends the lease to `ttl` from now, if it is still ours. A manager renews its lease
    /// while its refresh runs, so a slow token endpoint never lets a sibling take the lease
    /// and rotate the same refresh token. Fails with a `Store` error when the lease has
    /// passed to another holder. The default cannot renew (and says so).
    async fn renew(&self, ttl: Duration) -> Result<()> {
        let _ = ttl;
        Err(Error::new(
            ErrorKind::Store,
            "this store's lease cannot be renewed",
        ))
    }
}

/// The result of asking a store for a lease.
#[derive(Debug)]
pub enum LeaseOutcome {
    /// The lease is ours until released or expired.
    Acquired(Box<dyn Lease>),
    /// Another holder kept it for the whole wait.
    Busy,
    /// The store has no leases (single-process stores).
    Unsupported,
}

/// An async store of token records by key.
///
/// Before every refresh a manager re-reads the record, so a token saved by a restart's
/// predecessor or by a sibling process is adopted instead of requesting a new one; every
/// new token is saved before it is handed out (so a rotated refresh token is persisted
/// before use). Stores shared between processes also offer a lease, taken around the
/// refresh so a fleet makes one token request per token lifetime.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The record stored under `key`, if any.
    async fn load(&self, key: &str) -> Result<Option<TokenRecord>>;
    /// Stores `record` under `key`, replacing what was there.
    async fn save(&self, key: &str, record: &TokenRecord) -> Result<()>;
    /// Removes the record under `key` (no error when absent).
    async fn delete(&self, key: &str) -> Result<()>;

    /// Takes the refresh lease of `key` for at most `ttl`, waiting up to `wait` for
    /// another holder. The default: leases are unsupported.
    async fn acquire_lease(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        let _ = (key, ttl, wait);
        Ok(LeaseOutcome::Unsupported)
    }

    /// Saves `record` on behalf of a lease holder; stores with fencing reject the write
    /// when the lease has passed to someone else. The default is a plain save.
    async fn save_fenced(&self, key: &str, record: &TokenRecord, lease: &dyn Lease) -> Result<()> {
        let _ = lease;
        self.save(key, record).await
    }
}

/// A blocking store (file systems, foreign callbacks). Wrap it with [`BlockingStoreAdapter`]
/// to use it as a [`Store`]; its calls then run on a blocking thread, never on the
/// background runtime's thread.
pub trait BlockingStore: Send + Sync + fmt::Debug + 'static {
    /// The record stored under `key`, if any.
    fn load(&self, key: &str) -> Result<Option<TokenRecord>>;
    /// Stores `record` under `key`.
    fn save(&self, key: &str, record: &TokenRecord) -> Result<()>;
    /// Removes the record under `key`.
    fn delete(&self, key: &str) -> Result<()>;
}

/// How many calls of one blocking store may run at once. A call the manager gave up on
/// (store timeout) keeps its thread until the callback returns; this bounds how many
/// threads a hung store can hold.
pub const MAX_CONCURRENT_BLOCKING_STORE_CALLS: usize = 4;

/// Runs a [`BlockingStore`] on tokio's blocking pool so it never stalls other managers.
/// At most [`MAX_CONCURRENT_BLOCKING_STORE_CALLS`] of its calls run at once.
#[derive(Debug)]
pub struct BlockingStoreAdapter<S> {
    store: Arc<S>,
    gate: crate::runtime::CallGate,
}

impl<S: BlockingStore> BlockingStoreAdapter<S> {
    /// Wraps a blocking store.
    pub fn new(store: S) -> Self {
        Self {
            store: Arc::new(store),
            gate: crate::runtime::CallGate::new(MAX_CONCURRENT_BLOCKING_STORE_CALLS),
        }
    }
}

#[async_trait]
impl<S: BlockingStore> Store for BlockingStoreAdapter<S> {
    async fn load(&self, key: &str) -> Result<Option<TokenRecord>> {
        let (store, key) = (self.store.clone(), key.to_owned());
        let record = self
            .gate
            .run_blocking("token store", move || store.load(&key))
            .await?;
        if let Some(record) = &record {
            record.validate()?;
        }
        Ok(record)
    }

    async fn save(&self, key: &str, record: &TokenRecord) -> Result<()> {
        let (store, key, record) = (self.store.clone(), key.to_owned(), record.clone());
        self.gate
            .run_blocking("token store", move || store.save(&key, &record))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let (store, key) = (self.store.clone(), key.to_owned());
        self.gate
            .run_blocking("token store", move || store.delete(&key))
            .await
    }
}

/// A record with a refresh token, for the stores' unit tests.
#[cfg(test)]
pub(crate) fn sample_record() -> TokenRecord {
    TokenRecord {
        version: TokenRecord::VERSION,
        value: "access-secret-value".into(),
        token_type: "Bearer".into(),
        scopes: vec!["read".into()],
        refresh_token: Some("refresh-secret-value".into()),
        id_token: Some("id-secret-value".into()),
        idle: None,
        attributes: Default::default(),
        expires_at_ms: 1_800_000_000_000,
        obtained_at_ms: 1_799_999_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::sample_record as record;
    use super::*;

    #[test]
    fn record_round_trips_and_debug_redacts() {
        let json = record().to_json().unwrap();
        assert_eq!(TokenRecord::from_json(&json).unwrap(), record());
        let debug = format!("{:?}", record());
        assert!(!debug.contains("secret-value"), "{debug}");
    }

    #[test]
    fn corrupt_record_is_a_store_error_without_content() {
        let err = TokenRecord::from_json("{\"version\":1,\"value\":\"leaky-secret\"").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Store);
        assert!(!err.to_string().contains("leaky-secret"), "{err}");
        let err = TokenRecord::from_json(
            &record()
                .to_json()
                .unwrap()
                .replace("\"version\":1", "\"version\":99"),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Store);
        assert!(err.message().contains("version 99"));
    }

    #[tokio::test]
    async fn blocking_adapter_runs_store_calls() {
        let store = BlockingStoreAdapter::new(MemoryStore::new());
        store.save("k", &record()).await.unwrap();
        assert_eq!(store.load("k").await.unwrap(), Some(record()));
        store.delete("k").await.unwrap();
        assert_eq!(store.load("k").await.unwrap(), None);
    }
}
