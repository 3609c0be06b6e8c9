//! The refresh lease under faults, with real processes sharing an encrypted file store and
//! the real test token server rotating refresh tokens with reuse detection (a refresh token
//! redeemed twice revokes its whole family, and the server counts a token error):
//! a refresh slower than the lease TTL, lease errors injected into the store, and a revoke
//! during a refresh. Each ends with 0 reuse detections.
//!
//! Workers are this test binary started again (see `examples/fleet_worker.rs`).

#[allow(dead_code)]
#[path = "support/fleet_harness.rs"]
mod fleet_harness;
#[allow(dead_code)]
#[path = "../examples/fleet_worker.rs"]
mod fleet_worker;

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_harness::{serial, TempDir, WORKER_HARNESS_ARGS};
use fleet_worker::{collect, run_if_worker, spawn_self_as_worker, WorkerOptions, WorkerReport};
use tokenlease::oauth2::ClientCredentials;
use tokenlease::{BlockingStore, EncryptionKey, ErrorKind, FileStore, Manager, Policy};
use tokenlease_test_server::{Control, ServerConfig, TestServer};

/// Not a test: the entry point of worker processes (returns at once in a normal run).
#[test]
fn worker_entry() {
    run_if_worker();
}

fn rotating_server(ttl: Duration) -> TestServer {
    TestServer::start_background(ServerConfig {
        default_ttl: ttl,
        refresh_for_client_credentials: true,
        rotate_refresh_tokens: true,
        ..Default::default()
    })
    .expect("start the test token server")
}

fn spawn_all(options: &WorkerOptions, processes: usize, key: &str) -> Vec<Child> {
    (0..processes)
        .map(|_| {
            spawn_self_as_worker(
                options,
                WORKER_HARNESS_ARGS,
                &[("TOKENLEASE_FLEET_KEY", key.to_owned())],
            )
            .expect("spawn a worker")
        })
        .collect()
}

fn wait_for(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn no_caller_errors(reports: &[WorkerReport]) {
    for report in reports {
        assert!(report.ok > 0, "worker {} got no token", report.pid);
        assert_eq!(
            report.errors, 0,
            "caller errors in worker {}: {:?}",
            report.pid, report.error_samples
        );
    }
}

#[test]
fn a_refresh_slower_than_the_lease_ttl_is_not_repeated_by_a_sibling() {
    let _serial = serial();
    let server = rotating_server(Duration::from_secs(16));
    let dir = TempDir::new("slow");
    let key = EncryptionKey::generate().to_base64().expose().to_owned();
    let options = WorkerOptions {
        token_url: server.token_url(),
        store: dir.spec(),
        threads: 4,
        // A 5 s refresh of a 16 s token, 7 s before its expiry: the new token arrives with
        // 11 s left, so each lifetime has one refresh.
        duration: Duration::from_secs(20),
        advisory: Duration::from_secs(7),
        mandatory: Duration::from_millis(500),
        // Renewed every ~670 ms through each 5 s refresh; without renewal a sibling would
        // take the lease 2 s into the refresh and redeem the same refresh token.
        lease_ttl: Duration::from_secs(2),
        // Siblings wait out the slow holder (on a loaded machine, a few refreshes in turn).
        lease_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let children = spawn_all(&options, 4, &key);
    let store =
        FileStore::open_encrypted(dir.path(), EncryptionKey::from_base64(&key).expect("key"))
            .expect("store");
    wait_for("the first token", Duration::from_secs(10), || {
        BlockingStore::load(&store, &options.key)
            .ok()
            .flatten()
            .is_some()
    });
    server.control(Control {
        latency_ms: Some(5000),
        ..Default::default()
    });
    let reports: Vec<WorkerReport> = children.into_iter().map(collect).collect();
    let stats = server.stats();
    no_caller_errors(&reports);
    assert_eq!(
        stats.token_errors, 0,
        "no refresh token was redeemed twice: {stats:?}"
    );
    assert!(
        stats.grants.get("refresh_token").copied().unwrap_or(0) >= 1,
        "slow refreshes with the shared refresh token happened: {stats:?}"
    );
}

#[test]
fn lease_errors_never_lead_to_concurrent_rotation() {
    let _serial = serial();
    let server = rotating_server(Duration::from_secs(4));
    let dir = TempDir::new("lease-error");
    let key = EncryptionKey::generate().to_base64().expose().to_owned();
    let options = WorkerOptions {
        token_url: server.token_url(),
        store: dir.spec(),
        threads: 4,
        duration: Duration::from_secs(10),
        advisory: Duration::from_secs(2),
        mandatory: Duration::from_millis(500),
        ..Default::default()
    };
    // Every lease request fails from the start: the lease file is a FIFO the store refuses.
    let store =
        FileStore::open_encrypted(dir.path(), EncryptionKey::from_base64(&key).expect("key"))
            .expect("store");
    let lease = store.lease_path(&options.key);
    let fifo = std::ffi::CString::new(lease.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let children = spawn_all(&options, 4, &key);
    let reports: Vec<WorkerReport> = children.into_iter().map(collect).collect();
    let stats = server.stats();
    no_caller_errors(&reports);
    assert!(
        reports
            .iter()
            .map(|report| report.store_errors)
            .sum::<u64>()
            > 0,
        "lease errors happened"
    );
    assert_eq!(
        stats.grants.get("refresh_token").copied().unwrap_or(0),
        0,
        "no refresh token was redeemed without the lease: {stats:?}"
    );
    assert_eq!(stats.token_errors, 0, "{stats:?}");
    assert!(
        stats.grants.get("client_credentials").copied().unwrap_or(0) > 4,
        "refreshes used the primary grant: {stats:?}"
    );
}

#[test]
fn a_revoke_during_a_refresh_sticks() {
    let _serial = serial();
    let server = rotating_server(Duration::from_secs(60));
    let dir = TempDir::new("revoke");
    let store =
        Arc::new(FileStore::open_encrypted(dir.path(), EncryptionKey::generate()).expect("store"));
    let source = ClientCredentials::new(&server.token_url(), "demo-client", "demo-secret")
        .unwrap()
        .revocation_url(&server.revoke_url())
        .unwrap();
    let manager = Manager::builder(source)
        .store(store.clone())
        .policy(Policy::builder().jitter_fraction(0.0).build().unwrap())
        .build();
    let first = manager.token_blocking().unwrap().into_arc();
    assert!(first.refresh_token().is_some());
    // The next refresh (with the refresh token) takes 1.5 s; the revoke comes in its middle.
    server.control(Control {
        latency_ms: Some(1500),
        ..Default::default()
    });
    assert!(manager.invalidate(&first));
    let caller = {
        let manager = manager.clone();
        std::thread::spawn(move || manager.token_blocking().map(|token| token.into_arc()))
    };
    std::thread::sleep(Duration::from_millis(400));
    manager.revoke_blocking().expect("revoke");
    let caller = caller.join().unwrap();
    assert_eq!(
        caller.map(|_| ()).unwrap_err().kind(),
        ErrorKind::Cancelled,
        "the refresh overtaken by the revoke hands out nothing"
    );
    assert!(
        BlockingStore::load(&*store, "default").unwrap().is_none(),
        "logout sticks in the store"
    );
    assert_eq!(manager.status().generation, 0, "and in memory");
    wait_for(
        "the late token revoked at the server",
        Duration::from_secs(10),
        || server.stats().revocations >= 1,
    );
    server.control(Control {
        latency_ms: Some(0),
        ..Default::default()
    });
    let again = manager.token_blocking().expect("a new login after logout");
    assert_ne!(again.value().expose(), first.value().expose());
    let stats = server.stats();
    assert_eq!(stats.token_errors, 0, "no reuse detected: {stats:?}");
}
