//! Lifecycle of a manager on a manual clock: no test here sleeps to let time pass.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use tokenlease::clock::ManualClock;
use tokenlease::{
    runtime, Clock, Error, ErrorKind, Event, Manager, MemoryStore, Policy, Rejection, RetryError,
    Store, TokenRecord, TokenState,
};

const MINUTE: Duration = Duration::from_secs(60);

fn manager_with(
    source: ScriptedSource,
    clock: &ManualClock,
) -> (Manager, Arc<ScriptedSource>, Arc<Recorder>) {
    let source = Arc::new(source);
    let recorder = Arc::new(Recorder::default());
    let manager = Manager::builder_from_arc(source.clone())
        .clock(Arc::new(clock.clone()))
        .policy(policy())
        .listener(recorder.clone())
        .build();
    (manager, source, recorder)
}

#[test]
fn states_follow_the_windows_of_a_fifteen_minute_token() {
    let clock = ManualClock::new();
    let (manager, source, _) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    assert_eq!(manager.status().state, TokenState::Empty);
    let first = manager.token_blocking().unwrap().into_arc();
    assert_eq!(manager.status().state, TokenState::Fresh);
    assert_eq!(first.lifetime(), 15 * MINUTE);
    assert_eq!(first.generation(), 1);

    // Stop the background refresh from replacing the token so we can watch it age.
    *source.outage.lock() = Some(transient("down"));
    clock.advance(10 * MINUTE - Duration::from_secs(1));
    assert_eq!(manager.status().state, TokenState::Fresh);
    clock.advance(Duration::from_secs(1));
    assert_eq!(manager.status().state, TokenState::Stale);
    clock.advance(4 * MINUTE);
    assert_eq!(manager.status().state, TokenState::Mandatory);
    clock.advance(MINUTE);
    assert_eq!(manager.status().state, TokenState::Expired);
}

#[test]
fn fresh_reads_are_served_from_cache() {
    let clock = ManualClock::new();
    let (manager, source, _) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    let first = manager.token_blocking().unwrap().into_arc();
    for _ in 0..1000 {
        let again = manager.token_blocking().unwrap();
        assert_eq!(again.generation(), first.generation());
    }
    assert!(manager.cached().is_some());
    assert_eq!(source.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_on_an_empty_manager_cause_one_source_call() {
    let clock = ManualClock::new();
    let (source, gate) = ScriptedSource::new(15 * MINUTE).gated();
    let (manager, source, _) = manager_with(source, &clock);
    let mut callers = Vec::new();
    for _ in 0..1000 {
        let manager = manager.clone();
        callers.push(tokio::spawn(async move {
            manager.token().await.map(|t| t.generation())
        }));
    }
    // All callers are parked on the one refresh before the source answers.
    let status_manager = manager.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("1000 waiters", || {
            status_manager.status().counters.waits >= 1000
        })
    })
    .await
    .unwrap();
    gate.add_permits(1);
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), 1);
    }
    assert_eq!(source.calls(), 1);
    assert_eq!(manager.status().counters.fetches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_a_terminal_error_at_once() {
    let clock = ManualClock::new();
    let (source, gate) = ScriptedSource::new(15 * MINUTE).gated();
    source.script.lock().push_back(Error::new(
        ErrorKind::InvalidCredentials,
        "invalid_client from /token",
    ));
    let (manager, source, recorder) = manager_with(source, &clock);
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.token().await.map(|_| ()) })
        })
        .collect();
    let waiting = manager.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("50 waiters", || waiting.status().counters.waits >= 50)
    })
    .await
    .unwrap();
    gate.add_permits(1);
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCredentials);
    }
    assert_eq!(source.calls(), 1);
    // Within the backoff, callers get the same error without another request.
    let err = manager.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidCredentials);
    assert_eq!(source.calls(), 1);
    assert_eq!(
        manager.status().last_error_kind,
        Some(ErrorKind::InvalidCredentials)
    );
    assert_eq!(
        recorder.count(|e| matches!(
            e,
            Event::RefreshFailed {
                kind: ErrorKind::InvalidCredentials,
                ..
            }
        )),
        1
    );
    // No background retry is scheduled for a terminal error.
    clock.advance(10 * MINUTE);
    gate.add_permits(10);
    assert_eq!(source.calls(), 1);
}

#[test]
fn background_refresh_fires_at_the_refresh_point_without_traffic() {
    let clock = ManualClock::new();
    let (manager, source, recorder) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    let first = manager.token_blocking().unwrap().into_arc();
    wait_until("timer armed", || {
        clock.next_timer() == Some(first.refresh_at())
    });
    clock.advance(10 * MINUTE - Duration::from_millis(1));
    assert_eq!(source.calls(), 1, "no refresh before the refresh point");
    clock.advance(Duration::from_millis(1));
    wait_until("background refresh", || recorder.successes() == 2);
    assert_eq!(source.calls(), 2);
    let second = manager
        .cached()
        .expect("fresh token after background refresh");
    assert_eq!(second.generation(), 2);
    assert_eq!(second.obtained_at(), clock.now());
    assert!(recorder.events().contains(&Event::RefreshStarted {
        reason: tokenlease::RefreshReason::Scheduled
    }));
}

#[test]
fn a_stale_read_starts_exactly_one_background_refresh() {
    let clock = ManualClock::new();
    let (source, gate) = ScriptedSource::new(15 * MINUTE).gated();
    let (manager, source, recorder) = manager_with(source, &clock);
    gate.add_permits(1);
    let first = manager.token_blocking().unwrap().into_arc();
    // Jump past the refresh point in one go, then read many times while the refresh waits
    // on the gate: every read is served the stale token without blocking.
    clock.advance(11 * MINUTE);
    for _ in 0..100 {
        let token = manager.cached().expect("stale token is served");
        assert_eq!(token.generation(), first.generation());
    }
    wait_until("one refresh in flight", || manager.status().refreshing);
    gate.add_permits(1);
    wait_until("refreshed", || recorder.successes() == 2);
    assert_eq!(source.calls(), 2);
}

#[test]
fn a_five_minute_outage_is_served_from_cache_with_growing_backoff() {
    let clock = ManualClock::new();
    let (manager, source, recorder) =
        manager_with(ScriptedSource::new(60 * MINUTE).timed(&clock), &clock);
    manager.token_blocking().unwrap();
    source.call_times.lock().clear();
    // Refresh point of a one-hour token is minute 45; the outage covers minutes 45..50.
    *source.outage.lock() = Some(transient("token endpoint answered 503"));
    clock.advance(45 * MINUTE);
    let mut errors = 0;
    for _ in 0..300 {
        clock.advance(Duration::from_secs(1));
        match manager.token_blocking() {
            Ok(token) => assert_eq!(token.generation(), 1),
            Err(_) => errors += 1,
        }
        // Let the background thread finish whatever this second started before moving on.
        wait_until("attempt finished", || !manager.status().refreshing);
    }
    assert_eq!(errors, 0, "callers keep the valid token through the outage");
    wait_until("last attempt finished", || !manager.status().refreshing);
    let attempts = source.call_times.lock().clone();
    assert!(
        attempts.len() >= 5,
        "retried during the outage: {}",
        attempts.len()
    );
    assert!(
        attempts.len() <= 40,
        "backoff limits attempts, got {}",
        attempts.len()
    );
    // Each failure schedules its retry within the full-jitter ceiling for that failure count.
    let failures: Vec<(u32, SystemTime)> = recorder
        .events
        .lock()
        .iter()
        .filter_map(|event| match event {
            Event::RefreshFailed {
                consecutive_failures,
                next_retry_at,
                ..
            } => Some((*consecutive_failures, next_retry_at.unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures.len(),
        attempts.len(),
        "every attempt in the outage failed"
    );
    for (index, (count, _)) in failures.iter().enumerate() {
        assert_eq!(*count as usize, index + 1, "consecutive failures count up");
    }
    let gaps: Vec<Duration> = attempts
        .windows(2)
        .map(|pair| pair[1].saturating_duration_since(pair[0]))
        .collect();
    for (index, gap) in gaps.iter().enumerate() {
        let ceiling = manager.policy().backoff_ceiling(index as u32 + 1);
        assert!(
            *gap <= ceiling + Duration::from_secs(1),
            "gap {index} {gap:?} > {ceiling:?}"
        );
    }
    let early: Duration = gaps.iter().take(3).copied().max().unwrap();
    let late: Duration = gaps.iter().rev().take(5).copied().max().unwrap();
    assert!(
        late > early,
        "backoff spacing grows: early {early:?}, late {late:?}"
    );
    assert_eq!(manager.status().state, TokenState::Stale);

    // The outage ends: the next retry succeeds and a fresh token replaces the old one.
    *source.outage.lock() = None;
    clock.advance(MINUTE);
    wait_until("recovered", || recorder.successes() == 2);
    assert_eq!(manager.token_blocking().unwrap().generation(), 2);
    assert!(manager.status().last_error_kind.is_none());
}

#[test]
fn an_outage_past_expiry_ends_in_expired_with_the_cause() {
    let clock = ManualClock::new();
    let (manager, source, recorder) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    manager.token_blocking().unwrap();
    *source.outage.lock() = Some(transient("connection refused"));
    // In the mandatory window the failed refresh still serves the valid token.
    clock.advance(14 * MINUTE + Duration::from_secs(30));
    assert_eq!(manager.token_blocking().unwrap().generation(), 1);
    assert!(manager.status().counters.served_stale >= 1);
    assert!(recorder.count(|e| matches!(e, Event::ServedStale { .. })) == 1);
    clock.advance(MINUTE);
    let err = manager
        .token_blocking()
        .expect_err("an expired token must never be served");
    assert_eq!(err.kind(), ErrorKind::Expired);
    assert_eq!(err.cause_error().unwrap().kind(), ErrorKind::Transient);
    assert!(err.to_string().contains("connection refused"));
    assert_eq!(
        recorder.count(|e| matches!(e, Event::Expired { generation: 1 })),
        1
    );
}

#[test]
fn late_invalidation_of_an_old_token_keeps_the_new_one() {
    let clock = ManualClock::new();
    let (manager, source, recorder) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    let old = manager.token_blocking().unwrap().into_arc();
    assert!(manager.invalidate(&old));
    let new = manager.token_blocking().unwrap().into_arc();
    assert_eq!(new.generation(), 2);
    // A 401 for the old token arrives late: nothing happens.
    assert!(!manager.invalidate(&old));
    assert_eq!(manager.cached().unwrap().generation(), 2);
    assert_eq!(source.calls(), 2);
    assert_eq!(manager.status().counters.invalidations, 1);
    assert_eq!(
        recorder.count(|e| matches!(e, Event::Invalidated { .. })),
        1
    );
}

#[derive(Debug)]
struct Rejected;
impl Rejection for Rejected {
    fn is_token_rejected(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct ServerError;
impl Rejection for ServerError {
    fn is_token_rejected(&self) -> bool {
        false
    }
}

#[test]
fn retry_helper_calls_the_operation_at_most_twice() {
    let clock = ManualClock::new();
    let (manager, source, _) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    let mut seen = Vec::new();
    let result: Result<(), RetryError<Rejected>> = manager.with_retry_blocking(|token| {
        seen.push(token.generation());
        Err(Rejected)
    });
    assert!(matches!(result, Err(RetryError::Operation(Rejected))));
    assert_eq!(seen, vec![1, 2], "retried once, with a new token");
    assert_eq!(source.calls(), 2);

    // A failure that is not a rejection is not retried.
    let mut calls = 0;
    let result: Result<(), _> = manager.with_retry_blocking(|_| {
        calls += 1;
        Err(ServerError)
    });
    assert!(matches!(result, Err(RetryError::Operation(ServerError))));
    assert_eq!(calls, 1);

    // Success on retry is returned.
    let mut first = true;
    let value = manager
        .with_retry_blocking(|token| {
            if std::mem::take(&mut first) {
                Err(Rejected)
            } else {
                Ok(token.generation())
            }
        })
        .unwrap();
    assert_eq!(value, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_rejections_cause_one_refresh() {
    let clock = ManualClock::new();
    let (manager, source, _) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    let first = manager.token().await.unwrap().into_arc();
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let manager = manager.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                manager
                    .with_retry(|token| {
                        let barrier = barrier.clone();
                        async move {
                            if token.generation() == 1 {
                                // Everyone holds generation 1 before anyone invalidates it.
                                barrier.wait().await;
                                Err(Rejected)
                            } else {
                                Ok(token.generation())
                            }
                        }
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 2);
    }
    assert_eq!(first.generation(), 1);
    assert_eq!(source.calls(), 2, "initial fetch plus exactly one refresh");
    assert_eq!(manager.status().counters.invalidations, 1);
}

#[test]
fn store_is_written_before_the_token_is_handed_out_and_read_at_start() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let mut source = ScriptedSource::new(15 * MINUTE);
    source.with_refresh_token = true;
    let source = Arc::new(source);
    let build = |source: Arc<ScriptedSource>| {
        Manager::builder_from_arc(source)
            .clock(Arc::new(clock.clone()))
            .policy(policy())
            .store(store.clone())
            .key("server")
            .build()
    };
    let manager = build(source.clone());
    let token = manager.token_blocking().unwrap().into_arc();
    let record = store.get("server").expect("saved");
    assert_eq!(record.value.expose(), token.value().expose());
    assert_eq!(
        record.refresh_token.as_ref().unwrap().expose(),
        "refresh-secret-1"
    );
    drop(manager);

    // A "restart": a new manager adopts the stored token with no source call.
    let restarted = build(source.clone());
    let adopted = restarted.token_blocking().unwrap();
    assert_eq!(adopted.value().expose(), token.value().expose());
    assert_eq!(source.calls(), 1);
    assert_eq!(restarted.status().counters.store_loads, 1);

    // Its refresh uses the stored refresh token, and the rotated one is saved.
    clock.advance(11 * MINUTE);
    drop(adopted);
    let _ = restarted.cached();
    wait_until("refresh with refresh token", || {
        source.refreshes.load(Ordering::SeqCst) == 1
    });
    wait_until("rotated token saved", || {
        store.get("server").unwrap().refresh_token.unwrap().expose() == "refresh-secret-2"
    });
}

#[test]
fn a_nearly_expired_stored_record_is_not_used() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let record = TokenRecord {
        version: TokenRecord::VERSION,
        value: "stored-secret".into(),
        token_type: "Bearer".into(),
        scopes: vec![],
        refresh_token: None,
        id_token: None,
        idle: None,
        attributes: Default::default(),
        expires_at_ms: tokenlease_ms(clock.wall_now() + Duration::from_secs(1)),
        obtained_at_ms: tokenlease_ms(clock.wall_now() - 15 * MINUTE),
    };
    futures::executor::block_on(Store::save(&*store, "k", &record)).unwrap();
    let source = Arc::new(ScriptedSource::new(15 * MINUTE));
    let manager = Manager::builder_from_arc(source.clone())
        .clock(Arc::new(clock.clone()))
        .store(store.clone())
        .key("k")
        .build();
    let token = manager.token_blocking().unwrap();
    assert_ne!(token.value().expose(), "stored-secret");
    assert_eq!(source.calls(), 1);
}

fn tokenlease_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn invalid_grant_on_refresh_falls_back_to_the_primary_grant() {
    let clock = ManualClock::new();
    let mut source = ScriptedSource::new(15 * MINUTE);
    source.with_refresh_token = true;
    let (manager, source, _) = manager_with(source, &clock);
    manager.token_blocking().unwrap();
    *source.refresh_error.lock() = Some(Error::new(ErrorKind::InvalidGrant, "invalid_grant"));
    clock.advance(15 * MINUTE);
    let token = manager.token_blocking().unwrap();
    assert_eq!(token.generation(), 2);
    assert_eq!(source.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
}

#[test]
fn revoke_clears_memory_and_store() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let source = Arc::new(ScriptedSource::new(15 * MINUTE));
    let recorder = Arc::new(Recorder::default());
    let manager = Manager::builder_from_arc(source.clone())
        .clock(Arc::new(clock.clone()))
        .store(store.clone())
        .listener(recorder.clone())
        .build();
    manager.token_blocking().unwrap();
    assert_eq!(store.len(), 1);
    manager.revoke_blocking().unwrap();
    assert!(store.is_empty());
    assert!(manager.cached().is_none());
    assert_eq!(manager.status().state, TokenState::Empty);
    assert_eq!(source.revokes.load(Ordering::SeqCst), 1);
    assert_eq!(
        recorder.count(|e| matches!(
            e,
            Event::Revoked {
                generation: Some(1)
            }
        )),
        1
    );
    // The next call logs in again.
    assert_eq!(manager.token_blocking().unwrap().generation(), 2);
}

#[test]
fn dropping_managers_stops_their_timers() {
    let clock = ManualClock::new();
    let source = Arc::new(ScriptedSource::new(15 * MINUTE));
    let managers: Vec<Manager> = (0..10)
        .map(|_| {
            Manager::builder_from_arc(source.clone())
                .clock(Arc::new(clock.clone()))
                .build()
        })
        .collect();
    for manager in &managers {
        manager.token_blocking().unwrap();
    }
    wait_until("10 timers armed", || clock.pending_timers() == 10);
    drop(managers);
    wait_until("timers cancelled", || clock.pending_timers() == 0);
    clock.advance(60 * MINUTE);
    assert_eq!(source.calls(), 10, "no refresh after drop");
}

#[test]
fn closed_manager_refuses_calls() {
    let clock = ManualClock::new();
    let (manager, _, _) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    manager.token_blocking().unwrap();
    manager.close();
    assert!(manager.cached().is_none());
    assert_eq!(
        manager.token_blocking().unwrap_err().kind(),
        ErrorKind::Closed
    );
    wait_until("timer gone", || clock.pending_timers() == 0);
}

#[test]
fn a_hundred_managers_share_one_background_thread() {
    let threads = Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new()));
    let managers: Vec<Manager> = (0..100)
        .map(|_| {
            let threads = threads.clone();
            Manager::builder(tokenlease::source_fn(move || {
                threads.lock().insert(std::thread::current().id());
                async { Ok(tokenlease::FetchedToken::bearer("secret-x", 15 * MINUTE)) }
            }))
            .build()
        })
        .collect();
    for manager in &managers {
        manager.token_blocking().unwrap();
    }
    let threads = threads.lock();
    assert_eq!(threads.len(), 1);
    assert!(threads.contains(&runtime::background_thread_id()));
    assert_eq!(runtime::background_threads_started(), 1);
}

#[test]
fn blocking_call_from_a_callback_is_a_usage_error_not_a_deadlock() {
    let inner = Manager::builder(tokenlease::source_fn(|| async {
        Ok(tokenlease::FetchedToken::bearer(
            "inner-secret",
            15 * MINUTE,
        ))
    }))
    .build();
    let outer = Manager::builder(tokenlease::source_fn(move || {
        let result = inner.token_blocking().map(|_| ());
        async move {
            let err = result.expect_err("blocking from the runtime must fail");
            Err(err)
        }
    }))
    .build();
    let err = outer.token_blocking().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage);
    assert!(err.message().contains("background runtime"));
}

#[test]
fn waiters_time_out_with_a_timeout_error() {
    let clock = ManualClock::new();
    let (source, gate) = ScriptedSource::new(15 * MINUTE).gated();
    let source = Arc::new(source);
    let manager = Manager::builder_from_arc(source.clone())
        .clock(Arc::new(clock.clone()))
        .policy(
            Policy::builder()
                .waiter_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        .build();
    let waiter = {
        let manager = manager.clone();
        std::thread::spawn(move || manager.token_blocking().map(|_| ()))
    };
    // Two timers: the waiter's timeout and the source-call timeout.
    wait_until("waiter armed", || clock.pending_timers() == 2);
    clock.advance(Duration::from_secs(5));
    let err = waiter.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    gate.add_permits(1);
    wait_until("refresh finished anyway", || {
        manager.status().generation == 1
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_call_leaves_the_refresh_running() {
    let clock = ManualClock::new();
    let (source, gate) = ScriptedSource::new(15 * MINUTE).gated();
    let (manager, source, _) = manager_with(source, &clock);
    let cancelled = tokio::time::timeout(Duration::from_millis(20), manager.token()).await;
    assert!(cancelled.is_err(), "the call was still waiting");
    gate.add_permits(1);
    let token = manager.token().await.unwrap();
    assert_eq!(token.generation(), 1);
    assert_eq!(source.calls(), 1);
}

#[test]
fn source_panic_becomes_an_internal_error() {
    let manager = Manager::builder(tokenlease::source_fn(|| async {
        if true {
            panic!("source bug");
        }
        Ok(tokenlease::FetchedToken::bearer("never", MINUTE))
    }))
    .build();
    let err = manager.token_blocking().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
}

#[test]
fn no_token_value_in_any_debug_display_or_error_string() {
    let clock = ManualClock::new();
    let mut source = ScriptedSource::new(15 * MINUTE);
    source.with_refresh_token = true;
    let (manager, source, recorder) = manager_with(source, &clock);
    let token = manager.token_blocking().unwrap();
    let value = token.value().expose().to_owned();
    let refresh = token.refresh_token().unwrap().expose().to_owned();
    *source.outage.lock() = Some(transient("down"));
    clock.advance(16 * MINUTE);
    let err = manager.token_blocking().unwrap_err();
    let texts = vec![
        format!("{token:?}"),
        format!("{:?}", token.value()),
        format!("{}", token.value()),
        format!("{manager:?}"),
        format!("{:?}", manager.status()),
        format!("{err}"),
        format!("{err:?}"),
        format!("{:?}", recorder.events()),
        format!("{:?}", token.clone()),
    ];
    for text in texts {
        assert!(!text.contains(&value), "token value leaked: {text}");
        assert!(!text.contains(&refresh), "refresh token leaked: {text}");
        assert!(!text.contains("secret-"), "secret leaked: {text}");
    }
}

#[derive(Debug)]
struct SlowBlockingSource;

impl tokenlease::BlockingSource for SlowBlockingSource {
    fn fetch(&self) -> tokenlease::Result<tokenlease::FetchedToken> {
        // Blocking here must not stall the background thread: the adapter runs it on the
        // blocking pool.
        assert_ne!(std::thread::current().id(), runtime::background_thread_id());
        Ok(tokenlease::FetchedToken::bearer(
            "blocking-secret",
            15 * MINUTE,
        ))
    }
}

#[test]
fn blocking_sources_run_off_the_background_thread() {
    let manager =
        Manager::builder(tokenlease::BlockingSourceAdapter::new(SlowBlockingSource)).build();
    assert_eq!(manager.token_blocking().unwrap().generation(), 1);
}

#[test]
fn a_backoff_never_skips_the_last_chances_before_expiry() {
    // Backoff delays of up to 100 s against a 60-second token: without the clamp the next
    // attempt after a failure at the refresh point would usually land after expiry, and
    // callers would fail although the server recovered in time.
    let clock = ManualClock::new();
    let source = Arc::new(ScriptedSource::new(MINUTE).timed(&clock));
    let manager = Manager::builder_from_arc(source.clone())
        .clock(Arc::new(clock.clone()))
        .policy(
            Policy::builder()
                .jitter_fraction(0.0)
                .backoff(Duration::from_secs(100), Duration::from_secs(100))
                .build()
                .unwrap(),
        )
        .build();
    let first = manager.token_blocking().unwrap().into_arc();
    *source.outage.lock() = Some(transient("down"));
    let mut errors = 0;
    // From the refresh point (40 s) to well past expiry (60 s); the server recovers at 50 s.
    for second in 40..80 {
        clock.advance(
            first
                .refresh_at()
                .saturating_duration_since(clock.now())
                .max(Duration::from_secs(1)),
        );
        if second == 50 {
            *source.outage.lock() = None;
        }
        if manager.token_blocking().is_err() {
            errors += 1;
        }
        wait_until("attempt finished", || !manager.status().refreshing);
    }
    assert_eq!(
        errors, 0,
        "the attempt at the mandatory point found the recovered server"
    );
    assert!(manager.status().generation >= 2);
    let attempts = source.call_times.lock().clone();
    assert!(
        attempts
            .iter()
            .any(|at| *at <= first.mandatory_at() && *at > first.refresh_at()),
        "an attempt happened by the mandatory point: {attempts:?}"
    );
}

#[test]
fn invalidate_by_value_works_in_any_state_and_only_for_that_value() {
    let clock = ManualClock::new();
    let (manager, source, _) = manager_with(ScriptedSource::new(15 * MINUTE), &clock);
    let token = manager.token_blocking().unwrap().into_arc();
    assert!(!manager.invalidate_value("some-other-value"));
    // Past the mandatory point `cached()` returns nothing, but a rejection of the token by
    // value must still discard it.
    *source.outage.lock() = Some(transient("down"));
    clock.advance(14 * MINUTE + Duration::from_secs(30));
    assert!(manager.cached().is_none());
    assert!(manager.invalidate_value(token.value().expose()));
    assert_eq!(manager.status().state, TokenState::Empty);
    assert!(
        !manager.invalidate_value(token.value().expose()),
        "already gone"
    );
}
