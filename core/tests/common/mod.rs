//! Test helpers: a scripted source, an event recorder, waiting for background work.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokenlease::clock::ManualClock;
use tokenlease::{
    Error, ErrorKind, Event, EventListener, FetchedToken, Lifetime, MonoTime, Policy, SecretString,
    Source, Token,
};

/// A source whose answers a test controls.
#[derive(Debug)]
pub struct ScriptedSource {
    pub fetches: AtomicU64,
    pub refreshes: AtomicU64,
    pub revokes: AtomicU64,
    pub lifetime: Mutex<Duration>,
    /// Errors returned by the next calls (front first); empty = succeed.
    pub script: Mutex<VecDeque<Error>>,
    /// While set, every call fails with this error.
    pub outage: Mutex<Option<Error>>,
    /// When set, calls wait until the gate opens (a permit is added).
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
    pub with_refresh_token: bool,
    pub call_times: Mutex<Vec<MonoTime>>,
    pub clock: Option<ManualClock>,
    pub refresh_error: Mutex<Option<Error>>,
}

impl ScriptedSource {
    pub fn new(lifetime: Duration) -> Self {
        Self {
            fetches: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            revokes: AtomicU64::new(0),
            lifetime: Mutex::new(lifetime),
            script: Mutex::new(VecDeque::new()),
            outage: Mutex::new(None),
            gate: None,
            with_refresh_token: false,
            call_times: Mutex::new(Vec::new()),
            clock: None,
            refresh_error: Mutex::new(None),
        }
    }

    pub fn gated(mut self) -> (Self, Arc<tokio::sync::Semaphore>) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.gate = Some(gate.clone());
        (self, gate)
    }

    pub fn timed(mut self, clock: &ManualClock) -> Self {
        self.clock = Some(clock.clone());
        self
    }

    pub fn calls(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst) + self.refreshes.load(Ordering::SeqCst)
    }

    async fn answer(&self, kind: &str) -> tokenlease::Result<FetchedToken> {
        if let Some(clock) = &self.clock {
            use tokenlease::Clock;
            self.call_times.lock().push(clock.now());
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if let Some(err) = self.outage.lock().clone() {
            return Err(err);
        }
        if let Some(err) = self.script.lock().pop_front() {
            return Err(err);
        }
        let n = self.calls();
        let mut token =
            FetchedToken::bearer(format!("secret-{kind}-{n}-value"), *self.lifetime.lock());
        if self.with_refresh_token {
            token = token.with_refresh_token(format!("refresh-secret-{n}"));
        }
        Ok(token.with_lifetime(Lifetime::ExpiresIn(*self.lifetime.lock())))
    }
}

#[async_trait]
impl Source for ScriptedSource {
    async fn fetch(&self) -> tokenlease::Result<FetchedToken> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.answer("fetch").await
    }

    async fn refresh(&self, _refresh_token: &SecretString) -> tokenlease::Result<FetchedToken> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        if let Some(err) = self.refresh_error.lock().clone() {
            return Err(err);
        }
        self.answer("refresh").await
    }

    async fn revoke(&self, _token: &Token) -> tokenlease::Result<()> {
        self.revokes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Records every event.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
}

impl EventListener for Recorder {
    fn on_event(&self, _key: &str, event: &Event) {
        self.events.lock().push(event.clone());
    }
}

impl Recorder {
    /// The events delivered so far, after everything queued before this call arrived
    /// (listeners run on tokenlease's event thread).
    pub fn events(&self) -> parking_lot::MutexGuard<'_, Vec<Event>> {
        assert!(
            tokenlease::events::flush(Duration::from_secs(10)),
            "events were not delivered within 10 s"
        );
        self.events.lock()
    }

    pub fn count(&self, matches: impl Fn(&Event) -> bool) -> usize {
        self.events().iter().filter(|event| matches(event)).count()
    }

    pub fn successes(&self) -> usize {
        self.count(|event| matches!(event, Event::RefreshSucceeded { .. }))
    }
}

/// Waits (in real time, bounded) for background work to reach a condition. This is
/// synchronisation with the background thread, not a timing assumption: the condition
/// is reached as soon as the work runs.
pub fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn policy() -> Policy {
    Policy::builder().jitter_fraction(0.0).build().unwrap()
}

pub fn transient(message: &str) -> Error {
    Error::new(ErrorKind::Transient, message)
}
