//! Fleet benchmark: token requests per token lifetime for N processes sharing a file store
//! (against peers without one), store read latency at start-up, and lease acquisition
//! latency under contention.
//!
//! Run: `cargo bench -p tokenlease --bench fleet` (about 70 s). `cargo test --benches` runs
//! a small smoke pass instead. Worker processes are this binary started again (see
//! `examples/fleet_worker.rs`).

#[allow(dead_code)]
#[path = "../examples/fleet_worker.rs"]
mod fleet_worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleet_worker::{collect, run_if_worker, spawn_self_as_worker, WorkerOptions};
use tokenlease::{BlockingStore, EncryptionKey, FileStore, LeaseOutcome, Store, TokenRecord};
use tokenlease_test_server::{ServerConfig, TestServer};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        TempDir(std::env::temp_dir().join(format!(
            "tokenlease-bench-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn summary(samples: &mut [Duration]) -> String {
    format!(
        "p50 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}  (n={})",
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        percentile(samples, 1.0),
        samples.len()
    )
}

fn record() -> TokenRecord {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    TokenRecord {
        version: TokenRecord::VERSION,
        value: "bench-access-token-0123456789abcdef0123456789abcdef".into(),
        token_type: "Bearer".into(),
        scopes: vec!["read".into(), "write".into()],
        refresh_token: Some("bench-refresh-token-0123456789abcdef".into()),
        id_token: None,
        idle: None,
        attributes: Default::default(),
        expires_at_ms: now + 3_600_000,
        obtained_at_ms: now,
    }
}

/// Token requests per lifetime for `processes` processes, sharing a file store or not.
fn fleet(processes: usize, shared: bool) {
    let ttl = Duration::from_secs(3);
    let server = TestServer::start_background(ServerConfig {
        default_ttl: ttl,
        ..Default::default()
    })
    .expect("test server");
    let dir = TempDir::new("fleet");
    let options = WorkerOptions {
        token_url: server.token_url(),
        store: if shared {
            format!("file:{}", dir.0.display())
        } else {
            "memory".to_owned()
        },
        threads: 4,
        duration: Duration::from_secs(6),
        advisory: Duration::from_secs(1),
        mandatory: Duration::from_millis(500),
        ..Default::default()
    };
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|_| spawn_self_as_worker(&options, &[], &[]).expect("spawn worker"))
        .collect();
    let reports: Vec<_> = children.into_iter().map(collect).collect();
    let elapsed = started.elapsed();
    let requests = server.stats().token_requests;
    // A token is replaced every `ttl - advisory` (2 s): that is one "lifetime" here.
    // Lifetimes begun during the run: the first token, then one per interval.
    let lifetimes = (elapsed.as_secs_f64() / (ttl - options.advisory).as_secs_f64()).floor() + 1.0;
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    println!(
        "fleet  {processes} processes  {:<10} {requests:>3} token requests in {lifetimes} lifetimes ({:.1} s) = {:>4.2} per lifetime  (caller errors: {errors})",
        if shared { "file store" } else { "no store" },
        elapsed.as_secs_f64(),
        requests as f64 / lifetimes
    );
}

/// Opening a store and reading the record, as a restarted process does.
fn startup_read(iterations: usize) {
    let dir = TempDir::new("read");
    let key = EncryptionKey::generate();
    for (label, encrypted) in [("plaintext", false), ("encrypted", true)] {
        let open = || {
            if encrypted {
                FileStore::open_encrypted(&dir.0, key.clone()).unwrap()
            } else {
                FileStore::open(&dir.0).unwrap()
            }
        };
        BlockingStore::save(&open(), label, &record()).unwrap();
        let mut samples: Vec<Duration> = (0..iterations)
            .map(|_| {
                let started = Instant::now();
                let store = open();
                let loaded = BlockingStore::load(&store, label).unwrap();
                assert!(loaded.is_some());
                started.elapsed()
            })
            .collect();
        println!("startup open+load  {label:<10} {}", summary(&mut samples));
    }
}

/// A restarted process: time to its first token, from the store vs from the server.
fn restart(runs: usize) {
    let server = TestServer::start_background(ServerConfig::default()).expect("test server");
    let dir = TempDir::new("restart");
    let options = WorkerOptions {
        token_url: server.token_url(),
        store: format!("file:{}", dir.0.display()),
        threads: 1,
        duration: Duration::ZERO,
        ..Default::default()
    };
    let first = collect(spawn_self_as_worker(&options, &[], &[]).expect("spawn"));
    let mut from_store: Vec<Duration> = (0..runs)
        .map(|_| {
            let report = collect(spawn_self_as_worker(&options, &[], &[]).expect("spawn"));
            assert_eq!(report.fetches, 0);
            Duration::from_micros(report.first_token_us)
        })
        .collect();
    println!(
        "restart first token: from the server {:?} (1 run); from the file store {}",
        Duration::from_micros(first.first_token_us),
        summary(&mut from_store)
    );
}

/// `threads` contenders, each with its own store handle (as separate processes have), all
/// asking for the lease at the same moment (as a fleet does at a refresh point); each
/// holder writes a fenced record and releases. Repeated for `rounds` rounds. The k-th
/// contender of a round waits for the k-1 holders before it (plus up to one 10 ms poll).
fn lease_contention(threads: usize, rounds: usize) {
    let dir = TempDir::new("lease");
    let samples = std::sync::Mutex::new(Vec::new());
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let store = Arc::new(FileStore::open(&dir.0).unwrap());
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let record = record();
                for _ in 0..rounds {
                    barrier.wait();
                    runtime.block_on(async {
                        let asked = Instant::now();
                        let outcome = store
                            .acquire_lease("k", Duration::from_secs(10), Duration::from_secs(30))
                            .await
                            .unwrap();
                        let waited = asked.elapsed();
                        let LeaseOutcome::Acquired(lease) = outcome else {
                            panic!("lease not acquired");
                        };
                        store.save_fenced("k", &record, &*lease).await.unwrap();
                        lease.release().await.unwrap();
                        samples.lock().unwrap().push(waited);
                    });
                    barrier.wait();
                }
            });
        }
    });
    let mut samples = samples.into_inner().unwrap();
    println!(
        "lease acquisition, {threads} contenders at once: {}",
        summary(&mut samples)
    );
}

fn main() {
    run_if_worker();
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches
    }
    let measuring = std::env::args().any(|arg| arg == "--bench");
    if measuring {
        for processes in [1, 2, 4, 8] {
            fleet(processes, true);
        }
        for processes in [2, 8] {
            fleet(processes, false);
        }
        startup_read(1000);
        restart(5);
        for threads in [1, 4, 8] {
            lease_contention(threads, 30);
        }
    } else {
        startup_read(20);
        restart(1);
        lease_contention(2, 5);
    }
}
