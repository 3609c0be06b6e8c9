//! The manager: one per credential. Cache, state machine, single-flight, background
//! refresh, retry-on-expiry.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch, Notify};
use tracing::Instrument;

use crate::clock::{system_clock, Clock, MonoTime};
use crate::error::{Error, ErrorKind, Result};
use crate::lifecycle::events::{
    self, Counters, Event, EventListener, RefreshReason, Status, TokenState,
};
use crate::lifecycle::policy::Policy;
use crate::lifecycle::token::{FetchedToken, IdleWindows, Lifetime, Token};
use crate::runtime;
use crate::secret::SecretString;
use crate::source::Source;
use crate::store::{unix_ms, Lease, LeaseOutcome, Store, TokenRecord};

/// A token borrowed from a manager's cache.
///
/// Reading a fresh token costs one lock-free load and no allocation: the handle pins the
/// cached token without touching a shared reference count. Keep it for the duration of
/// one request; call [`TokenRef::into_arc`] to keep the token longer.
pub struct TokenRef(Inner);

enum Inner {
    Cached(Guard<Option<Arc<Token>>>),
    Owned(Arc<Token>),
}

impl TokenRef {
    /// An owned reference to the token.
    pub fn into_arc(self) -> Arc<Token> {
        match self.0 {
            Inner::Cached(guard) => Guard::into_inner(guard).expect("TokenRef holds a token"),
            Inner::Owned(token) => token,
        }
    }
}

impl Deref for TokenRef {
    type Target = Token;
    #[inline]
    fn deref(&self) -> &Token {
        match &self.0 {
            Inner::Cached(guard) => match guard.as_deref() {
                Some(token) => token,
                None => unreachable!("TokenRef is only built around a present token"),
            },
            Inner::Owned(token) => token,
        }
    }
}

impl fmt::Debug for TokenRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Gets, caches and refreshes the token of one credential.
///
/// Cheap to clone (clones share one cache). Dropping the last clone cancels the
/// manager's background timer.
#[derive(Clone)]
pub struct Manager {
    shared: Arc<Shared>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("key", &self.shared.key)
            .field("state", &self.shared.state_at(self.shared.clock.now()))
            .finish()
    }
}

/// Builds a [`Manager`].
pub struct ManagerBuilder {
    source: Arc<dyn Source>,
    key: String,
    store: Option<Arc<dyn Store>>,
    policy: Policy,
    clock: Option<Arc<dyn Clock>>,
    listeners: Vec<Arc<dyn EventListener>>,
}

impl fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("key", &self.key)
            .field("source", &self.source)
            .field("store", &self.store)
            .field("policy", &self.policy)
            .finish()
    }
}

impl ManagerBuilder {
    /// The key under which the token is stored (default `"default"`).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Persists tokens in this store and adopts a still-valid record before fetching.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Refresh and backoff policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Clock (tests use a manual clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Adds an event listener.
    pub fn listener(mut self, listener: Arc<dyn EventListener>) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Builds the manager. Nothing is fetched until the first `token()` call.
    pub fn build(self) -> Manager {
        let clock = self.clock.unwrap_or_else(system_clock);
        Manager {
            shared: Arc::new(Shared {
                event_key: Arc::from(self.key.as_str()),
                key: self.key,
                coarse_lag: clock.coarse_lag(),
                current: ArcSwapOption::empty(),
                clock,
                source: self.source,
                store: self.store,
                policy: self.policy,
                listeners: ArcSwap::from_pointee(self.listeners),
                flight: Mutex::new(Flight::default()),
                refreshing: AtomicBool::new(false),
                retry_at_nanos: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                next_generation: AtomicU64::new(0),
                timer_wakeup: Arc::new(Notify::new()),
                timer: OnceLock::new(),
                counters: AtomicCounters::default(),
                source_gate: Arc::new(tokio::sync::Mutex::new(())),
                install_lock: tokio::sync::Mutex::new(()),
                revocations: AtomicU64::new(0),
            }),
        }
    }
}

type Outcome = Result<Arc<Token>>;

struct Shared {
    key: String,
    /// The key as events carry it (shared, not copied per event).
    event_key: Arc<str>,
    coarse_lag: Duration,
    /// The cached token: the lock-free read path loads this and nothing else.
    current: ArcSwapOption<Token>,
    clock: Arc<dyn Clock>,
    source: Arc<dyn Source>,
    store: Option<Arc<dyn Store>>,
    policy: Policy,
    listeners: ArcSwap<Vec<Arc<dyn EventListener>>>,
    flight: Mutex<Flight>,
    /// Mirrors `flight.inflight.is_some()` so a stale read can skip the mutex.
    refreshing: AtomicBool,
    /// Mirrors `flight.retry_at` for the same reason.
    retry_at_nanos: AtomicU64,
    closed: AtomicBool,
    next_generation: AtomicU64,
    timer_wakeup: Arc<Notify>,
    timer: OnceLock<tokio::task::AbortHandle>,
    counters: AtomicCounters,
    /// One fetch/refresh/keep-alive/revoke call at a time, held until the call really
    /// ends (also when its caller gave up waiting).
    source_gate: Arc<tokio::sync::Mutex<()>>,
    /// Serialises "save and publish a new token" against revoke.
    install_lock: tokio::sync::Mutex<()>,
    /// Bumped by every revoke; a refresh that started before one discards its token.
    revocations: AtomicU64,
}

/// Refresh coordination; guarded by `Shared::flight`, never held across an await.
#[derive(Default)]
struct Flight {
    inflight: Option<watch::Receiver<Option<Outcome>>>,
    consecutive_failures: u32,
    retry_at: MonoTime,
    last_error: Option<Error>,
    /// Kept apart from the cached token so an invalidated token's refresh token still works.
    refresh_token: Option<SecretString>,
    /// The value of the last invalidated token, so it is never adopted back from a store.
    rejected_value: Option<SecretString>,
    last_refresh: Option<SystemTime>,
    served_stale_generation: u64,
    expired_generation: u64,
    /// When the last attempt failed (cleared on success).
    last_failure_at: Option<MonoTime>,
}

#[derive(Default)]
struct AtomicCounters {
    fetches: AtomicU64,
    refreshes: AtomicU64,
    failures: AtomicU64,
    served_stale: AtomicU64,
    waits: AtomicU64,
    invalidations: AtomicU64,
    store_loads: AtomicU64,
    store_errors: AtomicU64,
    keep_alives: AtomicU64,
    events_dropped: AtomicU64,
    store_timeouts: AtomicU64,
    source_timeouts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl AtomicCounters {
    fn snapshot(&self) -> Counters {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counters {
            fetches: get(&self.fetches),
            refreshes: get(&self.refreshes),
            failures: get(&self.failures),
            served_stale: get(&self.served_stale),
            waits: get(&self.waits),
            invalidations: get(&self.invalidations),
            store_loads: get(&self.store_loads),
            store_errors: get(&self.store_errors),
            keep_alives: get(&self.keep_alives),
            events_dropped: get(&self.events_dropped),
            store_timeouts: get(&self.store_timeouts),
            source_timeouts: get(&self.source_timeouts),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.get() {
            timer.abort();
        }
    }
}

/// What a caller should do, decided under the flight lock.
enum Next {
    Serve(Arc<Token>),
    Wait(watch::Receiver<Option<Outcome>>),
    Fail(Error),
}

/// Whether the operation passed to a retry helper failed because the token was rejected.
pub trait Rejection {
    /// `true` when the server rejected the token (401 `invalid_token`, session expired).
    fn is_token_rejected(&self) -> bool;
}

/// The error of [`Manager::with_retry`]: getting a token failed, or the operation did.
#[derive(Debug)]
pub enum RetryError<E> {
    /// No token could be obtained.
    Token(Error),
    /// The operation failed (after at most one retry).
    Operation(E),
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryError::Token(err) => write!(f, "cannot get a token: {err}"),
            RetryError::Operation(err) => write!(f, "{err}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RetryError::Token(err) => Some(err),
            RetryError::Operation(err) => Some(err),
        }
    }
}

impl Manager {
    /// Starts building a manager around `source`.
    pub fn builder(source: impl Source) -> ManagerBuilder {
        Self::builder_from_arc(Arc::new(source))
    }

    /// Starts building a manager around a shared source.
    pub fn builder_from_arc(source: Arc<dyn Source>) -> ManagerBuilder {
        ManagerBuilder {
            source,
            key: "default".to_owned(),
            store: None,
            policy: Policy::default(),
            clock: None,
            listeners: Vec::new(),
        }
    }

    /// The store key.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The clock the manager runs on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// A fresh or stale cached token without waiting; `None` when the caller would have
    /// to wait for a refresh. Never blocks and never allocates. A stale token makes sure
    /// one background refresh is under way.
    #[inline]
    pub fn cached(&self) -> Option<TokenRef> {
        let shared = &*self.shared;
        let guard = shared.current.load();
        let token = guard.as_deref()?;
        // The latest instant it can be now: the cheap reading may lag by `coarse_lag`.
        let now_at_most = shared.clock.coarse_now() + shared.coarse_lag;
        if now_at_most < token.refresh_at() {
            return Some(TokenRef(Inner::Cached(guard)));
        }
        let now = shared.clock.now();
        if now < token.refresh_at() {
            return Some(TokenRef(Inner::Cached(guard)));
        }
        if now < token.mandatory_at() {
            self.shared.kick_background_refresh(now);
            return Some(TokenRef(Inner::Cached(guard)));
        }
        None
    }

    /// A valid token: from the cache when fresh or stale, otherwise after the single
    /// in-flight refresh. Never blocks the calling executor; cancel by dropping the future.
    pub async fn token(&self) -> Result<TokenRef> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let shared = self.shared.clone();
        let task = AbortOnDrop(runtime::spawn(async move { shared.acquire().await }));
        task.await.map(|token| TokenRef(Inner::Owned(token)))
    }

    /// Blocking form of [`Manager::token`]. Returns a `Usage` error when called from the
    /// tokenlease background runtime (a store or source callback), where waiting would
    /// deadlock.
    pub fn token_blocking(&self) -> Result<TokenRef> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        self.block_on(self.token())
    }

    fn block_on<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        if runtime::on_background_runtime() {
            return Err(Error::new(
                ErrorKind::Usage,
                "a blocking tokenlease call was made from the tokenlease background runtime \
                 (inside a source, store or listener callback); use the async API there",
            ));
        }
        futures::executor::block_on(future)
    }

    /// Discards the cached token if it is still `token` (same generation). A late
    /// rejection of an older token never discards a newer one. Returns whether it did.
    pub fn invalidate(&self, token: &Token) -> bool {
        self.invalidate_generation(token.generation)
    }

    /// Reports that `token` was just used successfully: a sliding session's idle timeout
    /// restarts, so no keep-alive is needed while the application is busy. A no-op for
    /// tokens with a fixed expiry.
    pub fn report_use(&self, token: &Token) {
        if token.idle.is_some() {
            token.mark_used(self.shared.clock.now());
            self.shared.timer_wakeup.notify_one();
        }
    }

    /// [`Manager::invalidate`] by token value (for callers that only kept the string):
    /// discards the cached token if its value is `value`, whatever its state.
    pub fn invalidate_value(&self, value: &str) -> bool {
        let generation = match self.shared.current.load().as_deref() {
            Some(token) if token.value.matches(value) => token.generation,
            _ => return false,
        };
        self.invalidate_generation(generation)
    }

    /// [`Manager::invalidate`] by generation number (for bindings).
    pub fn invalidate_generation(&self, generation: u64) -> bool {
        self.shared.invalidate(generation)
    }

    /// Runs `operation` with a token; if it fails with a rejection of that token,
    /// invalidates exactly that token, waits for the one refresh and runs it once more.
    /// Concurrent rejections of the same token cause one refresh.
    pub async fn with_retry<T, E, F, Fut>(&self, mut operation: F) -> Result<T, RetryError<E>>
    where
        F: FnMut(Arc<Token>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Rejection,
    {
        let token = self.token().await.map_err(RetryError::Token)?.into_arc();
        match operation(token.clone()).await {
            Err(err) if err.is_token_rejected() => {
                self.invalidate(&token);
                let retry_token = self.token().await.map_err(RetryError::Token)?.into_arc();
                operation(retry_token).await.map_err(RetryError::Operation)
            }
            other => other.map_err(RetryError::Operation),
        }
    }

    /// Blocking form of [`Manager::with_retry`].
    pub fn with_retry_blocking<T, E, F>(&self, mut operation: F) -> Result<T, RetryError<E>>
    where
        F: FnMut(&Token) -> Result<T, E>,
        E: Rejection,
    {
        let token = self.token_blocking().map_err(RetryError::Token)?;
        match operation(&token) {
            Err(err) if err.is_token_rejected() => {
                self.invalidate(&token);
                drop(token);
                let retry_token = self.token_blocking().map_err(RetryError::Token)?;
                operation(&retry_token).map_err(RetryError::Operation)
            }
            other => other.map_err(RetryError::Operation),
        }
    }

    /// Logs out: revokes the token at the source, clears memory and store, emits
    /// [`Event::Revoked`]. Memory and store are cleared even when the source fails; its
    /// error is returned. A refresh in flight is overtaken: its token is neither handed out
    /// nor persisted (and is revoked at the source too), and callers waiting for it get
    /// `Cancelled`. The next `token()` call fetches a new token.
    pub async fn revoke(&self) -> Result<()> {
        let shared = self.shared.clone();
        AbortOnDrop(runtime::spawn(async move { shared.revoke().await })).await
    }

    /// Blocking form of [`Manager::revoke`].
    pub fn revoke_blocking(&self) -> Result<()> {
        self.block_on(self.revoke())
    }

    /// Closes the manager: cancels its timer, drops the cached token; later calls fail with
    /// `Closed`. A refresh in flight calls the source no more and never publishes or
    /// persists what it got.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(timer) = self.shared.timer.get() {
            timer.abort();
        }
        self.shared.current.store(None);
        self.shared.flight.lock().refresh_token = None;
    }

    /// Whether [`Manager::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// A snapshot of state, deadlines, last error and counters.
    pub fn status(&self) -> Status {
        let shared = &*self.shared;
        let flight = shared.flight.lock();
        let token = shared.current.load_full();
        Status {
            state: shared.state_at(shared.clock.now()),
            expires_at: token.as_ref().map(|token| token.expires_at_wall),
            generation: token.as_ref().map_or(0, |token| token.generation),
            last_refresh: flight.last_refresh,
            last_error_kind: flight.last_error.as_ref().map(Error::kind),
            last_error_message: flight
                .last_error
                .as_ref()
                .map(|err| err.message().to_owned()),
            refreshing: flight.inflight.is_some(),
            counters: shared.counters.snapshot(),
        }
    }

    /// Waits until the events this manager (and every other) queued so far were delivered
    /// to their listeners, at most `timeout`; returns whether they were. Listeners run on the
    /// event thread, so tests and shutdown code call this before reading what they saw.
    pub fn flush_events(&self, timeout: Duration) -> bool {
        events::flush(timeout)
    }

    /// Adds an event listener to a running manager.
    pub fn add_listener(&self, listener: Arc<dyn EventListener>) {
        self.shared.listeners.rcu(|listeners| {
            let mut listeners = Vec::clone(listeners);
            listeners.push(listener.clone());
            listeners
        });
    }
}

/// Cancels a background task when the caller stops waiting for it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<Result<T>> {
    type Output = Result<T>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.0.poll_unpin(cx).map(|joined| match joined {
            Ok(result) => result,
            Err(err) if err.is_cancelled() => Err(Error::new(
                ErrorKind::Cancelled,
                "the operation was cancelled",
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Internal,
                "a tokenlease task panicked; see the log for the panic message",
            )),
        })
    }
}

impl Shared {
    fn state_at(&self, now: MonoTime) -> TokenState {
        match self.current.load().as_deref() {
            None => TokenState::Empty,
            Some(token) if now < token.refresh_at() => TokenState::Fresh,
            Some(token) if now < token.mandatory_at() => TokenState::Stale,
            Some(token) if now < token.expires_at() => TokenState::Mandatory,
            Some(_) => TokenState::Expired,
        }
    }

    /// Queues an event for the listeners; never runs a listener on this thread.
    fn emit(&self, event: Event) {
        tracing::debug!(key = %self.key, event = ?event, "tokenlease event");
        events::deliver(
            &self.listeners.load_full(),
            &self.event_key,
            event,
            &self.counters.events_dropped,
        );
    }

    /// Starts a background refresh from the read path unless one is running or a backoff
    /// is in effect; both checks are atomic loads, so stale reads don't serialise.
    fn kick_background_refresh(self: &Arc<Self>, now: MonoTime) {
        if self.refreshing.load(Ordering::Acquire)
            || now.as_nanos() < self.retry_at_nanos.load(Ordering::Acquire)
        {
            return;
        }
        let mut flight = self.flight.lock();
        // The reader may have been paused while a refresh installed a newer token: only a
        // token that is still stale (tokens are published under this lock) needs one.
        let still_stale = self
            .current
            .load()
            .as_deref()
            .is_some_and(|token| now >= token.refresh_at());
        if still_stale && flight.inflight.is_none() && now >= flight.retry_at {
            self.start_refresh(&mut flight, RefreshReason::Stale);
        }
    }

    /// Starts the one refresh; the caller holds the flight lock.
    fn start_refresh(
        self: &Arc<Self>,
        flight: &mut Flight,
        reason: RefreshReason,
    ) -> watch::Receiver<Option<Outcome>> {
        let (sender, receiver) = watch::channel(None);
        flight.inflight = Some(receiver.clone());
        self.refreshing.store(true, Ordering::Release);
        let shared = self.clone();
        let span = tracing::info_span!("tokenlease.refresh", key = %self.key, reason = ?reason);
        runtime::spawn(async move { shared.run_refresh(sender, reason).await }.instrument(span));
        receiver
    }

    /// The slow path of `token()`: runs on the background runtime.
    /// A caller waiting for a refresh that a revoke overtook gets `Cancelled`: logout
    /// sticks, and the next call logs in again.
    async fn acquire(self: Arc<Self>) -> Outcome {
        let next = self.decide();
        let receiver = match next {
            Next::Serve(token) => return Ok(token),
            Next::Fail(err) => return Err(err),
            Next::Wait(receiver) => receiver,
        };
        bump(&self.counters.waits);
        let deadline = self.clock.now() + self.policy.waiter_timeout();
        let timeout = self.clock.sleep_until(deadline);
        let outcome = tokio::select! {
            outcome = wait_for_outcome(receiver) => outcome,
            () = timeout => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "waited {:?} for the token refresh of {:?}; it is still running",
                    self.policy.waiter_timeout(),
                    self.key
                ),
            )),
        };
        match outcome {
            Ok(token) => Ok(token),
            Err(err) if is_overtaken_by_revoke(&err) => Err(err),
            Err(err) => {
                // A failed or slow refresh still leaves a usable token if the old one is valid.
                let now = self.clock.now();
                match self.current.load_full() {
                    Some(token) if now < token.expires_at() => {
                        self.note_served_stale(&token);
                        Ok(token)
                    }
                    _ => Err(self.caller_error(err)),
                }
            }
        }
    }

    /// Decides, under the flight lock, whether to serve, wait or fail.
    fn decide(self: &Arc<Self>) -> Next {
        if self.closed.load(Ordering::SeqCst) {
            return Next::Fail(closed_error());
        }
        let mut flight = self.flight.lock();
        let now = self.clock.now();
        let current = self.current.load_full();
        if let Some(token) = &current {
            if now < token.mandatory_at() {
                if now >= token.refresh_at() && flight.inflight.is_none() && now >= flight.retry_at
                {
                    self.start_refresh(&mut flight, RefreshReason::Stale);
                }
                return Next::Serve(token.clone());
            }
        }
        if let Some(receiver) = &flight.inflight {
            return Next::Wait(receiver.clone());
        }
        let valid = current
            .as_ref()
            .filter(|token| now < token.expires_at())
            .cloned();
        if now >= flight.retry_at || (valid.is_none() && self.may_retry_early(&flight, now)) {
            let reason = match &current {
                None if flight.last_refresh.is_none() => RefreshReason::Initial,
                None => RefreshReason::Invalidated,
                Some(_) => RefreshReason::Mandatory,
            };
            return Next::Wait(self.start_refresh(&mut flight, reason));
        }
        // Backing off after a failure: serve a still-valid token, else the last error.
        match valid {
            Some(token) => {
                drop(flight);
                self.note_served_stale(&token);
                Next::Serve(token)
            }
            None => {
                let err = flight
                    .last_error
                    .clone()
                    .unwrap_or_else(|| Error::transient("token refresh is backing off"));
                drop(flight);
                Next::Fail(self.caller_error(err))
            }
        }
    }

    /// A caller with no valid token left does not wait out a transient backoff: once the
    /// last attempt is [`Policy::caller_retry_interval`] old, it tries again (single-flight
    /// still holds). A server's Retry-After and terminal errors are respected.
    fn may_retry_early(&self, flight: &Flight, now: MonoTime) -> bool {
        let transient = flight
            .last_error
            .as_ref()
            .is_some_and(|err| err.is_transient() && err.retry_after().is_none());
        transient
            && flight
                .last_failure_at
                .is_some_and(|at| now >= at + self.policy.caller_retry_interval())
    }

    /// The error a caller gets when no valid token exists: terminal errors as they are;
    /// transient ones become `Expired` (with the cause) once a token has died.
    fn caller_error(&self, err: Error) -> Error {
        if err.kind() == ErrorKind::Closed || !err.is_transient() {
            return err;
        }
        let now = self.clock.now();
        match self.current.load_full() {
            Some(token) if now >= token.expires_at() => {
                if self.first_report(|flight| &mut flight.expired_generation, token.generation) {
                    self.emit(Event::Expired {
                        generation: token.generation,
                    });
                }
                Error::new(
                    ErrorKind::Expired,
                    format!(
                        "the token of {:?} expired and could not be refreshed",
                        self.key
                    ),
                )
                .with_cause(err)
            }
            _ => err,
        }
    }

    /// Whether an event about `generation` is reported for the first time (events that
    /// could fire on every call are emitted once per token).
    fn first_report(
        &self,
        last_reported: impl FnOnce(&mut Flight) -> &mut u64,
        generation: u64,
    ) -> bool {
        let mut flight = self.flight.lock();
        let last = last_reported(&mut flight);
        std::mem::replace(last, generation) != generation
    }

    fn note_served_stale(&self, token: &Token) {
        bump(&self.counters.served_stale);
        if self.first_report(
            |flight| &mut flight.served_stale_generation,
            token.generation,
        ) {
            self.emit(Event::ServedStale {
                generation: token.generation,
                expires_at: token.expires_at_wall,
            });
        }
    }

    async fn run_refresh(
        self: Arc<Self>,
        sender: watch::Sender<Option<Outcome>>,
        reason: RefreshReason,
    ) {
        self.emit(Event::RefreshStarted { reason });
        let outcome = AssertUnwindSafe(self.perform_refresh())
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Internal,
                    "the token source panicked during a refresh",
                ))
            });
        let failure_event = {
            let mut flight = self.flight.lock();
            flight.inflight = None;
            let event = match &outcome {
                Ok(_) => {
                    self.clear_failures(&mut flight);
                    None
                }
                // A revoke overtook this refresh: not a failure of the source.
                Err(err) if is_overtaken_by_revoke(err) => {
                    self.clear_failures(&mut flight);
                    None
                }
                Err(err) => {
                    flight.consecutive_failures = flight.consecutive_failures.saturating_add(1);
                    // A Retry-After (from a server or a foreign callback) is honoured up to
                    // a bound, so one answer can never lock the manager out for long.
                    let retry_after = err
                        .retry_after()
                        .map(|after| after.min(crate::lifecycle::policy::MAX_RETRY_AFTER));
                    let delay = if err.is_transient() {
                        self.policy
                            .backoff(flight.consecutive_failures, retry_after)
                    } else {
                        // Terminal: don't hammer the server; callers get this error at once
                        // until the backoff ceiling has passed.
                        self.policy
                            .backoff_ceiling(flight.consecutive_failures)
                            .max(retry_after.unwrap_or_default())
                    };
                    let now = self.clock.now();
                    flight.retry_at = now + delay;
                    flight.last_failure_at = Some(now);
                    if err.is_transient() && err.retry_after().is_none() {
                        // Never let a backoff skip past the cached token's last chances: one
                        // attempt at the mandatory point and one at expiry, so a server that
                        // recovers before the token dies is noticed before callers fail.
                        if let Some(edge) = self.current.load().as_deref().and_then(|token| {
                            [token.mandatory_at(), token.expires_at()]
                                .into_iter()
                                .find(|edge| now < *edge)
                        }) {
                            flight.retry_at = flight.retry_at.min(edge);
                        }
                    }
                    flight.last_error = Some(err.clone());
                    bump(&self.counters.failures);
                    Some(Event::RefreshFailed {
                        kind: err.kind(),
                        message: err.message().to_owned(),
                        consecutive_failures: flight.consecutive_failures,
                        next_retry_at: Some(self.clock.wall_of_mono(flight.retry_at)),
                    })
                }
            };
            self.retry_at_nanos
                .store(flight.retry_at.as_nanos(), Ordering::Release);
            self.refreshing.store(false, Ordering::Release);
            event
        };
        if let Some(event) = failure_event {
            tracing::warn!(key = %self.key, "tokenlease refresh failed");
            self.emit(event);
        }
        // Waiters may all have gone away; that is fine.
        let _ = sender.send(Some(outcome));
        self.timer_wakeup.notify_one();
    }

    fn clear_failures(&self, flight: &mut Flight) {
        flight.consecutive_failures = 0;
        flight.retry_at = MonoTime::ZERO;
        flight.last_error = None;
        flight.last_failure_at = None;
        self.retry_at_nanos.store(0, Ordering::Release);
    }

    async fn perform_refresh(self: &Arc<Self>) -> Outcome {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed_error());
        }
        if let Some(outcome) = self.keep_alive_if_idle().await {
            return outcome;
        }
        // Tokens installed after this point (a straggler's late answer, a lease holder's
        // token adopted from the store) make this refresh unnecessary.
        let generation_at_start = self.next_generation.load(Ordering::SeqCst);
        let Some(store) = self.store.clone() else {
            return self.refresh_from_source(None, generation_at_start).await;
        };
        // A predecessor (restart) or a sibling may have saved a token we can use.
        if let Some(token) = self.adopt_from_store(&store).await {
            return Ok(token);
        }
        let waiting_since = self.clock.now();
        let give_up = waiting_since + self.policy.lease_wait();
        // The lease is asked for in short slices, and the store re-read between them: as
        // soon as the holder (or any sibling) saves a usable token, it is adopted, however
        // many siblings are queueing for the lease.
        let requested = loop {
            let slice = LEASE_SLICE.min(give_up.saturating_duration_since(self.clock.now()));
            let requested = self
                .store_call(
                    "lease",
                    slice,
                    store.acquire_lease(&self.key, self.policy.lease_ttl(), slice),
                )
                .await;
            if !matches!(requested, Ok(LeaseOutcome::Busy)) {
                break requested;
            }
            if let Some(token) = self.adopt_from_store(&store).await {
                return Ok(token);
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(closed_error());
            }
            if self.clock.now() >= give_up {
                break requested;
            }
        };
        let lease = match requested {
            Ok(LeaseOutcome::Acquired(lease)) => Some(lease),
            Ok(LeaseOutcome::Unsupported) => None,
            Ok(LeaseOutcome::Busy) => {
                return Err(Error::transient(format!(
                    "another process held the refresh lease of {:?} for {:?}",
                    self.key,
                    self.policy.lease_wait()
                )));
            }
            Err(err) => {
                self.store_failed("lease", &err);
                // Without the lease, siblings could redeem the same refresh token at once
                // and make the server revoke the whole family: use the primary grant
                // instead (it rotates nothing; a source without one fails, and the cached
                // token is served while the lease is retried with backoff).
                if self.flight.lock().refresh_token.is_some() {
                    return self
                        .refresh_from_source_under(None, generation_at_start, false)
                        .await
                        .0;
                }
                None
            }
        };
        let Some(lease) = lease else {
            return self.refresh_from_source(None, generation_at_start).await;
        };
        self.emit(Event::LeaseAcquired {
            waited: self.clock.now().saturating_duration_since(waiting_since),
        });
        let lease = HeldLease::start(self, lease);
        // Whoever held the lease before us may have just saved a fresh token.
        let (outcome, handed_over) = match self.adopt_from_store(&store).await {
            Some(token) => (Ok(token), false),
            None => {
                self.refresh_from_source_under(Some(&lease), generation_at_start, true)
                    .await
            }
        };
        if !handed_over {
            lease.release(self).await;
        }
        outcome
    }

    /// A sliding session whose idle timeout comes before its refresh point is kept alive
    /// instead of replaced, when the source can. `None`: do a full refresh instead.
    async fn keep_alive_if_idle(self: &Arc<Self>) -> Option<Outcome> {
        let token = self.current.load_full()?;
        let now = self.clock.now();
        if !token.idle_is_due_first()
            || now >= token.expires_at()
            || !self.source.supports_keep_alive()
        {
            return None;
        }
        bump(&self.counters.keep_alives);
        let call_token = Token::clone(&token);
        let result = self
            .gated_source_call("keep-alive", move |source| {
                Box::pin(async move { source.keep_alive(&call_token).await.map(|_| ()) })
            })
            .await;
        match result {
            Ok(()) => {
                token.mark_used(now);
                self.emit(Event::KeptAlive {
                    generation: token.generation,
                });
                Some(Ok(token))
            }
            // The server may be down: keep the session while it lasts, retry with backoff.
            Err(err) if err.is_transient() => Some(Err(err)),
            // The session is gone (expired, revoked): log in again.
            Err(_) => None,
        }
    }

    async fn refresh_from_source(
        self: &Arc<Self>,
        lease: Option<&Arc<HeldLease>>,
        generation_at_start: u64,
    ) -> Outcome {
        self.refresh_from_source_under(lease, generation_at_start, true)
            .await
            .0
    }

    /// Refreshes with the refresh token when there is one (else the primary grant) and
    /// installs the result. The flag says whether a source call that outlived its timeout
    /// took over the lease (it releases it once its late result is handled).
    async fn refresh_from_source_under(
        self: &Arc<Self>,
        lease: Option<&Arc<HeldLease>>,
        generation_at_start: u64,
        use_refresh_token: bool,
    ) -> (Outcome, bool) {
        let epoch = self.revocations.load(Ordering::SeqCst);
        let mut called = self
            .call_source(use_refresh_token, lease, epoch, generation_at_start)
            .await;
        if let Called::Finished {
            result: Err(err),
            refresh_token: Some(_),
            ..
        } = &called
        {
            if err.kind() == ErrorKind::InvalidGrant {
                // A sibling may have rotated the refresh token under us: adopt its
                // token rather than logging in again.
                if let Some(store) = self.store.clone() {
                    if let Some(token) = self.adopt_from_store(&store).await {
                        return (Ok(token), false);
                    }
                }
                // The refresh token is dead: fall back to the primary grant.
                self.flight.lock().refresh_token = None;
                called = self
                    .call_source(false, lease, epoch, generation_at_start)
                    .await;
            }
        }
        match called {
            Called::Superseded(token) => (Ok(token), false),
            Called::GaveUp { error, straggler } => (Err(error), straggler && lease.is_some()),
            Called::Finished {
                result,
                sent_at,
                refresh_token,
            } => match result {
                Ok(fetched) => (
                    self.install(fetched, sent_at, refresh_token, lease, epoch)
                        .await,
                    false,
                ),
                Err(err) => (Err(err), false),
            },
        }
    }

    /// Calls `fetch` (or `refresh` with the current refresh token when `use_refresh_token`),
    /// one call at a time per manager, within the source timeout. The refresh token is read
    /// only once the previous call has ended, so a late rotation is never redeemed twice.
    /// A call that outlives the timeout goes on as a straggler: its token, when it comes,
    /// is installed and persisted (or discarded after a revoke or close), so a rotated
    /// refresh token is never lost.
    async fn call_source(
        self: &Arc<Self>,
        use_refresh_token: bool,
        lease: Option<&Arc<HeldLease>>,
        epoch: u64,
        generation_before: u64,
    ) -> Called {
        let deadline = self.clock.now() + self.policy.source_timeout();
        let gate = tokio::select! {
            gate = self.source_gate.clone().lock_owned() => gate,
            () = self.clock.sleep_until(deadline) => {
                bump(&self.counters.source_timeouts);
                return Called::GaveUp {
                    error: self.source_timeout_error("an earlier call is still running"),
                    straggler: false,
                };
            }
        };
        // A straggler (or a lease holder, through the store) may have installed a token
        // since this refresh started.
        if self.next_generation.load(Ordering::SeqCst) != generation_before {
            if let Some(token) = self.current.load_full() {
                if self.clock.now() < token.refresh_at() {
                    return Called::Superseded(token);
                }
            }
        }
        // A closed manager calls its source no more, nor does a refresh a revoke overtook.
        if self.closed.load(Ordering::SeqCst) {
            return Called::GaveUp {
                error: closed_error(),
                straggler: false,
            };
        }
        if self.revocations.load(Ordering::SeqCst) != epoch {
            return Called::GaveUp {
                error: Error::new(
                    ErrorKind::Cancelled,
                    format!(
                        "{OVERTAKEN_BY_REVOKE}: the token of {:?} was revoked before this \
                         refresh called the source",
                        self.key
                    ),
                ),
                straggler: false,
            };
        }
        let refresh_token = if use_refresh_token {
            self.flight.lock().refresh_token.clone()
        } else {
            None
        };
        match &refresh_token {
            Some(_) => bump(&self.counters.refreshes),
            None => bump(&self.counters.fetches),
        }
        let sent_at = self.clock.now();
        let (sender, mut receiver) = oneshot::channel::<Result<FetchedToken>>();
        let shared = self.clone();
        let straggler_lease = lease.cloned();
        let call_refresh_token = refresh_token.clone();
        runtime::spawn(async move {
            let _gate = gate;
            let source = shared.source.clone();
            let call = async {
                match &call_refresh_token {
                    Some(refresh_token) => source.refresh(refresh_token).await,
                    None => source.fetch().await,
                }
            };
            let result = AssertUnwindSafe(call)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(ErrorKind::Internal, "the token source panicked"))
                });
            if let Err(unclaimed) = sender.send(result) {
                shared
                    .finish_straggler(
                        unclaimed,
                        sent_at,
                        call_refresh_token,
                        epoch,
                        straggler_lease,
                    )
                    .await;
            }
        });
        tokio::select! {
            received = &mut receiver => Called::Finished {
                result: received.unwrap_or_else(|_| Err(Error::new(
                    ErrorKind::Internal,
                    "the token source call ended without a result",
                ))),
                sent_at,
                refresh_token,
            },
            () = self.clock.sleep_until(deadline) => {
                // The answer may have arrived just now: take it rather than strand it.
                receiver.close();
                match receiver.try_recv() {
                    Ok(result) => Called::Finished { result, sent_at, refresh_token },
                    Err(_) => {
                        bump(&self.counters.source_timeouts);
                        Called::GaveUp {
                            error: self.source_timeout_error("it goes on; a late token will be kept"),
                            straggler: true,
                        }
                    }
                }
            }
        }
    }

    fn source_timeout_error(&self, detail: &str) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "the token source did not answer within {:?} ({detail})",
                self.policy.source_timeout()
            ),
        )
    }

    /// The late answer of a source call nobody waits for any more.
    async fn finish_straggler(
        self: Arc<Self>,
        result: Result<FetchedToken>,
        sent_at: MonoTime,
        refresh_token: Option<SecretString>,
        epoch: u64,
        lease: Option<Arc<HeldLease>>,
    ) {
        if let Ok(fetched) = result {
            tracing::info!(key = %self.key, "tokenlease: a late token arrived after the source timeout");
            if self
                .install(fetched, sent_at, refresh_token, lease.as_ref(), epoch)
                .await
                .is_ok()
            {
                self.clear_failures(&mut self.flight.lock());
                self.timer_wakeup.notify_one();
            }
        }
        if let Some(lease) = lease {
            lease.release(&self).await;
        }
    }

    /// Runs one source call other than fetch/refresh (keep-alive, revoke) through the same
    /// one-at-a-time gate, within the source timeout. A late answer is dropped.
    async fn gated_source_call<T, F>(self: &Arc<Self>, what: &'static str, make: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Source>) -> BoxFuture<'static, Result<T>> + Send + 'static,
    {
        let deadline = self.clock.now() + self.policy.source_timeout();
        let timeout_error = |detail: &str| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "the {what} did not answer within {:?}{detail}",
                    self.policy.source_timeout()
                ),
            )
        };
        let gate = tokio::select! {
            gate = self.source_gate.clone().lock_owned() => gate,
            () = self.clock.sleep_until(deadline) => {
                bump(&self.counters.source_timeouts);
                return Err(timeout_error(" (an earlier call is still running)"));
            }
        };
        let call = make(self.source.clone());
        let mut task = runtime::spawn(async move {
            let _gate = gate;
            AssertUnwindSafe(call)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(ErrorKind::Internal, "the token source panicked"))
                })
        });
        tokio::select! {
            joined = &mut task => joined.unwrap_or_else(|_| Err(Error::new(
                ErrorKind::Internal,
                "the token source call ended without a result",
            ))),
            () = self.clock.sleep_until(deadline) => {
                bump(&self.counters.source_timeouts);
                Err(timeout_error(""))
            }
        }
    }

    /// Runs one store call within the store timeout (plus `extra` for lease waits). A store
    /// that does not answer counts as a failed store.
    async fn store_call<T>(
        &self,
        operation: &'static str,
        extra: Duration,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.policy.store_timeout() + extra;
        let deadline = self.clock.now() + limit;
        tokio::select! {
            result = call => result,
            () = self.clock.sleep_until(deadline) => {
                bump(&self.counters.store_timeouts);
                Err(Error::new(
                    ErrorKind::Store,
                    format!("the store did not answer the {operation} call within {limit:?}"),
                ))
            }
        }
    }

    /// Turns a fetched token into a cached one: computes deadlines from the send time,
    /// persists it (so a rotated refresh token is saved before use), then publishes it.
    /// A revoke or close since the call started (`epoch`) wins: the token is discarded.
    async fn install(
        self: &Arc<Self>,
        fetched: FetchedToken,
        sent_at: MonoTime,
        previous_refresh_token: Option<SecretString>,
        lease: Option<&Arc<HeldLease>>,
        epoch: u64,
    ) -> Outcome {
        fetched.validate()?;
        let sent_at = fetched
            .sent_at
            .map_or(sent_at, |measured| measured.min(self.clock.now()));
        let now = self.clock.now();
        let expires_at = match fetched.lifetime {
            Lifetime::ExpiresIn(lifetime) => sent_at + lifetime,
            Lifetime::ExpiresAt(wall) => {
                let expires_at = self.clock.mono_of_wall(wall);
                if expires_at > now + crate::lifecycle::policy::MAX_TOKEN_LIFETIME {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        "the token source returned an expiry beyond the ten-year bound",
                    ));
                }
                expires_at
            }
            Lifetime::Unknown => sent_at + self.policy.default_lifetime(),
        };
        if expires_at <= now {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "the token source returned a token for {:?} that is already expired",
                    self.key
                ),
            ));
        }
        let windows = self
            .policy
            .windows_with_random_jitter(sent_at.min(now), expires_at);
        let token = Token {
            value: fetched.value,
            token_type: if fetched.token_type.is_empty() {
                "Bearer".to_owned()
            } else {
                fetched.token_type
            },
            scopes: fetched.scopes,
            refresh_token: fetched.refresh_token.or(previous_refresh_token),
            generation: self.next_generation.fetch_add(1, Ordering::SeqCst) + 1,
            obtained_at: sent_at,
            refresh_at: windows.refresh_at,
            mandatory_at: windows.mandatory_at,
            expires_at,
            expires_at_wall: self.clock.wall_of_mono(expires_at),
            idle: fetched.idle_timeout.map(|timeout| IdleWindows {
                timeout,
                advisory: self.policy.advisory_window(timeout),
                mandatory: self.policy.mandatory_window(timeout),
            }),
            last_used: AtomicU64::new(sent_at.as_nanos()),
        };
        // Held until published, so a revoke either comes before (and wins) or after.
        let _install = self.install_lock.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed_error());
        }
        if self.revocations.load(Ordering::SeqCst) != epoch {
            self.revoke_discarded(token);
            return Err(Error::new(
                ErrorKind::Cancelled,
                format!(
                    "{OVERTAKEN_BY_REVOKE}: the token of {:?} was revoked while this refresh ran; \
                     its result was discarded",
                    self.key
                ),
            ));
        }
        if let Some(store) = &self.store {
            let record = self.record_of(&token);
            let saved = match lease {
                Some(lease) => {
                    let held = lease.lease.lock().await;
                    match held.as_deref() {
                        Some(held) => {
                            self.store_call(
                                "save",
                                Duration::ZERO,
                                store.save_fenced(&self.key, &record, held),
                            )
                            .await
                        }
                        None => {
                            self.store_call("save", Duration::ZERO, store.save(&self.key, &record))
                                .await
                        }
                    }
                }
                None => {
                    self.store_call("save", Duration::ZERO, store.save(&self.key, &record))
                        .await
                }
            };
            if let Err(err) = saved {
                // The token is valid; losing persistence must not fail the caller.
                self.store_failed("save", &err);
            }
        }
        Ok(self.publish(token, false))
    }

    /// A token that arrived after a revoke: revoked at the server too, when the source can
    /// (best effort, in the background).
    fn revoke_discarded(self: &Arc<Self>, token: Token) {
        let shared = self.clone();
        runtime::spawn(async move {
            let _ = shared
                .gated_source_call("revocation", move |source| {
                    Box::pin(async move { source.revoke(&token).await })
                })
                .await;
        });
    }

    fn publish(self: &Arc<Self>, token: Token, from_store: bool) -> Arc<Token> {
        let token = Arc::new(token);
        {
            let mut flight = self.flight.lock();
            flight.refresh_token = token.refresh_token.clone();
            flight.last_refresh = Some(self.clock.wall_now());
            if !self.closed.load(Ordering::SeqCst) {
                self.current.store(Some(token.clone()));
            }
        }
        self.ensure_timer();
        self.emit(Event::RefreshSucceeded {
            generation: token.generation,
            expires_at: token.expires_at_wall,
            from_store,
        });
        token
    }

    fn record_of(&self, token: &Token) -> TokenRecord {
        TokenRecord {
            version: TokenRecord::VERSION,
            value: token.value.clone(),
            token_type: token.token_type.clone(),
            scopes: token.scopes.clone(),
            refresh_token: token.refresh_token.clone(),
            expires_at_ms: unix_ms(token.expires_at_wall),
            obtained_at_ms: unix_ms(self.clock.wall_of_mono(token.obtained_at)),
        }
    }

    /// Adopts the stored record when it is news (not our current token, not a token the
    /// server rejected) and still usable (before its mandatory point). A stored refresh
    /// token is taken even when its access token is too old: it is the latest rotation.
    async fn adopt_from_store(self: &Arc<Self>, store: &Arc<dyn Store>) -> Option<Arc<Token>> {
        let epoch = self.revocations.load(Ordering::SeqCst);
        let loaded = self
            .store_call("load", Duration::ZERO, store.load(&self.key))
            .await
            .and_then(|record| {
                if let Some(record) = &record {
                    record.validate()?;
                }
                Ok(record)
            });
        let record = match loaded {
            Ok(Some(record)) => record,
            Ok(None) => return None,
            Err(err) => {
                self.store_failed("load", &err);
                return None;
            }
        };
        let is_current = self
            .current
            .load()
            .as_deref()
            .is_some_and(|token| token.value == record.value);
        let was_rejected = self.flight.lock().rejected_value.as_ref() == Some(&record.value);
        if is_current || was_rejected {
            return None;
        }
        let now = self.clock.now();
        let expires_at = self.clock.mono_of_wall(record.expires_at());
        let obtained_at = self.clock.mono_of_wall(record.obtained_at()).min(now);
        let windows = self
            .policy
            .windows_with_random_jitter(obtained_at, expires_at);
        if now >= windows.mandatory_at {
            if record.refresh_token.is_some() {
                self.flight.lock().refresh_token = record.refresh_token.clone();
            }
            return None;
        }
        bump(&self.counters.store_loads);
        let token = Token {
            value: record.value.clone(),
            token_type: record.token_type.clone(),
            scopes: record.scopes.clone(),
            refresh_token: record.refresh_token.clone(),
            generation: self.next_generation.fetch_add(1, Ordering::SeqCst) + 1,
            obtained_at,
            refresh_at: windows.refresh_at,
            mandatory_at: windows.mandatory_at,
            expires_at,
            expires_at_wall: record.expires_at(),
            idle: None,
            last_used: AtomicU64::new(obtained_at.as_nanos()),
        };
        // A record read before a revoke must not come back after it.
        let _install = self.install_lock.lock().await;
        if self.closed.load(Ordering::SeqCst) || self.revocations.load(Ordering::SeqCst) != epoch {
            return None;
        }
        Some(self.publish(token, true))
    }

    fn store_failed(&self, operation: &'static str, err: &Error) {
        bump(&self.counters.store_errors);
        tracing::warn!(key = %self.key, operation, "tokenlease store error");
        self.emit(Event::StoreError {
            operation,
            message: err.to_string(),
        });
    }

    fn invalidate(&self, generation: u64) -> bool {
        let current = self.current.load();
        let Some(token) = current.as_deref() else {
            return false;
        };
        if token.generation != generation {
            return false;
        }
        let swapped = {
            // The rejected value is recorded in the same critical section as the swap, so a
            // refresh can never re-adopt it from the store in between.
            let mut flight = self.flight.lock();
            // Compare-and-swap: a token installed meanwhile is never discarded.
            let previous = self.current.compare_and_swap(&*current, None);
            let swapped = match (previous.as_deref(), current.as_deref()) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                _ => false,
            };
            if swapped {
                flight.rejected_value = Some(token.value.clone());
            }
            swapped
        };
        if swapped {
            bump(&self.counters.invalidations);
            self.emit(Event::Invalidated { generation });
            self.timer_wakeup.notify_one();
        }
        swapped
    }

    async fn revoke(self: Arc<Self>) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed_error());
        }
        let token = {
            // Waits for an install in progress (bounded by the store timeout); every
            // install after this sees the new epoch and discards its token.
            let _install = self.install_lock.lock().await;
            self.revocations.fetch_add(1, Ordering::SeqCst);
            let token = {
                let mut flight = self.flight.lock();
                flight.refresh_token = None;
                self.clear_failures(&mut flight);
                self.current.swap(None)
            };
            if let Some(store) = &self.store {
                let deleted = self
                    .store_call("delete", Duration::ZERO, store.delete(&self.key))
                    .await;
                if let Err(err) = deleted {
                    self.store_failed("delete", &err);
                }
            }
            token
        };
        let revoked = match &token {
            Some(token) => {
                let token = Token::clone(token);
                self.gated_source_call("revocation", move |source| {
                    Box::pin(async move { source.revoke(&token).await })
                })
                .await
            }
            None => Ok(()),
        };
        self.emit(Event::Revoked {
            generation: token.as_ref().map(|token| token.generation),
        });
        revoked
    }

    fn ensure_timer(self: &Arc<Self>) {
        if self.timer.get().is_some() {
            self.timer_wakeup.notify_one();
            return;
        }
        let weak = Arc::downgrade(self);
        let wakeup = self.timer_wakeup.clone();
        let handle = runtime::spawn(timer_loop(weak, wakeup));
        if let Err(handle) = self.timer.set(handle.abort_handle()) {
            handle.abort();
        }
    }

    /// When the timer should next act: the refresh point, or the backoff retry after a
    /// transient failure. Terminal failures wait for a caller.
    fn next_timer_deadline(&self) -> MonoTime {
        if self.closed.load(Ordering::SeqCst) {
            return MonoTime::FAR_FUTURE;
        }
        let flight = self.flight.lock();
        if flight.inflight.is_some() {
            return MonoTime::FAR_FUTURE;
        }
        let Some(token) = self.current.load_full() else {
            return MonoTime::FAR_FUTURE;
        };
        if flight.consecutive_failures == 0 {
            return token.refresh_at();
        }
        match &flight.last_error {
            Some(err) if err.is_transient() => token.refresh_at().max(flight.retry_at),
            _ => MonoTime::FAR_FUTURE,
        }
    }

    fn on_timer(self: &Arc<Self>) {
        let deadline = self.next_timer_deadline();
        let now = self.clock.now();
        if now < deadline {
            return;
        }
        let mut flight = self.flight.lock();
        if flight.inflight.is_none() && !self.closed.load(Ordering::SeqCst) {
            self.start_refresh(&mut flight, RefreshReason::Scheduled);
        }
    }
}

/// How long one lease request waits before the store is re-read for a sibling's token.
const LEASE_SLICE: Duration = Duration::from_millis(250);

/// Marks the error of a refresh that a revoke overtook.
const OVERTAKEN_BY_REVOKE: &str = "overtaken by revoke";

fn is_overtaken_by_revoke(err: &Error) -> bool {
    err.kind() == ErrorKind::Cancelled && err.message().starts_with(OVERTAKEN_BY_REVOKE)
}

/// What became of one fetch/refresh call.
enum Called {
    /// The source answered in time.
    Finished {
        result: Result<FetchedToken>,
        sent_at: MonoTime,
        /// The refresh token the call redeemed, if it was a refresh.
        refresh_token: Option<SecretString>,
    },
    /// While this call waited for an earlier (late) one, that one installed a fresh token.
    Superseded(Arc<Token>),
    /// The source timeout passed. `straggler`: the call goes on and owns the lease now.
    GaveUp { error: Error, straggler: bool },
}

/// A refresh lease while its holder works: renewed every third of its TTL so a slow source
/// never lets it lapse under a live holder, but for at most a bounded time (two source
/// timeouts and three store timeouts), so a holder whose callback hangs forever cannot
/// block its siblings forever either.
struct HeldLease {
    lease: tokio::sync::Mutex<Option<Box<dyn Lease>>>,
    renewal: tokio::task::AbortHandle,
}

impl HeldLease {
    fn start(shared: &Arc<Shared>, lease: Box<dyn Lease>) -> Arc<Self> {
        let policy = &shared.policy;
        let ttl = policy.lease_ttl();
        let every = ttl / 3;
        let renew_until =
            shared.clock.now() + policy.source_timeout() * 2 + policy.store_timeout() * 3;
        Arc::new_cyclic(|weak: &Weak<HeldLease>| {
            let weak = weak.clone();
            let renewer = shared.clone();
            let renewal = runtime::spawn(async move {
                loop {
                    let next = renewer.clock.now() + every;
                    if next >= renew_until {
                        return;
                    }
                    renewer.clock.sleep_until(next).await;
                    let Some(held) = weak.upgrade() else { return };
                    let guard = held.lease.lock().await;
                    let Some(lease) = guard.as_deref() else {
                        return;
                    };
                    let renewed = tokio::select! {
                        renewed = lease.renew(ttl) => renewed,
                        () = renewer.clock.sleep_until(renewer.clock.now() + every.min(renewer.policy.store_timeout())) => Err(Error::new(
                            ErrorKind::Store,
                            "the store did not answer the lease renewal in time",
                        )),
                    };
                    if let Err(err) = renewed {
                        renewer.store_failed("renew", &err);
                    }
                }
            });
            HeldLease {
                lease: tokio::sync::Mutex::new(Some(lease)),
                renewal: renewal.abort_handle(),
            }
        })
    }

    /// Stops renewing and releases the lease (once; later calls do nothing).
    async fn release(&self, shared: &Shared) {
        self.renewal.abort();
        let Some(lease) = self.lease.lock().await.take() else {
            return;
        };
        if let Err(err) = shared
            .store_call("release", Duration::ZERO, lease.release())
            .await
        {
            shared.store_failed("release", &err);
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

async fn wait_for_outcome(mut receiver: watch::Receiver<Option<Outcome>>) -> Outcome {
    match receiver.wait_for(Option::is_some).await {
        Ok(outcome) => outcome
            .clone()
            .unwrap_or_else(|| unreachable!("waited for Some")),
        Err(_) => Err(Error::new(
            ErrorKind::Internal,
            "the token refresh ended without a result",
        )),
    }
}

/// One per manager: sleeps until the refresh point without holding the manager alive.
async fn timer_loop(weak: Weak<Shared>, wakeup: Arc<Notify>) {
    loop {
        let sleep = {
            let Some(shared) = weak.upgrade() else { return };
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            let deadline = shared.next_timer_deadline();
            shared.clock.sleep_until(deadline)
        };
        tokio::select! {
            () = sleep => {
                let Some(shared) = weak.upgrade() else { return };
                shared.on_timer();
            }
            () = wakeup.notified() => {}
        }
    }
}

fn closed_error() -> Error {
    Error::new(ErrorKind::Closed, "the token manager was closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ref_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TokenRef>();
        assert_send_sync::<Manager>();
    }
}
