//! Real processes sharing one store against the real test token server: a fleet makes one
//! token request per token lifetime, a lease holder killed with SIGKILL mid-refresh is taken
//! over, a restart reuses the stored token, Redis going down is survived.
//!
//! The workers are this test binary started again with `TOKENLEASE_FLEET_WORKER` set (see
//! `examples/fleet_worker.rs`, included below), so no other target has to be built first.
//! The tests run one at a time (they would compete for the CPU otherwise).

#[allow(dead_code)]
#[path = "support/fleet_harness.rs"]
mod fleet_harness;
#[allow(dead_code)]
#[path = "../examples/fleet_worker.rs"]
mod fleet_worker;

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use fleet_harness::{serial, TempDir, WORKER_HARNESS_ARGS};
use fleet_worker::{collect, run_if_worker, spawn_self_as_worker, WorkerOptions, WorkerReport};
use tokenlease::{BlockingStore, EncryptionKey, FileStore};
use tokenlease_test_server::{Control, ServerConfig, Stats, TestServer};

/// Not a test: the entry point of worker processes (returns at once in a normal run).
#[test]
fn worker_entry() {
    run_if_worker();
}

fn server(ttl: Duration) -> TestServer {
    TestServer::start_background(ServerConfig {
        default_ttl: ttl,
        refresh_for_client_credentials: true,
        ..Default::default()
    })
    .expect("start the test token server")
}

fn spawn(options: &WorkerOptions, envs: &[(&str, String)]) -> Child {
    spawn_self_as_worker(options, WORKER_HARNESS_ARGS, envs).expect("spawn a fleet worker")
}

struct FleetRun {
    reports: Vec<WorkerReport>,
    elapsed: Duration,
}

fn run_fleet(options: &WorkerOptions, processes: usize, envs: &[(&str, String)]) -> FleetRun {
    let started = Instant::now();
    let children: Vec<Child> = (0..processes).map(|_| spawn(options, envs)).collect();
    let reports = children.into_iter().map(collect).collect();
    FleetRun {
        reports,
        elapsed: started.elapsed(),
    }
}

/// The fleet's evidence of "one token request per lifetime".
///
/// Every token the server issued was seen by the fleet's callers, and sorted by expiry any
/// two consecutive tokens are at least one refresh interval apart: a token obtained at `t`
/// is only replaced from its refresh point `t + ttl - advisory - jitter` on, so the next
/// one expires at least `ttl - advisory - jitter` later (3 s - 1 s - at most 50 ms here).
/// A duplicate request (two processes refreshing in the same lifetime) would show up as two
/// tokens a few milliseconds apart. We allow `ttl - advisory - 500 ms` = 1.5 s (clock
/// conversions and scheduling on a loaded 2-core machine); peers without a shared store
/// make one request per process per lifetime, i.e. gaps of ~0. With the run time this
/// bounds the count: at most `2 + elapsed / min_gap` (the first token plus one per refresh
/// interval, plus one for the interval the run ends in), at least `elapsed / ttl`.
fn assert_one_request_per_lifetime(
    run: &FleetRun,
    stats: &Stats,
    ttl: Duration,
    advisory: Duration,
) {
    // Every token the endpoint handed out, served or not (a background refresh that ends
    // as the run stops is never served): two of them within one lifetime would be a
    // single-flight violation across processes.
    let mut tokens: HashMap<u64, u64> = HashMap::new();
    for report in &run.reports {
        assert_eq!(
            report.errors, 0,
            "caller errors in worker {}: {:?}",
            report.pid, report.error_samples
        );
        assert!(report.ok > 0, "worker {} got no token", report.pid);
        tokens.extend(&report.requested);
    }
    for report in &run.reports {
        for hash in report.tokens.keys() {
            assert!(
                tokens.contains_key(hash),
                "worker {} served a token no worker requested",
                report.pid
            );
        }
    }
    let mut expiries: Vec<u64> = tokens.values().copied().collect();
    expiries.sort_unstable();
    let min_gap = ttl - advisory - Duration::from_millis(500);
    for pair in expiries.windows(2) {
        let gap = Duration::from_millis(pair[1] - pair[0]);
        assert!(
            gap >= min_gap,
            "two tokens in one lifetime ({gap:?} apart); expiries {expiries:?}, stats {stats:?}"
        );
    }
    assert_eq!(stats.token_errors, 0, "{stats:?}");
    assert_eq!(
        stats.token_requests,
        tokens.len() as u64,
        "every token request is accounted for; stats {stats:?}"
    );
    let lifetimes = run.elapsed.as_secs_f64() / ttl.as_secs_f64();
    let most = 2 + (run.elapsed.as_secs_f64() / min_gap.as_secs_f64()) as u64;
    assert!(
        (lifetimes.floor() as u64..=most).contains(&stats.token_requests),
        "{} token requests in {:.1} lifetimes (at most {most}); {stats:?}",
        stats.token_requests,
        lifetimes
    );
    eprintln!(
        "fleet: {} processes, {} token requests in {:.1} s ({:.1} lifetimes), {} calls, 0 errors",
        run.reports.len(),
        stats.token_requests,
        run.elapsed.as_secs_f64(),
        lifetimes,
        run.reports.iter().map(|r| r.ok).sum::<u64>()
    );
}

fn fleet_options(token_url: String, store: String) -> WorkerOptions {
    WorkerOptions {
        token_url,
        store,
        threads: 16,
        duration: Duration::from_secs(10),
        advisory: Duration::from_secs(1),
        mandatory: Duration::from_millis(500),
        ..Default::default()
    }
}

const FLEET_TTL: Duration = Duration::from_secs(3);

#[test]
fn eight_processes_sharing_a_file_store_make_one_request_per_lifetime() {
    let _serial = serial();
    let server = server(FLEET_TTL);
    let dir = TempDir::new("file");
    // Encrypted, so the refresh token is shared too: the lease holder refreshes with the
    // latest rotation and the server (which revokes the family on reuse) never sees a reuse.
    let key = EncryptionKey::generate().to_base64().expose().to_owned();
    let options = fleet_options(server.token_url(), dir.spec());
    let run = run_fleet(&options, 8, &[("TOKENLEASE_FLEET_KEY", key)]);
    let stats = server.stats();
    assert_one_request_per_lifetime(&run, &stats, FLEET_TTL, options.advisory);
    assert!(
        stats.grants.get("refresh_token").copied().unwrap_or(0) >= 1,
        "the shared refresh token was used: {stats:?}"
    );
    // Only records, leases and lock files remain (no temp files).
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            [".token", ".lease", ".lock"]
                .iter()
                .any(|suffix| name.ends_with(suffix)),
            "unexpected file {name}"
        );
    }
}

#[test]
fn a_lease_holder_killed_mid_refresh_is_taken_over() {
    let _serial = serial();
    let ttl = Duration::from_secs(8);
    let lease_ttl = Duration::from_secs(4);
    let server = server(ttl);
    let dir = TempDir::new("kill");
    let options = WorkerOptions {
        token_url: server.token_url(),
        store: dir.spec(),
        threads: 4,
        duration: Duration::from_secs(11),
        // Refresh at 4 s, callers wait from 7.5 s: a 2 s refresh, killed and redone, ends
        // well before any caller has to wait.
        advisory: Duration::from_secs(4),
        mandatory: Duration::from_millis(500),
        lease_ttl,
        lease_wait: Duration::from_secs(10),
        ..Default::default()
    };
    let mut children: Vec<Child> = (0..4).map(|_| spawn(&options, &[])).collect();
    let store = FileStore::open(dir.path()).unwrap();
    wait_for(
        "the first token in the store",
        Duration::from_secs(10),
        || BlockingStore::load(&store, &options.key).unwrap().is_some(),
    );
    server.control(Control {
        latency_ms: Some(2000),
        ..Default::default()
    });
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let mut holder = None;
    wait_for(
        "a worker holding the lease",
        Duration::from_secs(10),
        || {
            holder = store
                .lease_info(&options.key)
                .unwrap()
                .filter(|info| info.is_held() && pids.contains(&info.pid));
            holder.is_some()
        },
    );
    let holder = holder.unwrap();
    let index = pids.iter().position(|&pid| pid == holder.pid).unwrap();
    let mut victim = children.remove(index);
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let killed_at = Instant::now();
    wait_for("another worker taking the lease over", lease_ttl, || {
        store
            .lease_info(&options.key)
            .unwrap()
            .is_some_and(|info| info.pid != holder.pid && info.fencing_token > holder.fencing_token)
    });
    let took = killed_at.elapsed();
    server.control(Control {
        latency_ms: Some(0),
        ..Default::default()
    });
    let reports: Vec<WorkerReport> = children.into_iter().map(collect).collect();
    for report in &reports {
        assert_eq!(
            (report.errors, report.errors_with_valid_token),
            (0, 0),
            "caller errors in worker {}: {:?}",
            report.pid,
            report.error_samples
        );
    }
    // The record is whole and newer than the one the killed holder was replacing.
    let record = BlockingStore::load(&store, &options.key)
        .unwrap()
        .expect("a record");
    let stats = server.stats();
    assert!(stats.token_requests >= 3, "{stats:?}");
    assert!(record.expires_at_ms > tokenlease_ms(holder.expires_at) - 4000);
    eprintln!(
        "kill -9: lease taken over {took:?} after the holder died (lease TTL {lease_ttl:?}); \
         {} token requests",
        stats.token_requests
    );
}

fn tokenlease_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_restarted_program_reuses_the_stored_token() {
    let _serial = serial();
    let server = server(Duration::from_secs(600));
    let plain = TempDir::new("restart");
    let options = WorkerOptions {
        token_url: server.token_url(),
        store: plain.spec(),
        threads: 1,
        duration: Duration::ZERO,
        ..Default::default()
    };
    let first = collect(spawn(&options, &[]));
    assert_eq!((first.ok, first.fetches), (1, 1), "{first:?}");
    let second = collect(spawn(&options, &[]));
    assert_eq!((second.ok, second.fetches), (1, 0), "{second:?}");
    assert_eq!(second.store_loads, 1);
    assert_eq!(second.tokens, first.tokens, "the same token");
    assert_eq!(server.stats().token_requests, 1, "0 requests on restart");

    // Encrypted: the right key reuses the token; a wrong key is a store error (reported,
    // never a silent fallback) and the program fetches a new token.
    let sealed = TempDir::new("restart-sealed");
    let options = WorkerOptions {
        store: sealed.spec(),
        ..options
    };
    let key = EncryptionKey::generate().to_base64().expose().to_owned();
    let env = [("TOKENLEASE_FLEET_KEY", key)];
    let first = collect(spawn(&options, &env));
    let second = collect(spawn(&options, &env));
    assert_eq!((first.fetches, second.fetches), (1, 0));
    assert_eq!(second.tokens, first.tokens);
    let wrong = [(
        "TOKENLEASE_FLEET_KEY",
        EncryptionKey::generate().to_base64().expose().to_owned(),
    )];
    let third = collect(spawn(&options, &wrong));
    assert_eq!((third.ok, third.errors, third.fetches), (1, 0, 1));
    assert!(third.store_errors >= 1, "{third:?}");
    assert_eq!(server.stats().token_requests, 3);
}

fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(feature = "redis")]
#[allow(dead_code)]
#[path = "support/redis_server.rs"]
mod redis_server;

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use tokenlease::{RedisStore, Store};

    use super::redis_server::RedisServer;

    #[test]
    fn eight_processes_sharing_redis_make_one_request_per_lifetime() {
        let _serial = serial();
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let server = server(FLEET_TTL);
        let options = fleet_options(server.token_url(), format!("redis:{}", redis.url()));
        let run = run_fleet(&options, 8, &[]);
        assert_one_request_per_lifetime(&run, &server.stats(), FLEET_TTL, options.advisory);
    }

    /// Loads `key` with a fresh store and runtime (as a separate host would).
    fn stored(url: &str, key: &str) -> tokenlease::Result<Option<tokenlease::TokenRecord>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = RedisStore::open(url, Some("fleet:"))?;
        runtime.block_on(async { store.load(key).await })
    }

    #[test]
    fn redis_down_keeps_the_manager_serving_and_it_recovers() {
        let _serial = serial();
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let (url, port) = (redis.url(), redis.port());
        let server = server(Duration::from_secs(3));
        let options = WorkerOptions {
            token_url: server.token_url(),
            store: format!("redis:{url}"),
            key: "down".into(),
            advisory: Duration::from_secs(1),
            mandatory: Duration::from_millis(300),
            lease_ttl: Duration::from_secs(2),
            lease_wait: Duration::from_secs(2),
            ..Default::default()
        };
        let manager = fleet_worker::build_manager(&options).unwrap();
        let first = manager.token_blocking().unwrap().value().clone();
        assert_eq!(
            stored(&url, "down").unwrap().map(|record| record.value),
            Some(first)
        );
        drop(redis);
        assert_eq!(
            stored(&url, "down").unwrap_err().kind(),
            tokenlease::ErrorKind::Store
        );
        let serve_for = |how_long: Duration| {
            let until = Instant::now() + how_long;
            while Instant::now() < until {
                manager
                    .token_blocking()
                    .expect("a token while Redis is down");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // Two refreshes (every ~2 s) with Redis down: served from the source.
        serve_for(Duration::from_millis(4500));
        let status = manager.status();
        assert!(status.counters.store_errors >= 1, "{status:?}");
        assert!(server.stats().token_requests >= 2);
        let redis = RedisServer::start_on(port);
        assert_eq!(stored(&url, "down").unwrap(), None, "a new, empty Redis");
        serve_for(Duration::from_millis(100));
        wait_for(
            "a refresh saved to Redis again",
            Duration::from_secs(6),
            || {
                manager
                    .token_blocking()
                    .expect("a token after Redis is back");
                std::thread::sleep(Duration::from_millis(10));
                stored(&url, "down").is_ok_and(|record| record.is_some())
            },
        );
        drop(redis);
        manager.close();
    }
}
