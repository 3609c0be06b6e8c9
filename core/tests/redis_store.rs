//! The Redis store over TLS against a real `redis-server` (TLS port only, certificates made
//! by the test with rcgen) and the real test token server: managers share a token through
//! `rediss://` with the CA given as `ca_file`; the wrong peer (untrusted CA, plain text to a
//! TLS port, TLS to a plain-text port) is a store error within the operation bound.
//!
//! Needs `redis-server` (Debian's is built with TLS); without it the tests say so loudly and
//! return. The helper is the one of `tests/fleet.rs`, with a TLS mode.
#![cfg(feature = "redis")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenlease::http::ClientCredentials;
use tokenlease::redis_store::RedisOptions;
use tokenlease::{ErrorKind, Manager, RedisStore, Store, TokenRecord};
use tokenlease_test_server::{ServerConfig, TestServer};

fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

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

fn installed() -> bool {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED: redis-server is not installed; the Redis TLS tests did    !!!\n\
             !!! not run. Install it with: apt-get install -y redis-server           !!!\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
    }
    installed
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A throwaway `redis-server` on 127.0.0.1 (no persistence), stopped on drop.
struct RedisServer {
    child: Child,
    port: u16,
    tls: bool,
}

impl RedisServer {
    /// A plain-text server; `None` (after a loud message) without `redis-server`.
    fn start() -> Option<Self> {
        installed().then(|| {
            let port = free_port();
            Self::spawn(port, false, &["--port".to_owned(), port.to_string()])
        })
    }

    /// A server speaking only TLS (`--port 0`), with the certificates of `certs`; clients
    /// need no certificate of their own. `None` as for [`RedisServer::start`].
    fn start_tls(certs: &TestCerts) -> Option<Self> {
        if !installed() {
            return None;
        }
        let port = free_port();
        let path = |name: &str| certs.dir.path().join(name).display().to_string();
        let args = [
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path("server.pem"),
            "--tls-key-file".to_owned(),
            path("server.key"),
            "--tls-ca-cert-file".to_owned(),
            path("ca.pem"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        Some(Self::spawn(port, true, &args))
    }

    fn spawn(port: u16, tls: bool, listen: &[String]) -> Self {
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut server = RedisServer { child, port, tls };
        wait_for("redis-server to answer", Duration::from_secs(10), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server exited at start ({status}); built without TLS?");
            }
            server.ready()
        });
        server
    }

    /// PING answered (plain), or the TLS port accepting connections.
    fn ready(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            return true;
        }
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let Some(redis) = RedisServer::start_tls(&certs) else {
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
    let Some(redis) = RedisServer::start_tls(&certs) else {
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
    let Some(redis) = RedisServer::start_tls(&certs) else {
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
