//! The Redis store over TLS against a real `redis-server` (TLS port only, certificates made
//! by the test with rcgen) and the real test token server: managers share a token through
//! `rediss://` with the CA given as `ca_file`; the wrong peer (untrusted CA, plain text to a
//! TLS port, TLS to a plain-text port) is a store error within the operation bound.
//!
//! Needs `redis-server` (Debian's is built with TLS); without it the tests say so loudly and
//! return. The helper is the one of `tests/fleet.rs`, with a TLS mode.
#![cfg(feature = "redis")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenlease::oauth2::ClientCredentials;
use tokenlease::redis_store::RedisOptions;
use tokenlease::{ErrorKind, Manager, RedisStore, Store, TokenRecord};
use tokenlease_test_server::{ServerConfig, TestServer};

#[allow(dead_code)]
#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

/// A private temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "tokenlease-redis-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it (PEM files
/// `ca.pem`, `server.pem`, `server.key` in a temp dir), plus an unrelated CA
/// (`other-ca.pem`).
struct TestCerts {
    dir: TempDir,
}

impl TestCerts {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            (params.self_signed(&key).unwrap(), key)
        };
        let (ca_cert, ca_key) = ca("tokenlease test CA");
        let (other_ca, _) = ca("tokenlease unrelated CA");
        let server_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "tokenlease test redis");
        let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        let dir = TempDir::new("tls");
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("other-ca.pem", other_ca.pem()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        TestCerts { dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

fn token_server() -> TestServer {
    TestServer::start_background(ServerConfig {
        default_ttl: Duration::from_secs(600),
        ..Default::default()
    })
    .expect("start the test token server")
}

/// Loads `key` from `store` on a runtime of its own (as another host would).
fn load(store: &RedisStore, key: &str) -> tokenlease::Result<Option<TokenRecord>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { store.load(key).await })
}

/// A manager of the test server's client credentials with `store`.
fn manager_with(server: &TestServer, key: &str, store: RedisStore) -> Manager {
    let source = ClientCredentials::new(&server.token_url(), "demo-client", "demo-secret").unwrap();
    Manager::builder(source)
        .key(key)
        .store(Arc::new(store))
        .build()
}

/// A load that must fail with a store error, soon (no hang); its message.
fn store_error_within(store: &RedisStore, limit: Duration) -> String {
    let started = Instant::now();
    let err = load(store, "tls").expect_err("a store error");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(took < limit, "the error took {took:?}: {err}");
    eprintln!("store error after {took:?}: {err}");
    err.message().to_owned()
}

#[test]
fn managers_share_a_token_through_redis_over_tls() {
    let certs = TestCerts::new();
    let Some(redis) = RedisServer::start_tls(certs.dir.path()) else {
        return;
    };
    let url = redis.url();
    assert!(url.starts_with("rediss://127.0.0.1:"), "{url}");
    let open = || {
        RedisStore::open_with_options(
            &url,
            RedisOptions::new().prefix("tls:").ca_file(certs.ca_file()),
        )
        .unwrap()
    };
    let server = token_server();

    // The first manager fetches and saves; the server listens on TLS only (`--port 0`), so
    // the record went over TLS.
    let first = manager_with(&server, "tls", open());
    let token = first.token_blocking().unwrap().value().clone();
    assert_eq!(first.status().counters.fetches, 1);
    let record = load(&open(), "tls").unwrap().expect("the record in Redis");
    assert_eq!(record.value, token);

    // A second manager (another host) adopts the record: no token request.
    let second = manager_with(&server, "tls", open());
    assert_eq!(second.token_blocking().unwrap().value(), &token);
    let counters = second.status().counters;
    assert_eq!(
        (counters.fetches, counters.store_loads),
        (0, 1),
        "{counters:?}"
    );
    assert_eq!(server.stats().token_requests, 1);
    assert_eq!(first.status().counters.store_errors, 0);
    first.close();
    second.close();

    // The same server by name: the certificate is for localhost too.
    let by_name = url.replace("127.0.0.1", "localhost");
    let store = RedisStore::open_with_options(
        &by_name,
        RedisOptions::new().prefix("tls:").ca_file(certs.ca_file()),
    )
    .unwrap();
    assert_eq!(load(&store, "tls").unwrap().map(|r| r.value), Some(token));
}

#[test]
fn redis_over_tls_refuses_the_wrong_peer_and_plain_text_promptly() {
    let certs = TestCerts::new();
    let Some(redis) = RedisServer::start_tls(certs.dir.path()) else {
        return;
    };
    let limit = Duration::from_secs(5);
    let url = redis.url();

    // Plain text to the TLS port: a store error within the operation bound, no hang.
    let plain = RedisStore::open(&url.replace("rediss://", "redis://"), None).unwrap();
    let message = store_error_within(&plain, limit);
    assert!(message.contains("redis://127.0.0.1"), "{message}");
    assert!(
        message.contains("TLS-only port needs rediss://"),
        "{message}"
    );

    // The webpki roots (no ca_file) do not trust a private CA: certificate error.
    let default_roots = RedisStore::open(&url, None).unwrap();
    let message = store_error_within(&default_roots, limit);
    assert!(message.contains("TLS handshake failed"), "{message}");
    assert!(message.contains("invalid peer certificate"), "{message}");
    assert!(message.contains("ca_file"), "{message}");

    // Nor does another CA.
    let wrong_ca =
        RedisStore::open_with_options(&url, RedisOptions::new().ca_file(certs.other_ca_file()))
            .unwrap();
    let message = store_error_within(&wrong_ca, limit);
    assert!(message.contains("invalid peer certificate"), "{message}");

    // TLS to a plain-text server: a store error too, promptly.
    let Some(plain_server) = RedisServer::start() else {
        return;
    };
    let tls_to_plain = RedisStore::open_with_options(
        &plain_server.url().replace("redis://", "rediss://"),
        RedisOptions::new().ca_file(certs.ca_file()),
    )
    .unwrap();
    let message = store_error_within(&tls_to_plain, limit);
    assert!(message.contains("speak TLS on this port"), "{message}");
}

#[test]
fn a_manager_on_a_rediss_store_it_cannot_trust_still_serves_tokens() {
    let certs = TestCerts::new();
    let Some(redis) = RedisServer::start_tls(certs.dir.path()) else {
        return;
    };
    let server = token_server();
    // Untrusted (webpki roots only): every store call fails, the source still serves.
    let manager = manager_with(
        &server,
        "tls",
        RedisStore::open(&redis.url(), None).unwrap(),
    );
    let started = Instant::now();
    manager.token_blocking().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let counters = manager.status().counters;
    assert!(counters.store_errors >= 1, "{counters:?}");
    assert_eq!(server.stats().token_requests, 1);
    manager.close();
}

#[test]
fn a_configured_rediss_store_with_its_ca_file_shares_the_token() {
    let certs = TestCerts::new();
    let Some(redis) = RedisServer::start_tls(certs.dir.path()) else {
        return;
    };
    let server = token_server();
    let config = serde_json::json!({
        "source": {"type": "oauth2_client_credentials", "token_url": server.token_url(),
                   "client_id": "demo-client", "client_secret": "demo-secret"},
        "store": {"type": "redis", "url": redis.url(), "prefix": "cfg:",
                  "ca_file": certs.ca_file().display().to_string()},
        "key": "configured"
    })
    .to_string();
    let first = tokenlease::config::ManagerConfig::parse(&config)
        .and_then(|config| config.build())
        .unwrap();
    let token = first.token_blocking().unwrap().value().clone();
    let second = tokenlease::config::ManagerConfig::parse(&config)
        .and_then(|config| config.build())
        .unwrap();
    assert_eq!(second.token_blocking().unwrap().value(), &token);
    assert_eq!(
        server.stats().token_requests,
        1,
        "the second manager adopted over TLS"
    );
    assert_eq!(second.status().counters.store_errors, 0);
}
