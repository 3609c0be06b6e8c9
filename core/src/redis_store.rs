//! A Redis store: many processes on many hosts share one token and refresh it once.
//!
//! Keys (with the configured prefix, default `tokenlease:`, and `<hash>` the SHA-256 hex of
//! the store key):
//!
//! * `<prefix>record:<hash>` — the record, in the same versioned envelope as the file store
//!   (`docs/file-store.md`): plaintext without the refresh token, or sealed with
//!   XChaCha20-Poly1305 (refresh token included) when an [`EncryptionKey`] is configured;
//! * `<prefix>lease:<hash>` — the refresh lease, `SET NX PX`, holding its fencing token;
//! * `<prefix>fence:<hash>` — the fencing counter (`INCR`).
//!
//! Taking the lease (a Lua script, so the steps are one atomic operation): if the lease key
//! exists the lease is busy; otherwise `INCR` the counter and `SET lease <token> NX PX ttl`.
//! A fenced save writes only if the lease key still holds our token (or has lapsed with no
//! one acquiring it since, i.e. the counter is still ours). Release deletes the lease key
//! only if it is still ours.
//!
//! Redis being down makes every call a [`ErrorKind::Store`] error within a couple of
//! seconds; the manager then keeps working from its cache and its source, emitting
//! store-error events, and the connection is re-established when Redis is back.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::file_store::{key_hash, EncryptionKey, RecordCodec};
use crate::store::{Lease, LeaseOutcome, Store, TokenRecord};

/// Bound on one Redis operation (connecting included).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a manager waiting for a sibling's lease looks again.
const LEASE_POLL: Duration = Duration::from_millis(10);

const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[1])
return token
";

const SAVE_FENCED: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or (not holder and redis.call('GET', KEYS[2]) == ARGV[1]) then
  redis.call('SET', KEYS[3], ARGV[2])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A token store in Redis, with a fenced refresh lease for fleets. Cheap to clone.
///
/// Connects lazily (the first call), so building it never fails because Redis is down.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    prefix: String,
    codec: RecordCodec,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    endpoint: String,
    acquire: Script,
    save_fenced: Script,
    release: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("endpoint", &self.inner.endpoint)
            .field("prefix", &self.inner.prefix)
            .field("encrypted", &self.inner.codec.is_encrypted())
            .finish()
    }
}

fn store_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Store, message)
}

impl RedisStore {
    /// A store at `url` (`redis://[user:password@]host:port[/db]`, or `rediss://`), keys
    /// starting with `prefix` (`None`: `tokenlease:`). Refresh tokens are not written.
    pub fn open(url: &str, prefix: Option<&str>) -> Result<Self> {
        Self::open_with(url, prefix, None)
    }

    /// Like [`RedisStore::open`], with records sealed by `key` (refresh tokens included).
    pub fn open_encrypted(url: &str, prefix: Option<&str>, key: EncryptionKey) -> Result<Self> {
        Self::open_with(url, prefix, Some(key))
    }

    fn open_with(url: &str, prefix: Option<&str>, key: Option<EncryptionKey>) -> Result<Self> {
        // The URL may carry a password: errors never repeat it.
        let client = redis::Client::open(url).map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                "redis store: invalid URL (expected redis://host:port[/db])",
            )
        })?;
        let endpoint = client.get_connection_info().addr.to_string();
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.unwrap_or("tokenlease:").to_owned(),
                codec: RecordCodec::new(key),
                connection: tokio::sync::OnceCell::new(),
                endpoint,
                acquire: Script::new(ACQUIRE),
                save_fenced: Script::new(SAVE_FENCED),
                release: Script::new(RELEASE),
            }),
        })
    }

    /// The Redis key holding the record of `key`.
    pub fn record_key(&self, key: &str) -> String {
        format!("{}record:{}", self.inner.prefix, key_hash(key))
    }

    /// The Redis key holding the lease of `key`.
    pub fn lease_key(&self, key: &str) -> String {
        format!("{}lease:{}", self.inner.prefix, key_hash(key))
    }

    fn fence_key(&self, key: &str) -> String {
        format!("{}fence:{}", self.inner.prefix, key_hash(key))
    }

    /// Runs one operation with a connection, bounded by [`OPERATION_TIMEOUT`].
    async fn run<T, F, Fut>(&self, operation: &str, work: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let endpoint = &self.inner.endpoint;
        let failed = |detail: String| {
            store_error(format!("redis {operation} at {endpoint} failed: {detail}"))
        };
        let attempt = async {
            let connection = self
                .inner
                .connection
                .get_or_try_init(|| {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(OPERATION_TIMEOUT)
                        .set_response_timeout(OPERATION_TIMEOUT)
                        .set_number_of_retries(2)
                        .set_max_delay(500);
                    ConnectionManager::new_with_config(self.inner.client.clone(), config)
                })
                .await
                .map_err(|err| failed(describe(&err)))?
                .clone();
            work(connection).await.map_err(|err| failed(describe(&err)))
        };
        tokio::time::timeout(OPERATION_TIMEOUT, attempt)
            .await
            .map_err(|_| failed(format!("no answer within {OPERATION_TIMEOUT:?}")))?
    }
}

/// A Redis error without any value it might echo: its category and, for I/O, the kind.
fn describe(err: &redis::RedisError) -> String {
    if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        "connection error (is Redis running?)".to_owned()
    } else if err.is_timeout() {
        "timed out".to_owned()
    } else {
        format!("{:?}", err.kind())
    }
}

/// A held Redis lease.
#[derive(Debug)]
struct RedisLease {
    store: RedisStore,
    key: String,
    fencing_token: u64,
}

#[async_trait]
impl Lease for RedisLease {
    fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    async fn release(self: Box<Self>) -> Result<()> {
        let lease_key = self.store.lease_key(&self.key);
        let script = &self.store.inner.release;
        let token = self.fencing_token;
        self.store
            .run("lease release", |mut connection| async move {
                script
                    .key(lease_key)
                    .arg(token)
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn load(&self, key: &str) -> Result<Option<TokenRecord>> {
        let record_key = self.record_key(key);
        let bytes: Option<Vec<u8>> = self
            .run("load", |mut connection| {
                let record_key = record_key.clone();
                async move { connection.get(record_key).await }
            })
            .await?;
        match bytes {
            None => Ok(None),
            Some(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let what = format!("redis key {record_key}");
                self.inner
                    .codec
                    .decode(&key_hash(key), &bytes, &what)
                    .map(Some)
            }
        }
    }

    async fn save(&self, key: &str, record: &TokenRecord) -> Result<()> {
        let bytes = Zeroizing::new(self.inner.codec.encode(&key_hash(key), record)?);
        let record_key = self.record_key(key);
        self.run("save", |mut connection| async move {
            connection
                .set::<_, _, ()>(record_key, bytes.as_slice())
                .await
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let record_key = self.record_key(key);
        self.run("delete", |mut connection| async move {
            connection.del::<_, ()>(record_key).await
        })
        .await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        let give_up = Instant::now() + wait;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let (lease_key, fence_key) = (self.lease_key(key), self.fence_key(key));
        loop {
            let script = &self.inner.acquire;
            let token: u64 = self
                .run("lease", |mut connection| {
                    let (lease_key, fence_key) = (lease_key.clone(), fence_key.clone());
                    async move {
                        script
                            .key(lease_key)
                            .key(fence_key)
                            .arg(ttl_ms)
                            .invoke_async(&mut connection)
                            .await
                    }
                })
                .await?;
            if token != 0 {
                return Ok(LeaseOutcome::Acquired(Box::new(RedisLease {
                    store: self.clone(),
                    key: key.to_owned(),
                    fencing_token: token,
                })));
            }
            if Instant::now() >= give_up {
                return Ok(LeaseOutcome::Busy);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    async fn save_fenced(&self, key: &str, record: &TokenRecord, lease: &dyn Lease) -> Result<()> {
        let bytes = Zeroizing::new(self.inner.codec.encode(&key_hash(key), record)?);
        let (lease_key, fence_key, record_key) = (
            self.lease_key(key),
            self.fence_key(key),
            self.record_key(key),
        );
        let token = lease.fencing_token();
        let script = &self.inner.save_fenced;
        let written: i64 = self
            .run("fenced save", |mut connection| async move {
                script
                    .key(lease_key)
                    .key(fence_key)
                    .key(record_key)
                    .arg(token)
                    .arg(bytes.as_slice())
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(store_error(format!(
                "the refresh lease of redis key {} passed to another holder (fencing token {token}); write refused",
                self.lease_key(key)
            )))
        }
    }
}
