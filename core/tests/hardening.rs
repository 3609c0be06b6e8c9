//! Foreign code and stores that hang, slow listeners, a lease that must not lapse, revoke
//! racing a refresh, and an outage sweep: the manager is never wedged and never fails a
//! caller when a request would have succeeded.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use parking_lot::Mutex;
use tokenlease::clock::ManualClock;
use tokenlease::{
    BlockingSource, BlockingSourceAdapter, Clock, ErrorKind, Event, FetchedToken, LeaseOutcome,
    Manager, MemoryStore, Policy, SecretString, Store, TokenRecord,
};

/// Runs `body` on a thread and fails (instead of hanging the suite) after `limit`.
fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(body());
    });
    result
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}: the manager is wedged"))
}

/// A store whose every call hangs forever (async), like a foreign store that never returns.
#[derive(Debug, Default)]
struct HangingStore {
    calls: AtomicUsize,
}

#[async_trait]
impl Store for HangingStore {
    async fn load(&self, _key: &str) -> tokenlease::Result<Option<TokenRecord>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn save(&self, _key: &str, _record: &TokenRecord) -> tokenlease::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn delete(&self, _key: &str) -> tokenlease::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

fn fast_policy() -> tokenlease::policy::PolicyBuilder {
    Policy::builder()
        .jitter_fraction(0.0)
        .store_timeout(Duration::from_millis(200))
        .source_timeout(Duration::from_millis(300))
        .backoff(Duration::from_millis(20), Duration::from_millis(50))
        .waiter_timeout(Duration::from_secs(5))
}

#[test]
fn a_store_that_never_answers_costs_a_store_timeout_and_the_source_still_serves() {
    within(Duration::from_secs(30), || {
        let store = Arc::new(HangingStore::default());
        let source = Arc::new(ScriptedSource::new(Duration::from_secs(600)));
        let manager = Manager::builder_from_arc(source.clone())
            .store(store.clone())
            .policy(fast_policy().build().unwrap())
            .build();
        let token = manager.token_blocking().expect("served from the source");
        assert!(token.value().expose().starts_with("secret-fetch"));
        let status = manager.status();
        assert!(status.counters.store_timeouts >= 2, "{status:?}"); // load and save
        assert!(!status.refreshing, "no flight is pinned by the hung store");
        // The flight is not pinned: an invalidation leads to a new refresh.
        assert!(manager.invalidate(&token));
        let second = manager.token_blocking().expect("second refresh");
        assert_ne!(second.generation(), token.generation());
        // Revoke returns (with memory cleared) although the store's delete hangs.
        manager.revoke_blocking().expect("revoke returns");
        assert_eq!(manager.status().generation, 0);
        assert!(store.calls.load(Ordering::SeqCst) >= 5);
    });
}

/// A blocking (foreign-style) source whose first call hangs well past the source timeout,
/// then answers with a rotated refresh token. Records how many calls run at once.
#[derive(Debug)]
struct SlowFirstCall {
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    calls: AtomicUsize,
    first_call_takes: Duration,
}

impl BlockingSource for SlowFirstCall {
    fn fetch(&self) -> tokenlease::Result<FetchedToken> {
        let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now_running, Ordering::SeqCst);
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call == 0 {
            std::thread::sleep(self.first_call_takes);
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(
            FetchedToken::bearer(format!("late-value-{call}"), Duration::from_secs(600))
                .with_refresh_token(format!("rotated-refresh-{call}")),
        )
    }
}

#[test]
fn a_hung_foreign_call_never_overlaps_its_retry_and_its_late_token_is_kept() {
    within(Duration::from_secs(30), || {
        let source = Arc::new(SlowFirstCall {
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            first_call_takes: Duration::from_millis(1500),
        });
        let store = Arc::new(MemoryStore::new());
        let manager = Manager::builder(BlockingSourceAdapter::new(ArcSource(source.clone())))
            .store(store.clone())
            .policy(fast_policy().build().unwrap())
            .build();
        let first = manager.token_blocking();
        assert_eq!(
            first.as_ref().map(|_| ()).unwrap_err().kind(),
            ErrorKind::Timeout
        );
        // Callers keep trying while the first call hangs; none of them starts a second call.
        let deadline = Instant::now() + Duration::from_secs(10);
        let token = loop {
            if let Ok(token) = manager.token_blocking() {
                break token;
            }
            assert!(Instant::now() < deadline, "no token after the late answer");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(source.most_at_once.load(Ordering::SeqCst), 1);
        assert_eq!(
            token.value().expose(),
            "late-value-0",
            "the late token is installed, not thrown away"
        );
        let record = store.get("default").expect("the late token was persisted");
        assert_eq!(
            record.refresh_token.as_ref().map(SecretString::expose),
            Some("rotated-refresh-0"),
            "its rotated refresh token is persisted"
        );
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
        assert!(manager.status().counters.source_timeouts >= 1);
    });
}

/// `BlockingSource` for an `Arc` the test keeps a handle on.
#[derive(Debug)]
struct ArcSource<S>(Arc<S>);

impl<S: BlockingSource> BlockingSource for ArcSource<S> {
    fn fetch(&self) -> tokenlease::Result<FetchedToken> {
        self.0.fetch()
    }
}

#[test]
fn a_slow_listener_never_delays_another_managers_waiters() {
    within(Duration::from_secs(30), || {
        let sleeping = Arc::new(AtomicBool::new(false));
        let sleeping_in_listener = sleeping.clone();
        let slow = Manager::builder(ScriptedSource::new(Duration::from_secs(600)))
            .listener(Arc::new(move |_key: &str, event: &Event| {
                if matches!(event, Event::RefreshStarted { .. }) {
                    sleeping_in_listener.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs(2));
                }
            }))
            .build();
        slow.token_blocking().unwrap();
        wait_until("the listener is asleep", || sleeping.load(Ordering::SeqCst));
        // A second manager whose source never answers: its caller must get its Timeout
        // after its own 100 ms waiter timeout, not after the other manager's listener.
        let (hanging, _gate) = ScriptedSource::new(Duration::from_secs(600)).gated();
        let other = Manager::builder(hanging)
            .policy(
                Policy::builder()
                    .waiter_timeout(Duration::from_millis(100))
                    .build()
                    .unwrap(),
            )
            .build();
        let started = Instant::now();
        let err = other.token_blocking().map(|_| ()).unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(
            waited < Duration::from_millis(1500),
            "waited {waited:?}: the listener blocked the shared background thread"
        );
    });
}

#[test]
fn a_full_event_queue_drops_and_counts_instead_of_blocking() {
    within(Duration::from_secs(60), || {
        let release = Arc::new(AtomicBool::new(false));
        let release_in_listener = release.clone();
        let clock = ManualClock::new();
        let manager = Manager::builder(ScriptedSource::new(Duration::from_secs(600)))
            .clock(Arc::new(clock.clone()))
            .listener(Arc::new(move |_key: &str, _event: &Event| {
                while !release_in_listener.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }))
            .build();
        let token = manager.token_blocking().unwrap().into_arc();
        // Each invalidation and refresh queues events; the listener holds the queue.
        let mut current = token;
        for _ in 0..(tokenlease::events::EVENT_QUEUE_CAPACITY / 2 + 100) {
            manager.invalidate(&current);
            current = manager.token_blocking().unwrap().into_arc();
        }
        let dropped = manager.status().counters.events_dropped;
        release.store(true, Ordering::SeqCst);
        assert!(dropped > 0, "a stuck listener made events drop, counted");
        assert!(manager.flush_events(Duration::from_secs(20)));
    });
}

#[test]
fn revoke_during_a_refresh_wins() {
    within(Duration::from_secs(30), || {
        let (source, gate) = ScriptedSource::new(Duration::from_secs(600)).gated();
        let source = Arc::new(source);
        let store = Arc::new(MemoryStore::new());
        let manager = Manager::builder_from_arc(source.clone())
            .store(store.clone())
            .policy(
                fast_policy()
                    .source_timeout(Duration::from_secs(10))
                    .build()
                    .unwrap(),
            )
            .build();
        let caller = {
            let manager = manager.clone();
            std::thread::spawn(move || manager.token_blocking().map(|token| token.generation()))
        };
        wait_until("the source was called", || source.calls() == 1);
        let revoker = {
            let manager = manager.clone();
            std::thread::spawn(move || manager.revoke_blocking())
        };
        // Let the revoke reach the manager before the source answers (the revoke itself
        // then waits for the source: calls never overlap).
        std::thread::sleep(Duration::from_millis(100));
        gate.add_permits(10);
        let caller_result = caller.join().unwrap();
        revoker.join().unwrap().expect("revoke succeeds");
        assert_eq!(
            caller_result.unwrap_err().kind(),
            ErrorKind::Cancelled,
            "the refresh overtaken by the revoke does not hand out its token"
        );
        assert!(store.get("default").is_none(), "logout sticks in the store");
        assert_eq!(manager.status().generation, 0, "and in memory");
        wait_until("the late token was revoked at the server", || {
            source.revokes.load(Ordering::SeqCst) >= 1
        });
        // The next call logs in again.
        assert!(manager.token_blocking().is_ok());
    });
}

/// Which store call waits for a permit (a slow Redis `SET`/`DEL`, a stuck disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Save,
    Delete,
}

/// A memory store whose `held` call says when it started and then waits for a permit, and
/// whose saves can be made to fail (a full disk, a Redis failover).
#[derive(Debug)]
struct ScriptedStore {
    inner: MemoryStore,
    held: Option<Held>,
    entered: AtomicBool,
    permits: Arc<tokio::sync::Semaphore>,
    failing_saves: AtomicBool,
}

impl ScriptedStore {
    fn new(held: Option<Held>) -> Self {
        Self {
            inner: MemoryStore::new(),
            held,
            entered: AtomicBool::new(false),
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            failing_saves: AtomicBool::new(false),
        }
    }

    async fn hold(&self, call: Held) {
        if self.held == Some(call) {
            self.entered.store(true, Ordering::SeqCst);
            let _permit = self.permits.acquire().await;
        }
    }
}

#[async_trait]
impl Store for ScriptedStore {
    async fn load(&self, key: &str) -> tokenlease::Result<Option<TokenRecord>> {
        Store::load(&self.inner, key).await
    }
    async fn save(&self, key: &str, record: &TokenRecord) -> tokenlease::Result<()> {
        self.hold(Held::Save).await;
        if self.failing_saves.load(Ordering::SeqCst) {
            return Err(tokenlease::Error::new(ErrorKind::Store, "disk full"));
        }
        Store::save(&self.inner, key, record).await
    }
    async fn delete(&self, key: &str) -> tokenlease::Result<()> {
        self.hold(Held::Delete).await;
        Store::delete(&self.inner, key).await
    }
}

/// A manager of a scripted source over a scripted store (store calls may take up to 10 s:
/// a held call is released by the test, never timed out).
fn over_a_scripted_store(held: Option<Held>) -> (Arc<ScriptedSource>, Arc<ScriptedStore>, Manager) {
    let source = Arc::new(ScriptedSource::new(Duration::from_secs(600)));
    let store = Arc::new(ScriptedStore::new(held));
    let manager = Manager::builder_from_arc(source.clone())
        .store(store.clone())
        .policy(
            fast_policy()
                .store_timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .build();
    (source, store, manager)
}

/// The save of a new token (its rotated refresh token) is finished before anyone is
/// handed the token: a crash in between must not lose the refresh token in use.
#[test]
fn a_token_is_not_served_before_its_save_has_finished() {
    within(Duration::from_secs(30), || {
        let (source, store, manager) = over_a_scripted_store(Some(Held::Save));
        let caller = {
            let manager = manager.clone();
            std::thread::spawn(move || manager.token_blocking().map(|token| token.generation()))
        };
        wait_until("the new token is being saved", || {
            store.entered.load(Ordering::SeqCst)
        });
        // Nothing is served while the save runs: not from the cache, not to the caller.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            manager.cached().is_none(),
            "served before its save finished"
        );
        assert!(!caller.is_finished(), "handed out before its save finished");
        store.permits.add_permits(1);
        assert_eq!(caller.join().unwrap().unwrap(), 1);
        assert!(store.inner.get("default").is_some());
        assert_eq!(source.calls(), 1);
    });
}

/// Found by the lifecycle model checker: a refresh that read the store while a revoke was
/// still deleting the record adopted the logged-out token once the revoke was done.
#[test]
fn a_record_read_while_revoke_deletes_it_is_never_adopted_back() {
    within(Duration::from_secs(30), || {
        let (source, store, manager) = over_a_scripted_store(Some(Held::Delete));
        let logged_out = manager
            .token_blocking()
            .unwrap()
            .value()
            .expose()
            .to_owned();
        let revoker = {
            let manager = manager.clone();
            std::thread::spawn(move || manager.revoke_blocking())
        };
        wait_until("the revoke is deleting the record", || {
            store.entered.load(Ordering::SeqCst)
        });
        let caller = {
            let manager = manager.clone();
            std::thread::spawn(move || {
                manager
                    .token_blocking()
                    .map(|token| token.value().expose().to_owned())
            })
        };
        // Give the caller's refresh time to reach the store while the record is still there.
        std::thread::sleep(Duration::from_millis(200));
        store.permits.add_permits(1);
        revoker.join().unwrap().expect("revoke succeeds");
        let after = caller.join().unwrap().expect("a new token");
        assert_ne!(
            after, logged_out,
            "the logged-out token came back from the store"
        );
        assert_eq!(source.calls(), 2, "the caller logged in again");
    });
}

/// Found by the lifecycle model checker (deep mode): after a failed save the store still
/// holds an older token the server had already rejected; once the newer one is rejected
/// too, the older one must not be adopted back.
#[test]
fn an_older_rejected_token_left_in_the_store_by_a_failed_save_is_never_adopted() {
    within(Duration::from_secs(30), || {
        let (source, store, manager) = over_a_scripted_store(None);
        let first = manager.token_blocking().unwrap();
        let first_value = first.value().expose().to_owned();
        assert!(manager.invalidate(&first));
        store.failing_saves.store(true, Ordering::SeqCst);
        let second = manager.token_blocking().unwrap();
        assert!(second.value().expose() != first_value, "a new token");
        let second_value = second.value().expose().to_owned();
        assert!(manager.invalidate(&second));
        let third = manager.token_blocking().unwrap();
        // Compared without printing: token values never appear in test output.
        assert!(
            third.value().expose() != first_value,
            "the older rejected token came back from the store"
        );
        assert!(third.value().expose() != second_value);
        assert_eq!(
            source.calls(),
            3,
            "each rejection cost one fetch, none was adopted"
        );
    });
}

/// A store whose lease requests fail (a Redis blip) while loads and saves work.
#[derive(Debug, Default)]
struct LeaseFails(MemoryStore);

#[async_trait]
impl Store for LeaseFails {
    async fn load(&self, key: &str) -> tokenlease::Result<Option<TokenRecord>> {
        Store::load(&self.0, key).await
    }
    async fn save(&self, key: &str, record: &TokenRecord) -> tokenlease::Result<()> {
        Store::save(&self.0, key, record).await
    }
    async fn delete(&self, key: &str) -> tokenlease::Result<()> {
        Store::delete(&self.0, key).await
    }
    async fn acquire_lease(
        &self,
        _key: &str,
        _ttl: Duration,
        _wait: Duration,
    ) -> tokenlease::Result<LeaseOutcome> {
        Err(tokenlease::Error::new(ErrorKind::Store, "connection reset"))
    }
}

#[test]
fn without_the_lease_a_rotating_refresh_token_is_not_redeemed() {
    let clock = ManualClock::new();
    let mut source = ScriptedSource::new(Duration::from_secs(60));
    source.with_refresh_token = true;
    let source = Arc::new(source);
    let manager = Manager::builder_from_arc(source.clone())
        .clock(Arc::new(clock.clone()))
        .store(Arc::new(LeaseFails::default()))
        .policy(common::policy())
        .build();
    // The first token has no refresh token to protect: fetched without the lease.
    let first = manager.token_blocking().unwrap().into_arc();
    clock.advance(Duration::from_secs(45)); // stale: a background refresh is due
    manager.token_blocking().unwrap();
    wait_until("the refresh ended", || {
        manager.status().generation > first.generation()
    });
    assert_eq!(
        source.refreshes.load(Ordering::SeqCst),
        0,
        "the shared refresh token was not redeemed without the lease"
    );
    assert_eq!(
        source.fetches.load(Ordering::SeqCst),
        2,
        "the primary grant was used instead"
    );
    // A source with nothing but its refresh token fails instead, and the cached token is
    // still served.
    *source.script.lock() = std::collections::VecDeque::from([tokenlease::Error::new(
        ErrorKind::InvalidGrant,
        "no primary grant",
    )]);
    let second = manager.token_blocking().unwrap().into_arc();
    clock.advance(Duration::from_secs(45));
    assert_eq!(
        manager.token_blocking().unwrap().generation(),
        second.generation()
    );
    wait_until("the refresh attempt ended", || {
        manager.status().counters.failures >= 1
    });
    assert_eq!(source.refreshes.load(Ordering::SeqCst), 0);
    clock.advance(Duration::from_secs(8));
    assert_eq!(
        manager.token_blocking().unwrap().generation(),
        second.generation(),
        "the cached token is served while the lease is unavailable"
    );
}

/// A source that takes real time to answer (a slow token endpoint).
#[derive(Debug)]
struct SlowSource {
    takes: Duration,
    calls: AtomicUsize,
}

#[async_trait]
impl tokenlease::Source for SlowSource {
    async fn fetch(&self) -> tokenlease::Result<FetchedToken> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.takes).await;
        Ok(FetchedToken::bearer(
            format!("slow-value-{call}"),
            Duration::from_secs(600),
        ))
    }
}

#[test]
fn a_refresh_slower_than_the_lease_ttl_keeps_its_lease() {
    within(Duration::from_secs(30), || {
        let store = Arc::new(MemoryStore::new());
        let policy = Policy::builder()
            .lease(Duration::from_millis(300), Duration::from_secs(10))
            .source_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let slow = Arc::new(SlowSource {
            takes: Duration::from_millis(1500),
            calls: AtomicUsize::new(0),
        });
        let sibling_source = Arc::new(SlowSource {
            takes: Duration::ZERO,
            calls: AtomicUsize::new(0),
        });
        let holder = Manager::builder_from_arc(slow.clone())
            .key("shared")
            .store(store.clone())
            .policy(policy.clone())
            .build();
        let sibling = Manager::builder_from_arc(sibling_source.clone())
            .key("shared")
            .store(store.clone())
            .policy(policy)
            .build();
        let first = std::thread::spawn(move || holder.token_blocking().map(|t| t.into_arc()));
        wait_until("the holder is refreshing", || {
            slow.calls.load(Ordering::SeqCst) == 1
        });
        // Five lease TTLs later the holder is still refreshing; its sibling must wait.
        let got = sibling.token_blocking().unwrap();
        let held = first.join().unwrap().unwrap();
        assert_eq!(
            sibling_source.calls.load(Ordering::SeqCst),
            0,
            "the sibling never took the lease of a live holder"
        );
        assert_eq!(got.value().expose(), held.value().expose());
    });
}

#[test]
fn bad_tokens_from_a_source_are_protocol_errors_naming_the_problem() {
    let cases: Vec<(FetchedToken, &str)> = vec![
        (FetchedToken::bearer("", Duration::from_secs(60)), "empty"),
        (
            FetchedToken::bearer("abc\0def", Duration::from_secs(60)),
            "control character",
        ),
        (
            FetchedToken::bearer("abc\r\nX-Injected: 1", Duration::from_secs(60)),
            "control character",
        ),
        (
            FetchedToken::bearer("ok", Duration::from_millis(u64::MAX)),
            "bound",
        ),
        (
            FetchedToken::bearer("ok", Duration::from_secs(60)).with_refresh_token(""),
            "refresh token",
        ),
    ];
    for (fetched, expected) in cases {
        let fetched = Mutex::new(Some(fetched));
        let manager = Manager::builder(tokenlease::source_fn(move || {
            let next = fetched.lock().take();
            async move { next.ok_or_else(|| tokenlease::Error::transient("used")) }
        }))
        .build();
        let err = manager.token_blocking().map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.message().contains(expected), "{err}");
        assert!(
            !err.message().contains("abc"),
            "no value in the message: {err}"
        );
    }
}

#[test]
fn a_store_record_with_an_absurd_lifetime_is_not_adopted() {
    let store = Arc::new(MemoryStore::new());
    let record = TokenRecord {
        version: TokenRecord::VERSION,
        value: "planted-value".into(),
        token_type: "Bearer".into(),
        scopes: vec![],
        refresh_token: None,
        id_token: None,
        idle: None,
        attributes: Default::default(),
        expires_at_ms: u64::MAX / 2,
        obtained_at_ms: 1,
    };
    tokenlease::BlockingStore::save(&*store, "default", &record).unwrap();
    let manager = Manager::builder(ScriptedSource::new(Duration::from_secs(600)))
        .store(store.clone())
        .build();
    let token = manager.token_blocking().unwrap();
    assert!(token.value().expose().starts_with("secret-fetch"));
    assert!(manager.status().counters.store_errors >= 1);
}

/// Sweeps outage start and length across a 12-second token's windows, with the random
/// window jitter and backoff draws of each run: once the server is back (and the last
/// failed attempt is older than the caller retry interval), no caller fails.
#[test]
fn after_an_outage_no_caller_fails_while_the_server_is_healthy() {
    const LIFETIME: Duration = Duration::from_secs(12);
    const STEP: Duration = Duration::from_millis(100);
    let mut late_failures = Vec::new();
    let mut runs = 0;
    for outage_start_ds in [20, 40, 60, 75, 85, 95, 105, 115, 125] {
        for outage_len_ds in [10, 30, 50, 80, 120] {
            for jitter in [0.0, 0.1, 0.3] {
                runs += 1;
                let clock = ManualClock::new();
                let source = Arc::new(ScriptedSource::new(LIFETIME));
                let policy = Policy::builder()
                    .jitter_fraction(jitter)
                    .advisory_window(1.0 / 3.0, Duration::from_secs(1), Duration::from_secs(60))
                    .mandatory_window(0.1, Duration::from_millis(500), Duration::from_secs(60))
                    .backoff(Duration::from_millis(500), Duration::from_secs(30))
                    .build()
                    .unwrap();
                let interval = policy.caller_retry_interval();
                let manager = Manager::builder_from_arc(source.clone())
                    .clock(Arc::new(clock.clone()))
                    .policy(policy)
                    .build();
                let origin = clock.now();
                let mut recovered_at = None;
                for step in 0..300u32 {
                    let at = STEP * step;
                    let down = (outage_start_ds..outage_start_ds + outage_len_ds).contains(&step);
                    let was_down = source.outage.lock().is_some();
                    if down && !was_down {
                        *source.outage.lock() = Some(transient("503"));
                    } else if !down && was_down {
                        *source.outage.lock() = None;
                        recovered_at = Some(at);
                    }
                    clock.advance((origin + at).saturating_duration_since(clock.now()));
                    let result = manager.token_blocking();
                    wait_until("attempt finished", || !manager.status().refreshing);
                    if let (Err(err), Some(recovered)) = (result, recovered_at) {
                        if at >= recovered + interval {
                            late_failures.push(format!(
                                "outage {outage_start_ds}+{outage_len_ds} ds, jitter {jitter}: \
                                 {} failed at {at:?} after recovery at {recovered:?}",
                                err.kind()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        late_failures.is_empty(),
        "{} of {runs} runs failed callers after recovery: {late_failures:#?}",
        late_failures
            .iter()
            .map(|line| line.split(':').next().unwrap_or_default())
            .collect::<HashSet<_>>()
            .len()
    );
}

/// A closed manager starts no interactive login and redeems no code: the code would be
/// spent and its tokens could not be installed.
#[test]
fn a_closed_manager_starts_no_login_and_redeems_no_code() {
    let source = tokenlease::oauth2::OAuth2Source::new("http://127.0.0.1:9/token", "app", "")
        .unwrap()
        .without_client_secret()
        .authorization_url("http://127.0.0.1:9/authorize")
        .unwrap();
    let manager = Manager::builder(source).build();
    let request = manager
        .begin_login_blocking("http://127.0.0.1:8123/callback")
        .expect("fixed endpoints: no request needed");
    manager.close();
    let err = manager
        .begin_login_blocking("http://127.0.0.1:8123/callback")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    let state = url::Url::parse(request.url())
        .unwrap()
        .query_pairs()
        .find(|(name, _)| name == "state")
        .unwrap()
        .1
        .into_owned();
    let err = manager
        .complete_login_blocking(
            &request,
            &format!("http://127.0.0.1:8123/callback?code=c&state={state}"),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    let err = manager.start_device_login_blocking().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

/// A user login whose refresh is stuck at the server; the user logs in again meanwhile.
#[derive(Debug, Default)]
struct StuckRefresh {
    release: tokio::sync::Notify,
    refreshes: AtomicUsize,
}

#[async_trait]
impl tokenlease::Source for StuckRefresh {
    async fn fetch(&self) -> tokenlease::Result<FetchedToken> {
        Err(tokenlease::Error::new(ErrorKind::LoginRequired, "log in"))
    }

    async fn refresh(
        &self,
        _refresh_token: &tokenlease::SecretString,
    ) -> tokenlease::Result<FetchedToken> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        self.release.notified().await;
        Ok(
            FetchedToken::bearer("from-the-stuck-refresh", Duration::from_secs(600))
                .with_refresh_token("r-late"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_login_wakes_every_caller_waiting_for_the_old_sessions_refresh() {
    let source = Arc::new(StuckRefresh::default());
    let manager = Manager::builder_from_arc(source.clone()).build();
    let first = manager
        .login(FetchedToken::bearer("first", Duration::from_secs(600)).with_refresh_token("r1"))
        .await
        .unwrap()
        .into_arc();
    assert!(manager.invalidate(&first));
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                manager
                    .token()
                    .await
                    .map(|token| token.value().expose().to_owned())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while source.refreshes.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the refresh never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    manager
        .login(FetchedToken::bearer("second", Duration::from_secs(600)).with_refresh_token("r2"))
        .await
        .unwrap();
    // Woken by the login, not by the end of the stuck refresh (the source timeout, 30 s).
    for waiter in waiters {
        let served = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("every waiter is woken by the login")
            .unwrap()
            .unwrap();
        assert_eq!(served, "second", "every waiter gets the new login");
    }
    // The old session's refresh finally answers: overtaken, never served.
    source.release.notify_waiters();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(manager.token().await.unwrap().value().expose(), "second");
    assert_eq!(source.refreshes.load(Ordering::SeqCst), 1);
}
