//! The manager: one per credential. Cache, state machine, single-flight, background
//! refresh, retry-on-expiry.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
use crate::lifecycle::machine::{
    Action, Adoption, Called, Feedback, Input, LeaseAnswer, Lifecycle, RefreshRun, Refusal,
    RunStep, SourceAdmission, StoredOffer, TokenHandle,
};
use crate::lifecycle::policy::Policy;
use crate::lifecycle::token::{FetchedToken, IdleWindows, Lifetime, Token};
use crate::runtime;
use crate::secret::SecretString;
use crate::source::Source;
use crate::store::{unix_ms, IdleRecord, Lease, LeaseOutcome, Store, TokenRecord};

#[cfg(feature = "http")]
mod login;
#[cfg(feature = "http")]
mod requests;
#[cfg(feature = "http")]
pub use requests::{ResponseVerdict, MAX_JUDGED_HEADERS};

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
            .field("state", &self.shared.state_now())
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
    #[cfg(feature = "http")]
    authorizer: Option<Arc<dyn crate::http::authorize::Authorizer>>,
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

    /// How the tokens travel on API requests and their rejections are recognised
    /// ([`Manager::request_header`], [`Manager::judge_response`]); bearer by default.
    #[cfg(feature = "http")]
    pub fn authorizer(mut self, authorizer: Arc<dyn crate::http::authorize::Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Builds the manager. Nothing is fetched until the first `token()` call.
    pub fn build(self) -> Manager {
        let clock = self.clock.unwrap_or_else(system_clock);
        let event_key: Arc<str> = Arc::from(self.key.as_str());
        let policy = shared_policy(self.policy);
        Manager {
            shared: Arc::new(Shared {
                key: event_key.clone(),
                coarse_lag: clock.coarse_lag(),
                current: ArcSwapOption::empty(),
                clock,
                source: self.source,
                store: self.store,
                policy: policy.clone(),
                listeners: ArcSwap::from_pointee(self.listeners),
                state: Mutex::new(State {
                    machine: Lifecycle::new(event_key, policy),
                    flight: None,
                }),
                refreshing: AtomicBool::new(false),
                retry_at_nanos: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                timer_wakeup: Arc::new(Notify::new()),
                timer: OnceLock::new(),
                counters: AtomicCounters::default(),
                source_gate: Arc::new(tokio::sync::Mutex::new(())),
                install_lock: tokio::sync::Mutex::new(()),
                #[cfg(feature = "http")]
                authorizer: self.authorizer,
                login_wakeup: Notify::new(),
            }),
        }
    }
}

type Outcome = Result<Arc<Token>>;

struct Shared {
    /// The store key, also as events carry it (shared, not copied per event).
    key: Arc<str>,
    coarse_lag: Duration,
    /// The published token: the lock-free read path loads this and nothing else. A copy of
    /// `state.machine.current()`, written only by [`Shared::mirror`] under the state lock.
    current: ArcSwapOption<Token>,
    clock: Arc<dyn Clock>,
    source: Arc<dyn Source>,
    store: Option<Arc<dyn Store>>,
    /// Shared with the machine (and, for the default policy, with every other manager).
    policy: Arc<Policy>,
    listeners: ArcSwap<Vec<Arc<dyn EventListener>>>,
    state: Mutex<State>,
    /// Mirrors `machine.is_refreshing()` so a stale read can skip the mutex.
    refreshing: AtomicBool,
    /// Mirrors `machine.retry_at()` for the same reason.
    retry_at_nanos: AtomicU64,
    /// Mirrors `machine.is_closed()`.
    closed: AtomicBool,
    timer_wakeup: Arc<Notify>,
    timer: OnceLock<tokio::task::AbortHandle>,
    counters: AtomicCounters,
    /// One fetch/refresh/keep-alive/revoke call at a time, held until the call really
    /// ends (also when its caller gave up waiting).
    source_gate: Arc<tokio::sync::Mutex<()>>,
    /// Held from an install's admission to its publication (across the store save), and
    /// by revoke while it clears the store, so a revoke comes before an install or after.
    install_lock: tokio::sync::Mutex<()>,
    /// How tokens travel on API requests (`None`: bearer).
    #[cfg(feature = "http")]
    authorizer: Option<Arc<dyn crate::http::authorize::Authorizer>>,
    /// Wakes callers waiting for a refresh when a token is installed outside one (a new
    /// login): they look again at once instead of waiting for the old session's refresh.
    login_wakeup: Notify,
}

/// The policy as managers hold it: the default one is shared by every manager of the
/// process (most use it), so an idle manager does not carry a copy.
fn shared_policy(policy: Policy) -> Arc<Policy> {
    static DEFAULT: OnceLock<Arc<Policy>> = OnceLock::new();
    let default = DEFAULT.get_or_init(|| Arc::new(Policy::default()));
    if policy == **default {
        default.clone()
    } else {
        Arc::new(policy)
    }
}

/// The decisions and the refresh in flight; never held across an await.
struct State {
    machine: Lifecycle<Arc<Token>>,
    /// Waiters of the refresh in flight.
    flight: Option<watch::Receiver<Option<Outcome>>>,
}

impl TokenHandle for Arc<Token> {
    type Value = SecretString;

    fn generation(&self) -> u64 {
        self.generation
    }

    fn value(&self) -> &SecretString {
        &self.value
    }

    fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    fn obtained_at(&self) -> MonoTime {
        self.obtained_at
    }

    fn refresh_at(&self) -> MonoTime {
        Token::refresh_at(self)
    }

    fn mandatory_at(&self) -> MonoTime {
        Token::mandatory_at(self)
    }

    fn expires_at(&self) -> MonoTime {
        Token::expires_at(self)
    }

    fn expires_at_wall(&self) -> SystemTime {
        self.expires_at_wall
    }

    fn idle_is_due_first(&self) -> bool {
        Token::idle_is_due_first(self)
    }
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

/// What the machine told a caller to do.
enum Verdict {
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
            #[cfg(feature = "http")]
            authorizer: None,
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

    /// Hands the manager the result of a new interactive login (an authorization code or
    /// device flow, or AppAuth on a phone): it is persisted (with its refresh token) and
    /// served from now on. A refresh of the previous session still in flight is overtaken
    /// (its token discarded); callers waiting for it get the new token.
    pub async fn login(&self, login: FetchedToken) -> Result<TokenRef> {
        let shared = self.shared.clone();
        AbortOnDrop(runtime::spawn(async move { shared.login(login).await }))
            .await
            .map(|token| TokenRef(Inner::Owned(token)))
    }

    /// Blocking form of [`Manager::login`].
    pub fn login_blocking(&self, login: FetchedToken) -> Result<TokenRef> {
        self.block_on(self.login(login))
    }

    /// Hands the manager a login result the app kept from before (AppAuth's saved state,
    /// a token from an earlier run) without rolling back anything newer: when memory or
    /// the store already holds a token obtained at or after `issued_at` (with `None`: any
    /// stored token at all), that one is served (refreshed with its own, possibly rotated,
    /// refresh token when it is due) and the seed is ignored; otherwise the seed is
    /// installed as [`Manager::login`] does. Use `login` for a *new* interactive login.
    pub async fn seed(
        &self,
        seed: FetchedToken,
        issued_at: Option<SystemTime>,
    ) -> Result<TokenRef> {
        let shared = self.shared.clone();
        let newer_held = AbortOnDrop(runtime::spawn(async move {
            shared.holds_newer_than(issued_at).await
        }))
        .await?;
        if newer_held {
            self.token().await
        } else {
            self.login(seed).await
        }
    }

    /// Blocking form of [`Manager::seed`].
    pub fn seed_blocking(
        &self,
        seed: FetchedToken,
        issued_at: Option<SystemTime>,
    ) -> Result<TokenRef> {
        self.block_on(self.seed(seed, issued_at))
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
        let shared = &self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        let mut state = shared.state.lock();
        let actions = state.machine.handle(Input::Close, shared.clock.now());
        shared.execute(&mut state, actions);
    }

    /// Whether [`Manager::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// A snapshot of state, deadlines, last error and counters.
    pub fn status(&self) -> Status {
        let shared = &*self.shared;
        let state = shared.state.lock();
        let machine = &state.machine;
        let token = machine.current();
        Status {
            state: machine.state_at(shared.clock.now()),
            expires_at: token.map(|token| token.expires_at_wall),
            generation: token.map_or(0, |token| token.generation),
            last_refresh: machine.last_refresh(),
            last_error_kind: machine.last_error().map(Error::kind),
            last_error_message: machine.last_error().map(|err| err.message().to_owned()),
            refreshing: machine.is_refreshing(),
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
    fn state_now(&self) -> TokenState {
        self.state.lock().machine.state_at(self.clock.now())
    }

    /// Queues an event for the listeners; never runs a listener on this thread.
    fn emit(&self, event: Event) {
        tracing::debug!(key = %self.key, event = ?event, "tokenlease event");
        events::deliver(
            &self.listeners.load_full(),
            &self.key,
            event,
            &self.counters.events_dropped,
        );
    }

    /// Feeds one input to the machine and executes what it says.
    fn handle(self: &Arc<Self>, input: Input) -> (Option<Verdict>, Vec<Action<Arc<Token>>>) {
        let mut state = self.state.lock();
        let actions = state.machine.handle(input, self.clock.now());
        self.execute(&mut state, actions)
    }

    /// Executes the machine's actions that need no waiting, under the state lock, in
    /// order. Returns the caller's verdict and, from the first action that needs an await
    /// on (a store or source call), the rest of the actions in order.
    fn execute(
        self: &Arc<Self>,
        state: &mut State,
        actions: Vec<Action<Arc<Token>>>,
    ) -> (Option<Verdict>, Vec<Action<Arc<Token>>>) {
        let mut verdict = None;
        let mut actions = actions.into_iter();
        let mut deferred = Vec::new();
        for action in actions.by_ref() {
            match action {
                Action::StartRefresh(reason) => self.start_refresh(state, reason),
                Action::Serve(token) => verdict = Some(Verdict::Serve(token)),
                Action::Wait => {
                    let receiver = state.flight.clone();
                    verdict = Some(match receiver {
                        Some(receiver) => Verdict::Wait(receiver),
                        None => Verdict::Fail(Error::new(
                            ErrorKind::Internal,
                            "told to wait without a refresh in flight",
                        )),
                    });
                }
                Action::Fail(err) => verdict = Some(Verdict::Fail(err)),
                Action::CountServedStale => bump(&self.counters.served_stale),
                Action::CountInvalidation => bump(&self.counters.invalidations),
                Action::CountFailure => bump(&self.counters.failures),
                Action::Emit(event) => self.emit(event),
                Action::RefreshFailed {
                    error,
                    consecutive_failures,
                    retry_at,
                } => {
                    tracing::warn!(key = %self.key, "tokenlease refresh failed");
                    self.emit(Event::RefreshFailed {
                        kind: error.kind(),
                        message: error.message().to_owned(),
                        consecutive_failures,
                        next_retry_at: Some(self.clock.wall_of_mono(retry_at)),
                    });
                }
                Action::RearmTimer => self.timer_wakeup.notify_one(),
                Action::StopTimer => {
                    if let Some(timer) = self.timer.get() {
                        timer.abort();
                    }
                }
                action @ (Action::DeleteStored | Action::RevokeAtSource(_)) => {
                    deferred.push(action);
                    break;
                }
            }
        }
        deferred.extend(actions);
        self.mirror(state);
        (verdict, deferred)
    }

    /// Copies what the lock-free paths look at from the machine; called after every change
    /// to it, under the state lock.
    fn mirror(&self, state: &State) {
        let machine = &state.machine;
        let published = machine.current();
        let shown = self.current.load();
        let unchanged = match (shown.as_deref(), published) {
            (Some(shown), Some(published)) => std::ptr::eq(shown, &**published),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            self.current.store(published.cloned());
        }
        self.refreshing
            .store(machine.is_refreshing(), Ordering::Release);
        self.retry_at_nanos
            .store(machine.retry_at().as_nanos(), Ordering::Release);
        if machine.is_closed() {
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    /// Starts a background refresh from the read path unless one is running or a backoff
    /// is in effect; both checks are atomic loads, so stale reads don't serialise.
    fn kick_background_refresh(self: &Arc<Self>, now: MonoTime) {
        if self.refreshing.load(Ordering::Acquire)
            || now.as_nanos() < self.retry_at_nanos.load(Ordering::Acquire)
        {
            return;
        }
        let mut state = self.state.lock();
        let actions = state.machine.handle(Input::StaleRead, now);
        self.execute(&mut state, actions);
    }

    /// Spawns the one refresh the machine started; the caller holds the state lock.
    fn start_refresh(self: &Arc<Self>, state: &mut State, reason: RefreshReason) {
        let (sender, receiver) = watch::channel(None);
        state.flight = Some(receiver);
        let shared = self.clone();
        let span = tracing::info_span!("tokenlease.refresh", key = %self.key, reason = ?reason);
        runtime::spawn(async move { shared.run_refresh(sender, reason).await }.instrument(span));
    }

    /// The slow path of `token()`: runs on the background runtime.
    /// A caller waiting for a refresh that a revoke overtook gets `Cancelled`: logout
    /// sticks, and the next call logs in again.
    async fn acquire(self: Arc<Self>) -> Outcome {
        // Registered before deciding, so a login published after the decision wakes us.
        let login = self.login_wakeup.notified();
        tokio::pin!(login);
        login.as_mut().enable();
        let mut verdict = self.handle(Input::Acquire).0;
        let mut deadline = None;
        loop {
            let receiver = match verdict {
                Some(Verdict::Serve(token)) => return Ok(token),
                Some(Verdict::Wait(receiver)) => receiver,
                Some(Verdict::Fail(err)) => return Err(err),
                None => return Err(Error::new(ErrorKind::Internal, "no verdict for a caller")),
            };
            // One wait per call, however many refreshes it takes (the bound is the
            // policy's waiter timeout, counted from the first wait).
            let deadline = *deadline.get_or_insert_with(|| {
                bump(&self.counters.waits);
                self.clock.now() + self.policy.waiter_timeout()
            });
            let outcome = tokio::select! {
                outcome = wait_for_outcome(receiver) => outcome,
                () = &mut login => {
                    login.set(self.login_wakeup.notified());
                    login.as_mut().enable();
                    match self.current.load_full() {
                        Some(token) => Ok(token),
                        None => Err(Error::new(
                            ErrorKind::Internal,
                            "a login was announced without a token",
                        )),
                    }
                }
                () = self.clock.sleep_until(deadline) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "waited {:?} for the token refresh of {:?}; it is still running",
                        self.policy.waiter_timeout(),
                        self.key
                    ),
                )),
            };
            verdict = match outcome {
                // The token may have been invalidated since the refresh published it.
                Ok(token) => {
                    self.handle(Input::WaitSucceeded {
                        generation: token.generation,
                    })
                    .0
                }
                // A failed or slow refresh still leaves a usable token if the old one is
                // valid.
                Err(err) => self.handle(Input::WaitFailed(err)).0,
            };
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
        {
            let mut state = self.state.lock();
            state.flight = None;
            let ended = outcome.as_ref().map(|_| ()).map_err(Error::clone);
            let actions = state.machine.handle(
                Input::RefreshEnded {
                    outcome: ended,
                    backoff_draw: rand::random::<f64>(),
                },
                self.clock.now(),
            );
            self.execute(&mut state, actions);
        }
        // Waiters may all have gone away; that is fine.
        let _ = sender.send(Some(outcome));
        self.timer_wakeup.notify_one();
    }

    /// Runs the steps of one refresh as the machine gives them.
    async fn perform_refresh(self: &Arc<Self>) -> Outcome {
        let (mut run, mut step) = self.state.lock().machine.begin_refresh(
            self.source.supports_keep_alive(),
            self.store.is_some(),
            self.clock.now(),
        );
        let mut lease: Option<Arc<HeldLease>> = None;
        let mut waiting_since = None;
        loop {
            let feedback = match step {
                RunStep::Done(outcome) => return outcome,
                RunStep::KeepAlive(token) => Feedback::KeptAlive(self.keep_alive(token).await),
                RunStep::Load => Feedback::Loaded(self.load_and_offer(run.epoch()).await),
                RunStep::RequestLease { wait } => {
                    let since = *waiting_since.get_or_insert_with(|| self.clock.now());
                    let answer = self.request_lease(wait, since).await;
                    Feedback::Lease(match answer {
                        Ok(Some(held)) => {
                            lease = Some(held);
                            LeaseAnswer::Acquired
                        }
                        Ok(None) => LeaseAnswer::Busy,
                        Err(answer) => answer,
                    })
                }
                RunStep::CallSource {
                    use_refresh_token,
                    fenced,
                } => {
                    let lease = if fenced { lease.as_ref() } else { None };
                    Feedback::Called(self.call_source(&run, use_refresh_token, lease).await)
                }
                RunStep::ReleaseLease => {
                    if let Some(lease) = lease.take() {
                        lease.release(self).await;
                    }
                    Feedback::Released
                }
            };
            let mut state = self.state.lock();
            step = run.step(&mut state.machine, feedback, self.clock.now());
            self.mirror(&state);
        }
    }

    /// Keeps a sliding session alive through the source.
    async fn keep_alive(self: &Arc<Self>, token: Arc<Token>) -> Result<()> {
        bump(&self.counters.keep_alives);
        let now = self.clock.now();
        let call_token = Token::clone(&token);
        let result = self
            .gated_source_call("keep-alive", move |source| {
                Box::pin(async move { source.keep_alive(&call_token).await.map(|_| ()) })
            })
            .await;
        if result.is_ok() {
            token.mark_used(now);
            self.persist_idle_state(&token).await;
            self.emit(Event::KeptAlive {
                generation: token.generation,
            });
        }
        result
    }

    /// Saves a sliding session's record after a keep-alive, so a restarted process knows
    /// the session was used. Only while it is still the published token (a revoke or a
    /// newer token in between wins; the install lock orders it with both).
    async fn persist_idle_state(self: &Arc<Self>, token: &Arc<Token>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let _install = self.install_lock.lock().await;
        let still_current = self
            .state
            .lock()
            .machine
            .current()
            .is_some_and(|current| current.generation == token.generation);
        if !still_current {
            return;
        }
        let record = self.record_of(token);
        if let Err(err) = self
            .store_call("save", Duration::ZERO, store.save(&self.key, &record))
            .await
        {
            self.store_failed("save", &err);
        }
    }

    /// Asks the store for the lease: `Ok(Some)` acquired, `Ok(None)` busy.
    async fn request_lease(
        self: &Arc<Self>,
        wait: Duration,
        waiting_since: MonoTime,
    ) -> std::result::Result<Option<Arc<HeldLease>>, LeaseAnswer> {
        let Some(store) = self.store.clone() else {
            return Err(LeaseAnswer::Unsupported);
        };
        let requested = self
            .store_call(
                "lease",
                wait,
                store.acquire_lease(&self.key, self.policy.lease_ttl(), wait),
            )
            .await;
        match requested {
            Ok(LeaseOutcome::Acquired(lease)) => {
                self.emit(Event::LeaseAcquired {
                    waited: self.clock.now().saturating_duration_since(waiting_since),
                });
                Ok(Some(HeldLease::start(self, lease)))
            }
            Ok(LeaseOutcome::Busy) => Ok(None),
            Ok(LeaseOutcome::Unsupported) => Err(LeaseAnswer::Unsupported),
            Err(err) => {
                self.store_failed("lease", &err);
                Err(LeaseAnswer::Failed)
            }
        }
    }

    /// Calls `fetch` (or `refresh` with the current refresh token when `use_refresh_token`)
    /// and installs the result; one call at a time per manager, within the source timeout.
    /// The machine admits the call only once the previous call has ended, so a late
    /// rotation is never redeemed twice. A call that outlives the timeout goes on as a
    /// straggler: its token, when it comes, is installed and persisted (or discarded after
    /// a revoke or close), so a rotated refresh token is never lost.
    async fn call_source(
        self: &Arc<Self>,
        run: &RefreshRun<Arc<Token>>,
        use_refresh_token: bool,
        lease: Option<&Arc<HeldLease>>,
    ) -> Called<Arc<Token>> {
        let epoch = run.epoch();
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
        let admission =
            self.state
                .lock()
                .machine
                .admit_source_call(run, use_refresh_token, self.clock.now());
        let refresh_token = match admission {
            SourceAdmission::Call(refresh_token) => refresh_token,
            SourceAdmission::Superseded(token) => return Called::Superseded(token),
            SourceAdmission::Refused(refusal) => {
                return Called::Failed {
                    error: refusal.into_error(&self.key, "before this refresh called the source"),
                    redeemed: false,
                }
            }
        };
        match &refresh_token {
            Some(_) => bump(&self.counters.refreshes),
            None => bump(&self.counters.fetches),
        }
        let redeemed = refresh_token.is_some();
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
        let result = tokio::select! {
            received = &mut receiver => received.unwrap_or_else(|_| Err(Error::new(
                ErrorKind::Internal,
                "the token source call ended without a result",
            ))),
            () = self.clock.sleep_until(deadline) => {
                // The answer may have arrived just now: take it rather than strand it.
                receiver.close();
                match receiver.try_recv() {
                    Ok(result) => result,
                    Err(_) => {
                        bump(&self.counters.source_timeouts);
                        return Called::GaveUp {
                            error: self.source_timeout_error("it goes on; a late token will be kept"),
                            straggler: true,
                        };
                    }
                }
            }
        };
        match result {
            Ok(fetched) => match self
                .install(fetched, sent_at, refresh_token, lease, epoch)
                .await
            {
                Ok(token) => Called::Installed(token),
                Err(error) => Called::Failed {
                    error,
                    redeemed: false,
                },
            },
            Err(error) => Called::Failed { error, redeemed },
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
                let mut state = self.state.lock();
                state.machine.installed_outside_a_refresh();
                self.mirror(&state);
                drop(state);
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
        // OIDC Core §12.2: a refresh may come without an ID token; the login's stays.
        let id_token = fetched.id_token.or_else(|| {
            previous_refresh_token.as_ref()?;
            self.state.lock().machine.current()?.id_token.clone()
        });
        let mut token = Token {
            value: fetched.value,
            token_type: if fetched.token_type.is_empty() {
                "Bearer".to_owned()
            } else {
                fetched.token_type
            },
            scopes: fetched.scopes,
            refresh_token: fetched.refresh_token.or(previous_refresh_token),
            id_token,
            attributes: fetched.attributes,
            generation: 0,
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
        let _install = self.install_lock.lock().await;
        let admitted = self.state.lock().machine.admit_install(epoch);
        if let Err(refusal) = admitted {
            if refusal == Refusal::Revoked {
                self.revoke_discarded(token);
            }
            return Err(refusal.into_error(&self.key, "while this refresh ran"));
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
        Ok(self.publish(move |generation| {
            token.generation = generation;
            Arc::new(token)
        }))
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

    /// Publishes an admitted token under the state lock (the read path sees it at once).
    fn publish(self: &Arc<Self>, make: impl FnOnce(u64) -> Arc<Token>) -> Arc<Token> {
        let token = {
            let mut state = self.state.lock();
            let token = state.machine.publish(make, self.clock.wall_now());
            self.mirror(&state);
            token
        };
        self.announce(&token, false);
        token
    }

    /// After a token was published: its timer, and the event.
    fn announce(self: &Arc<Self>, token: &Token, from_store: bool) {
        self.ensure_timer();
        self.emit(Event::RefreshSucceeded {
            generation: token.generation,
            expires_at: token.expires_at_wall,
            from_store,
        });
    }

    fn record_of(&self, token: &Token) -> TokenRecord {
        TokenRecord {
            version: TokenRecord::VERSION,
            value: token.value.clone(),
            token_type: token.token_type.clone(),
            scopes: token.scopes.clone(),
            refresh_token: token.refresh_token.clone(),
            id_token: token.id_token.clone(),
            idle: token.idle.map(|idle| IdleRecord {
                timeout_ms: u64::try_from(idle.timeout.as_millis()).unwrap_or(u64::MAX),
                last_used_ms: unix_ms(self.clock.wall_of_mono(token.last_used())),
            }),
            attributes: token.attributes.clone(),
            expires_at_ms: unix_ms(token.expires_at_wall),
            obtained_at_ms: unix_ms(self.clock.wall_of_mono(token.obtained_at)),
        }
    }

    /// Reads the store and offers the record to the machine, which adopts it when it is
    /// news and still usable (see [`Lifecycle::offer_stored`]).
    async fn load_and_offer(self: &Arc<Self>, epoch: u64) -> Option<Arc<Token>> {
        let store = self.store.clone()?;
        // The read and the offer both happen under the install lock: a record read while
        // a revoke is deleting it must not be adopted once the revoke is done (found by
        // the lifecycle model checker).
        let _install = self.install_lock.lock().await;
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
        let now = self.clock.now();
        let expires_at = self.clock.mono_of_wall(record.expires_at());
        let obtained_at = self.clock.mono_of_wall(record.obtained_at()).min(now);
        let windows = self
            .policy
            .windows_with_random_jitter(obtained_at, expires_at);
        // A sliding session comes back with its idle timeout and last known use, so it is
        // kept alive (or replaced) when the process that wrote it would have done so.
        let idle = record.idle.map(|idle| {
            let timeout = Duration::from_millis(idle.timeout_ms);
            let last_used = self
                .clock
                .mono_of_wall(UNIX_EPOCH + Duration::from_millis(idle.last_used_ms))
                .min(now);
            let windows = IdleWindows {
                timeout,
                advisory: self.policy.advisory_window(timeout),
                mandatory: self.policy.mandatory_window(timeout),
            };
            (windows, last_used)
        });
        let last_used = idle.map_or(obtained_at, |(_, last_used)| last_used);
        let mandatory_at = match idle {
            Some((idle, last_used)) => windows
                .mandatory_at
                .min(last_used + idle.timeout - idle.mandatory),
            None => windows.mandatory_at,
        };
        let make = |generation| {
            Arc::new(Token {
                value: record.value.clone(),
                token_type: record.token_type.clone(),
                scopes: record.scopes.clone(),
                refresh_token: record.refresh_token.clone(),
                id_token: record.id_token.clone(),
                attributes: record.attributes.clone(),
                generation,
                obtained_at,
                refresh_at: windows.refresh_at,
                mandatory_at: windows.mandatory_at,
                expires_at,
                expires_at_wall: record.expires_at(),
                idle: idle.map(|(windows, _)| windows),
                last_used: AtomicU64::new(last_used.as_nanos()),
            })
        };
        let (adoption, token) = {
            let mut state = self.state.lock();
            let offered = state.machine.offer_stored(
                StoredOffer {
                    epoch,
                    value: &record.value,
                    refresh_token: record.refresh_token.as_ref(),
                    mandatory_at,
                    obtained_at,
                },
                self.clock.now(),
                make,
                self.clock.wall_now(),
            );
            self.mirror(&state);
            offered
        };
        let token = token.filter(|_| adoption == Adoption::Adopted)?;
        bump(&self.counters.store_loads);
        self.announce(&token, true);
        Some(token)
    }

    fn store_failed(&self, operation: &'static str, err: &Error) {
        bump(&self.counters.store_errors);
        tracing::warn!(key = %self.key, operation, "tokenlease store error");
        self.emit(Event::StoreError {
            operation,
            message: err.to_string(),
        });
    }

    fn invalidate(self: &Arc<Self>, generation: u64) -> bool {
        let mut state = self.state.lock();
        // The machine drops the token exactly when it is this generation.
        let dropped = state
            .machine
            .current()
            .is_some_and(|token| token.generation == generation);
        let actions = state
            .machine
            .handle(Input::Invalidate { generation }, self.clock.now());
        self.execute(&mut state, actions);
        dropped
    }

    /// Whether memory or the store holds a token obtained at or after `issued_at` (any
    /// token when `None`): a seed from then must not replace it.
    async fn holds_newer_than(&self, issued_at: Option<SystemTime>) -> Result<bool> {
        let is_newer = |obtained: SystemTime| issued_at.map_or(true, |seed| obtained >= seed);
        let current_obtained = self
            .state
            .lock()
            .machine
            .current()
            .map(|token| self.clock.wall_of_mono(token.obtained_at));
        if current_obtained.is_some_and(is_newer) {
            return Ok(true);
        }
        let Some(store) = &self.store else {
            return Ok(false);
        };
        match self
            .store_call("load", Duration::ZERO, store.load(&self.key))
            .await
        {
            Ok(Some(record)) if record.validate().is_ok() => Ok(is_newer(record.obtained_at())),
            Ok(_) => Ok(false),
            Err(err) => {
                // Seeding over a record we could not read could roll back a newer one.
                self.store_failed("load", &err);
                Err(err)
            }
        }
    }

    async fn login(self: Arc<Self>, login: FetchedToken) -> Outcome {
        let received_at = self.clock.now();
        // Like revoke: an install in progress finishes first, later ones are overtaken.
        let install = self.install_lock.lock().await;
        let epoch = {
            let mut state = self.state.lock();
            let actions = state.machine.handle(Input::Login, received_at);
            if let (Some(Verdict::Fail(err)), _) = self.execute(&mut state, actions) {
                return Err(err);
            }
            state.machine.epoch()
        };
        drop(install);
        let token = self.install(login, received_at, None, None, epoch).await?;
        {
            let mut state = self.state.lock();
            state.machine.installed_outside_a_refresh();
            self.mirror(&state);
        }
        self.timer_wakeup.notify_one();
        self.login_wakeup.notify_waiters();
        Ok(token)
    }

    async fn revoke(self: Arc<Self>) -> Result<()> {
        // Waits for an install in progress (bounded by the store timeout); every install
        // after this sees the new epoch and discards its token.
        let mut install = Some(self.install_lock.lock().await);
        let (verdict, actions) = self.handle(Input::Revoke);
        if let Some(Verdict::Fail(err)) = verdict {
            return Err(err);
        }
        let mut revoked = Ok(());
        for action in actions {
            match action {
                Action::DeleteStored => {
                    if let Some(store) = &self.store {
                        let deleted = self
                            .store_call("delete", Duration::ZERO, store.delete(&self.key))
                            .await;
                        if let Err(err) = deleted {
                            self.store_failed("delete", &err);
                        }
                    }
                }
                Action::RevokeAtSource(token) => {
                    install.take();
                    let token = Token::clone(&token);
                    revoked = self
                        .gated_source_call("revocation", move |source| {
                            Box::pin(async move { source.revoke(&token).await })
                        })
                        .await;
                }
                Action::Emit(event) => {
                    install.take();
                    self.emit(event);
                }
                _ => {}
            }
        }
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

    fn next_timer_deadline(&self) -> MonoTime {
        self.state.lock().machine.timer_deadline()
    }

    fn on_timer(self: &Arc<Self>) {
        self.handle(Input::TimerFired);
    }
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
