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
//!
//! TLS: a `rediss://` URL connects over TLS (rustls) and checks the server's certificate and
//! name against the Mozilla roots (`webpki-roots`, as the HTTP sources do), or, with
//! [`RedisOptions::ca_file`] / [`RedisOptions::ca_pem`], against that CA alone (a private CA
//! or a self-signed server). There is no way to turn the check off: `rediss://...#insecure`
//! is refused. If the process has no default rustls crypto provider, opening a `rediss://`
//! store installs rustls' `ring` provider as the default.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncCommands, AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, Script,
    TlsCertificates,
};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::store::file::{key_hash, EncryptionKey, RecordCodec};
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
    tls: bool,
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

/// Options of a [`RedisStore`] beyond its URL: key prefix, encryption at rest, and the CA
/// that signs the server's TLS certificate.
///
/// ```
/// # use tokenlease::redis_store::{RedisOptions, RedisStore};
/// let options = RedisOptions::new()
///     .prefix("reports:")
///     .ca_file("/etc/redis/tls/ca.crt");
/// // Connects lazily: the CA file is read now, Redis is reached on the first call.
/// let store = RedisStore::open_with_options("rediss://redis.internal:6380/0", options);
/// # let _ = store;
/// ```
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    prefix: Option<String>,
    encryption_key: Option<EncryptionKey>,
    ca: Option<CaSource>,
}

#[derive(Debug, Clone)]
enum CaSource {
    File(PathBuf),
    Pem(Vec<u8>),
}

impl RedisOptions {
    /// No prefix (`tokenlease:`), no encryption, the webpki roots for `rediss://`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys start with `prefix` instead of `tokenlease:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Records are sealed with `key` (refresh tokens included).
    pub fn encryption_key(mut self, key: EncryptionKey) -> Self {
        self.encryption_key = Some(key);
        self
    }

    /// Trust only the CA certificate(s) in this PEM file for the server's TLS certificate
    /// (instead of the webpki roots). Needs a `rediss://` URL. Read when the store is opened.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(CaSource::File(path.into()));
        self
    }

    /// Like [`RedisOptions::ca_file`], with the PEM text itself.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(CaSource::Pem(pem.into()));
        self
    }
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Configuration, message)
}

/// The CA certificates of `source` as PEM, checked to hold at least one certificate.
fn read_ca(source: &CaSource) -> Result<Vec<u8>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let (pem, what) = match source {
        CaSource::File(path) => (
            std::fs::read(path).map_err(|err| {
                config_error(format!(
                    "redis store: cannot read ca_file {}: {err}",
                    path.display()
                ))
            })?,
            format!("ca_file {}", path.display()),
        ),
        CaSource::Pem(pem) => (pem.clone(), "ca_pem".to_owned()),
    };
    let mut count = 0usize;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate
            .map_err(|err| config_error(format!("redis store: {what}: not valid PEM: {err}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(config_error(format!(
            "redis store: {what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(pem)
}

/// rustls needs a crypto provider; `ring` is compiled in. An application that installed
/// its own default keeps it.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: there is a default either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl RedisStore {
    /// A store at `url` (`redis://[user:password@]host:port[/db]`, or `rediss://` for TLS
    /// checked against the webpki roots), keys starting with `prefix` (`None`:
    /// `tokenlease:`). Refresh tokens are not written.
    pub fn open(url: &str, prefix: Option<&str>) -> Result<Self> {
        Self::open_with_options(url, Self::prefixed(prefix))
    }

    /// Like [`RedisStore::open`], with records sealed by `key` (refresh tokens included).
    pub fn open_encrypted(url: &str, prefix: Option<&str>, key: EncryptionKey) -> Result<Self> {
        Self::open_with_options(url, Self::prefixed(prefix).encryption_key(key))
    }

    fn prefixed(prefix: Option<&str>) -> RedisOptions {
        match prefix {
            Some(prefix) => RedisOptions::new().prefix(prefix),
            None => RedisOptions::new(),
        }
    }

    /// A store at `url` with `options` (e.g. the CA of a `rediss://` server).
    ///
    /// `Configuration` errors, none repeating the URL (it may carry a password): an invalid
    /// URL, `rediss://...#insecure` (certificate checks cannot be turned off), a CA with a
    /// `redis://` URL, an unreadable CA file or one without a PEM certificate.
    pub fn open_with_options(url: &str, options: RedisOptions) -> Result<Self> {
        // The URL may carry a password: errors never repeat it.
        let info = url.into_connection_info().map_err(|_| {
            config_error(
                "redis store: invalid URL (expected redis://host:port[/db] or rediss://host:port[/db] for TLS)",
            )
        })?;
        let tls = match &info.addr {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(config_error(
                    "redis store: rediss://...#insecure (TLS without certificate checks) is not supported; \
                     give the CA that signed the server's certificate instead (ca_file)",
                ))
            }
            ConnectionAddr::TcpTls { .. } => true,
            _ => false,
        };
        let endpoint = format!("{}://{}", if tls { "rediss" } else { "redis" }, info.addr);
        let client = match (&options.ca, tls) {
            (Some(_), false) => return Err(config_error(
                "redis store: a CA (ca_file) is for TLS and needs a rediss:// URL, not redis://",
            )),
            (Some(ca), true) => {
                let root_cert = read_ca(ca)?;
                ensure_crypto_provider();
                redis::Client::build_with_tls(
                    info,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
            (None, tls) => {
                if tls {
                    ensure_crypto_provider();
                }
                redis::Client::open(info)
            }
        }
        .map_err(|err| config_error(format!("redis store: {}", describe(&err, tls))))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                prefix: options.prefix.unwrap_or_else(|| "tokenlease:".to_owned()),
                codec: RecordCodec::new(options.encryption_key),
                connection: tokio::sync::OnceCell::new(),
                endpoint,
                tls,
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
        let (endpoint, tls) = (&self.inner.endpoint, self.inner.tls);
        let failed = |detail: String| {
            store_error(format!("redis {operation} at {endpoint} failed: {detail}"))
        };
        let attempt = async {
            let connection = self
                .inner
                .connection
                .get_or_try_init(|| async {
                    // One attempt without retries first: its error tells what is wrong
                    // (refused, TLS certificate, authentication) at once, where the
                    // manager's retries of a hopeless connection would end in the timeout.
                    let probe = AsyncConnectionConfig::new()
                        .set_connection_timeout(OPERATION_TIMEOUT)
                        .set_response_timeout(OPERATION_TIMEOUT);
                    drop(
                        self.inner
                            .client
                            .get_multiplexed_async_connection_with_config(&probe)
                            .await?,
                    );
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(OPERATION_TIMEOUT)
                        .set_response_timeout(OPERATION_TIMEOUT)
                        .set_number_of_retries(2)
                        .set_max_delay(500);
                    ConnectionManager::new_with_config(self.inner.client.clone(), config).await
                })
                .await
                .map_err(|err| failed(describe(&err, tls)))?
                .clone();
            work(connection)
                .await
                .map_err(|err| failed(describe(&err, tls)))
        };
        tokio::time::timeout(OPERATION_TIMEOUT, attempt)
            .await
            .map_err(|_| failed(format!("no answer within {OPERATION_TIMEOUT:?}")))?
    }
}

/// A Redis error without any value it might echo: its category and, for I/O, the kind; for
/// a failed TLS handshake, rustls' reason (e.g. an untrusted certificate). `tls`: the
/// store's URL is `rediss://`; the hints then ask whether the server speaks TLS, otherwise
/// whether it speaks only TLS.
fn describe(err: &redis::RedisError, tls: bool) -> String {
    let scheme_hint = if tls {
        "does the server speak TLS on this port?"
    } else {
        "a TLS-only port needs rediss://"
    };
    if let Some(tls_err) = tls_error(err) {
        match tls_err {
            rustls::Error::InvalidCertificate(_) => format!(
                "TLS handshake failed: {tls_err} (is the server's certificate for this host \
                 name, and signed by a trusted CA? For a private CA set ca_file)"
            ),
            _ => format!("TLS handshake failed: {tls_err} ({scheme_hint})"),
        }
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        format!("connection error (is Redis running? {scheme_hint})")
    } else if err.is_timeout() {
        format!("timed out ({scheme_hint})")
    } else {
        format!("{:?}", err.kind())
    }
}

/// The rustls error behind a failed TLS connection, if that is what `err` is.
fn tls_error(err: &redis::RedisError) -> Option<&rustls::Error> {
    let io = std::error::Error::source(err)?.downcast_ref::<std::io::Error>()?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn configuration_error(result: Result<RedisStore>) -> String {
        let err = result.expect_err("a configuration error");
        assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        err.message().to_owned()
    }

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "tokenlease-redis-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn rediss_urls_open_with_tls() {
        // Nothing listens on port 1: opening works (the store connects lazily).
        let store = RedisStore::open("rediss://:hunter2@127.0.0.1:1/0", Some("app:")).unwrap();
        let shown = format!("{store:?}");
        assert!(shown.contains("rediss://127.0.0.1:1"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let plain = RedisStore::open("redis://127.0.0.1:1/0", None).unwrap();
        assert!(format!("{plain:?}").contains("redis://127.0.0.1:1"));
    }

    #[test]
    fn tls_without_certificate_checks_is_refused() {
        let message = configuration_error(RedisStore::open(
            "rediss://:hunter2@127.0.0.1:1/0#insecure",
            None,
        ));
        assert!(message.contains("#insecure"), "{message}");
        assert!(message.contains("ca_file"), "{message}");
    }

    #[test]
    fn invalid_urls_are_configuration_errors_without_the_password() {
        for url in [
            "nope://:hunter2@127.0.0.1:1/0",
            "redis://:hunter2@127.0.0.1:1/not-a-db",
            "rediss://:hunter2@127.0.0.1:1/0#fragment",
        ] {
            let message = configuration_error(RedisStore::open(url, None));
            assert!(message.contains("invalid URL"), "{url}: {message}");
        }
    }

    #[test]
    fn a_ca_needs_a_rediss_url() {
        let options = RedisOptions::new().ca_pem(b"irrelevant".to_vec());
        let message = configuration_error(RedisStore::open_with_options(
            "redis://:hunter2@127.0.0.1:1/0",
            options,
        ));
        assert!(message.contains("needs a rediss:// URL"), "{message}");
    }

    #[test]
    fn an_unreadable_or_empty_ca_file_is_refused() {
        let url = "rediss://:hunter2@127.0.0.1:1/0";
        let missing = std::env::temp_dir().join("tokenlease-no-such-ca.pem");
        let message = configuration_error(RedisStore::open_with_options(
            url,
            RedisOptions::new().ca_file(&missing),
        ));
        assert!(message.contains("cannot read ca_file"), "{message}");
        assert!(message.contains("tokenlease-no-such-ca.pem"), "{message}");

        let empty = temp_file("empty-ca", b"just text, no certificate\n");
        let message = configuration_error(RedisStore::open_with_options(
            url,
            RedisOptions::new().ca_file(&empty),
        ));
        assert!(message.contains("holds no PEM certificate"), "{message}");
        let _ = std::fs::remove_file(empty);

        let broken = temp_file(
            "broken-ca",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let message = configuration_error(RedisStore::open_with_options(
            url,
            RedisOptions::new().ca_file(&broken),
        ));
        assert!(message.contains("not valid PEM"), "{message}");
        let _ = std::fs::remove_file(broken);
    }
}
