//! The lifecycle as a pure state machine: no tokio, no I/O, no clock of its own.
//!
//! Every decision of the token lifecycle is made here: whether a caller is served, waits
//! for the one refresh or fails; when a refresh starts and for what reason; how long a
//! failure backs off; what the timer waits for; which generation an invalidation drops;
//! whether a stored record may be adopted; whether a source call may start or a token may
//! be installed after a revoke or close; what one refresh does next (keep the session alive,
//! read the store, ask for the lease, call the source, fall back to the primary grant,
//! release the lease).
//!
//! [`Lifecycle`] is the per-key state, changed by [`Lifecycle::handle`] (an [`Input`] and
//! the current time in, [`Action`]s out) and by a few admission checks the refresh asks
//! for. [`RefreshRun`] is one refresh as a sequence of [`RunStep`]s, each answered with a
//! [`Feedback`]. The manager executes the actions and steps (source and store calls,
//! timers, events, publishing for the lock-free read path) and feeds the results back; the
//! exhaustive checker in this module's tests drives the same code through every
//! interleaving of inputs up to a bound.
//!
//! The machine is generic over the token it hands out ([`TokenHandle`]): the manager uses
//! `Arc<Token>`, the checker a small value type.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::MonoTime;
use crate::error::{Error, ErrorKind};
use crate::lifecycle::events::{Event, RefreshReason, TokenState};
use crate::lifecycle::policy::{Policy, MAX_RETRY_AFTER};

/// What the machine needs to know about a token it holds.
pub trait TokenHandle: Clone {
    /// The token value or anything that identifies it (compared, never shown).
    type Value: Clone + PartialEq;
    /// The generation the machine gave the token when it was published.
    fn generation(&self) -> u64;
    /// The token value.
    fn value(&self) -> &Self::Value;
    /// The refresh token that came with it, if any.
    fn refresh_token(&self) -> Option<&Self::Value>;
    /// When the request that produced it was sent.
    fn obtained_at(&self) -> MonoTime;
    /// From here a refresh (or keep-alive) starts in the background.
    fn refresh_at(&self) -> MonoTime;
    /// From here callers wait for a refresh.
    fn mandatory_at(&self) -> MonoTime;
    /// From here the token is not served at all.
    fn expires_at(&self) -> MonoTime;
    /// Wall-clock expiry, for events.
    fn expires_at_wall(&self) -> SystemTime;
    /// Whether a sliding session's idle timeout comes before its refresh point (then the
    /// refresh is a keep-alive).
    fn idle_is_due_first(&self) -> bool;
}

/// One input to [`Lifecycle::handle`].
#[derive(Debug, Clone)]
pub enum Input {
    /// A caller needs a token and the lock-free read could not serve one.
    Acquire,
    /// The read path served a token that is past its refresh point.
    StaleRead,
    /// A caller waited for a refresh that published the token of this generation.
    WaitSucceeded {
        /// The generation the refresh published.
        generation: u64,
    },
    /// A caller waited for a refresh that failed with this error.
    WaitFailed(Error),
    /// The timer reached [`Lifecycle::timer_deadline`].
    TimerFired,
    /// The server rejected the token of this generation.
    Invalidate {
        /// The rejected generation.
        generation: u64,
    },
    /// The refresh in flight ended (its token, if any, is already published).
    RefreshEnded {
        /// What it ended with.
        outcome: Result<(), Error>,
        /// A uniform draw in `[0, 1]` for the backoff's full jitter (the machine draws
        /// no random numbers of its own).
        backoff_draw: f64,
    },
    /// A new interactive login replaces the tokens: refreshes in flight are overtaken
    /// (their tokens discarded), failures forgotten; the manager then installs the login's
    /// token under the new epoch.
    Login,
    /// Log out.
    Revoke,
    /// Shut the manager down.
    Close,
}

/// What the manager does in answer to an [`Input`], in order.
#[derive(Debug, Clone)]
pub enum Action<T> {
    /// Start the one refresh ([`Lifecycle::begin_refresh`]) for this reason.
    StartRefresh(RefreshReason),
    /// Hand this token to the caller.
    Serve(T),
    /// The token served is past its mandatory point or a refresh failed: count it.
    CountServedStale,
    /// Wait for the refresh in flight.
    Wait,
    /// Give the caller this error.
    Fail(Error),
    /// Delete the stored record.
    DeleteStored,
    /// Revoke this token at the source.
    RevokeAtSource(T),
    /// Count one invalidation.
    CountInvalidation,
    /// Count one failed refresh.
    CountFailure,
    /// Tell the listeners.
    Emit(Event),
    /// Report a failed refresh (the manager turns `retry_at` into wall time).
    RefreshFailed {
        /// The error.
        error: Error,
        /// Failures in a row.
        consecutive_failures: u32,
        /// When the next attempt may start.
        retry_at: MonoTime,
    },
    /// Re-read [`Lifecycle::timer_deadline`].
    RearmTimer,
    /// Stop the timer for good.
    StopTimer,
}

/// Why a source call or an install may not go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The manager was closed.
    Closed,
    /// A revoke came after the refresh started.
    Revoked,
}

impl Refusal {
    /// The error a refused refresh ends with.
    pub fn into_error(self, key: &str, during: &str) -> Error {
        match self {
            Refusal::Closed => closed_error(),
            Refusal::Revoked => Error::new(
                ErrorKind::Cancelled,
                format!(
                    "{OVERTAKEN_BY_REVOKE}: the token of {key:?} was revoked {during}; \
                     its result was discarded"
                ),
            ),
        }
    }
}

/// Whether a source call may start, asked once the previous call has really ended.
#[derive(Debug, Clone)]
pub enum SourceAdmission<T: TokenHandle> {
    /// Call the source, redeeming this refresh token (`None`: the primary grant).
    Call(Option<T::Value>),
    /// A fresh token was installed meanwhile (a late call, a sibling through the store).
    Superseded(T),
    /// Do not call.
    Refused(Refusal),
}

/// What became of a stored record offered for adoption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// Published under a new generation.
    Adopted,
    /// Not news: it is the current token, or one the server rejected.
    NotNews,
    /// Too old to serve; its refresh token (the latest rotation) was kept.
    TooOld,
    /// A revoke or close since the refresh started.
    Refused(Refusal),
}

/// A record read from the store, as [`Lifecycle::offer_stored`] weighs it.
#[derive(Debug, Clone, Copy)]
pub struct StoredOffer<'a, V> {
    /// The revoke epoch of the refresh that read it.
    pub epoch: u64,
    /// Its token value.
    pub value: &'a V,
    /// Its refresh token.
    pub refresh_token: Option<&'a V>,
    /// Its mandatory point (computed as for a fresh token).
    pub mandatory_at: MonoTime,
    /// When it was obtained.
    pub obtained_at: MonoTime,
}

/// The per-key lifecycle state. The token it holds ([`Lifecycle::current`]) is the one the
/// manager publishes for its lock-free read path: the manager copies it after every change.
#[derive(Debug, Clone)]
pub struct Lifecycle<T: TokenHandle> {
    key: Arc<str>,
    policy: Arc<Policy>,
    current: Option<T>,
    next_generation: u64,
    inflight: bool,
    consecutive_failures: u32,
    retry_at: MonoTime,
    last_error: Option<Error>,
    last_failure_at: Option<MonoTime>,
    /// Kept apart from the current token so an invalidated token's refresh token works.
    refresh_token: Option<T::Value>,
    /// The value of the last invalidated token: never adopted back from a store.
    rejected_value: Option<T::Value>,
    /// When the newest rejected token was obtained: a stored record that is not newer is
    /// never adopted (an older token is no better than a newer one the server refused).
    rejected_obtained_at: Option<MonoTime>,
    last_refresh: Option<SystemTime>,
    served_stale_generation: u64,
    expired_generation: u64,
    /// Bumped by every revoke; a refresh that started before one discards its token.
    epoch: u64,
    closed: bool,
}

impl<T: TokenHandle> Lifecycle<T> {
    /// An empty lifecycle for the token of `key` (named in error messages).
    pub fn new(key: impl Into<Arc<str>>, policy: impl Into<Arc<Policy>>) -> Self {
        Self {
            key: key.into(),
            policy: policy.into(),
            current: None,
            next_generation: 0,
            inflight: false,
            consecutive_failures: 0,
            retry_at: MonoTime::ZERO,
            last_error: None,
            last_failure_at: None,
            refresh_token: None,
            rejected_value: None,
            rejected_obtained_at: None,
            last_refresh: None,
            served_stale_generation: 0,
            expired_generation: 0,
            epoch: 0,
            closed: false,
        }
    }

    /// The published token.
    pub fn current(&self) -> Option<&T> {
        self.current.as_ref()
    }

    /// Whether a refresh is in flight.
    pub fn is_refreshing(&self) -> bool {
        self.inflight
    }

    /// Whether the manager was closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// No refresh may start before this (backoff).
    pub fn retry_at(&self) -> MonoTime {
        self.retry_at
    }

    /// The error of the last failed refresh (cleared by a success).
    pub fn last_error(&self) -> Option<&Error> {
        self.last_error.as_ref()
    }

    /// When a token was last published.
    pub fn last_refresh(&self) -> Option<SystemTime> {
        self.last_refresh
    }

    /// Failed refreshes in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The revoke epoch a refresh starting now belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last generation handed out (tokens installed later have larger ones).
    pub fn generation_mark(&self) -> u64 {
        self.next_generation
    }

    /// The refresh token the next refresh would redeem.
    pub fn refresh_token(&self) -> Option<&T::Value> {
        self.refresh_token.as_ref()
    }

    /// The state of the published token at `now`.
    pub fn state_at(&self, now: MonoTime) -> TokenState {
        match &self.current {
            None => TokenState::Empty,
            Some(token) if now < token.refresh_at() => TokenState::Fresh,
            Some(token) if now < token.mandatory_at() => TokenState::Stale,
            Some(token) if now < token.expires_at() => TokenState::Mandatory,
            Some(_) => TokenState::Expired,
        }
    }

    /// Feeds everything that decides the machine's future into `state` (for model
    /// checkers that deduplicate the states they reach).
    pub fn hash_state<H: Hasher>(&self, state: &mut H)
    where
        T: Hash,
        T::Value: Hash,
    {
        self.current.hash(state);
        self.next_generation.hash(state);
        self.inflight.hash(state);
        self.consecutive_failures.hash(state);
        self.retry_at.hash(state);
        self.last_error.as_ref().map(error_identity).hash(state);
        self.last_failure_at.hash(state);
        self.refresh_token.hash(state);
        self.rejected_value.hash(state);
        self.rejected_obtained_at.hash(state);
        self.last_refresh.is_some().hash(state);
        self.served_stale_generation.hash(state);
        self.expired_generation.hash(state);
        self.epoch.hash(state);
        self.closed.hash(state);
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, input: Input, now: MonoTime) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        match input {
            Input::Acquire => self.acquire(now, &mut actions),
            Input::StaleRead => {
                let still_stale = self
                    .current
                    .as_ref()
                    .is_some_and(|token| now >= token.refresh_at());
                if still_stale && !self.closed {
                    self.start_if_allowed(now, RefreshReason::Stale, &mut actions);
                }
            }
            Input::WaitSucceeded { generation } => match self.current.clone() {
                Some(token) if token.generation() == generation => {
                    actions.push(Action::Serve(token));
                }
                // Invalidated (or replaced) while the refresh finished: never hand out a
                // rejected token; decide again as for a new caller.
                _ => self.acquire(now, &mut actions),
            },
            Input::WaitFailed(err) => {
                let valid = self
                    .current
                    .clone()
                    .filter(|token| now < token.expires_at());
                if is_overtaken_by_revoke(&err) {
                    // Logged out: fail; logged in again meanwhile: the new login's token.
                    match valid {
                        Some(token) => actions.push(Action::Serve(token)),
                        None => actions.push(Action::Fail(err)),
                    }
                } else {
                    match self.current.clone() {
                        Some(token) if now < token.expires_at() => {
                            self.served_stale(&token, &mut actions);
                            actions.push(Action::Serve(token));
                        }
                        _ => {
                            let err = self.caller_error(err, now, &mut actions);
                            actions.push(Action::Fail(err));
                        }
                    }
                }
            }
            Input::TimerFired => {
                if now >= self.timer_deadline() && !self.inflight && !self.closed {
                    self.start(RefreshReason::Scheduled, &mut actions);
                }
            }
            Input::Invalidate { generation } => {
                if let Some(token) = self
                    .current
                    .take_if(|token| token.generation() == generation)
                {
                    self.rejected_value = Some(token.value().clone());
                    self.rejected_obtained_at =
                        self.rejected_obtained_at.max(Some(token.obtained_at()));
                    actions.push(Action::CountInvalidation);
                    actions.push(Action::Emit(Event::Invalidated { generation }));
                    actions.push(Action::RearmTimer);
                }
            }
            Input::RefreshEnded {
                outcome,
                backoff_draw,
            } => {
                self.inflight = false;
                match outcome {
                    Ok(()) => self.clear_failures(),
                    // Not a failure of the source: logout overtook it.
                    Err(err) if is_overtaken_by_revoke(&err) => self.clear_failures(),
                    Err(err) => self.refresh_failed(err, backoff_draw, now, &mut actions),
                }
                actions.push(Action::RearmTimer);
            }
            Input::Login => {
                if self.closed {
                    actions.push(Action::Fail(closed_error()));
                    return actions;
                }
                self.epoch += 1;
                self.clear_failures();
                actions.push(Action::RearmTimer);
            }
            Input::Revoke => {
                if self.closed {
                    actions.push(Action::Fail(closed_error()));
                    return actions;
                }
                self.epoch += 1;
                self.refresh_token = None;
                self.clear_failures();
                let token = self.current.take();
                actions.push(Action::DeleteStored);
                let generation = token.as_ref().map(T::generation);
                if let Some(token) = token {
                    actions.push(Action::RevokeAtSource(token));
                }
                actions.push(Action::Emit(Event::Revoked { generation }));
            }
            Input::Close => {
                self.closed = true;
                self.current = None;
                self.refresh_token = None;
                actions.push(Action::StopTimer);
            }
        }
        actions
    }

    fn acquire(&mut self, now: MonoTime, actions: &mut Vec<Action<T>>) {
        if self.closed {
            actions.push(Action::Fail(closed_error()));
            return;
        }
        if let Some(token) = self.current.clone() {
            if now < token.mandatory_at() {
                if now >= token.refresh_at() {
                    self.start_if_allowed(now, RefreshReason::Stale, actions);
                }
                actions.push(Action::Serve(token));
                return;
            }
        }
        if self.inflight {
            actions.push(Action::Wait);
            return;
        }
        let valid = self
            .current
            .clone()
            .filter(|token| now < token.expires_at());
        if now >= self.retry_at || (valid.is_none() && self.may_retry_early(now)) {
            let reason = match &self.current {
                None if self.last_refresh.is_none() => RefreshReason::Initial,
                None => RefreshReason::Invalidated,
                Some(_) => RefreshReason::Mandatory,
            };
            self.start(reason, actions);
            actions.push(Action::Wait);
            return;
        }
        // Backing off after a failure: serve a still-valid token, else the last error.
        match valid {
            Some(token) => {
                self.served_stale(&token, actions);
                actions.push(Action::Serve(token));
            }
            None => {
                let err = self
                    .last_error
                    .clone()
                    .unwrap_or_else(|| Error::transient("token refresh is backing off"));
                let err = self.caller_error(err, now, actions);
                actions.push(Action::Fail(err));
            }
        }
    }

    fn start_if_allowed(
        &mut self,
        now: MonoTime,
        reason: RefreshReason,
        actions: &mut Vec<Action<T>>,
    ) {
        if !self.inflight && now >= self.retry_at {
            self.start(reason, actions);
        }
    }

    fn start(&mut self, reason: RefreshReason, actions: &mut Vec<Action<T>>) {
        self.inflight = true;
        actions.push(Action::StartRefresh(reason));
    }

    /// A caller with no valid token left does not wait out a transient backoff: once the
    /// last attempt is [`Policy::caller_retry_interval`] old, it tries again (single flight
    /// still holds). A server's Retry-After and terminal errors are respected.
    fn may_retry_early(&self, now: MonoTime) -> bool {
        let transient = self
            .last_error
            .as_ref()
            .is_some_and(|err| err.is_transient() && err.retry_after().is_none());
        transient
            && self
                .last_failure_at
                .is_some_and(|at| now >= at + self.policy.caller_retry_interval())
    }

    /// The error a caller gets when no valid token exists: terminal errors as they are;
    /// transient ones become `Expired` (with the cause) once a token has died.
    fn caller_error(&mut self, err: Error, now: MonoTime, actions: &mut Vec<Action<T>>) -> Error {
        if err.kind() == ErrorKind::Closed || !err.is_transient() {
            return err;
        }
        match &self.current {
            Some(token) if now >= token.expires_at() => {
                let generation = token.generation();
                if std::mem::replace(&mut self.expired_generation, generation) != generation {
                    actions.push(Action::Emit(Event::Expired { generation }));
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

    fn served_stale(&mut self, token: &T, actions: &mut Vec<Action<T>>) {
        actions.push(Action::CountServedStale);
        let generation = token.generation();
        if std::mem::replace(&mut self.served_stale_generation, generation) != generation {
            actions.push(Action::Emit(Event::ServedStale {
                generation,
                expires_at: token.expires_at_wall(),
            }));
        }
    }

    fn refresh_failed(
        &mut self,
        err: Error,
        backoff_draw: f64,
        now: MonoTime,
        actions: &mut Vec<Action<T>>,
    ) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        // A Retry-After (from a server or a foreign callback) is honoured up to a bound,
        // so one answer can never lock the manager out for long.
        let retry_after = err.retry_after().map(|after| after.min(MAX_RETRY_AFTER));
        let delay = if err.is_transient() {
            self.policy
                .backoff_with(self.consecutive_failures, retry_after, backoff_draw)
        } else {
            // Terminal: don't hammer the server; callers get this error at once until the
            // backoff ceiling has passed.
            self.policy
                .backoff_ceiling(self.consecutive_failures)
                .max(retry_after.unwrap_or_default())
        };
        self.retry_at = now + delay;
        self.last_failure_at = Some(now);
        if err.is_transient() && err.retry_after().is_none() {
            // Never let a backoff skip past the cached token's last chances: one attempt
            // at the mandatory point and one at expiry, so a server that recovers before
            // the token dies is noticed before callers fail.
            if let Some(edge) = self.current.as_ref().and_then(|token| {
                [token.mandatory_at(), token.expires_at()]
                    .into_iter()
                    .find(|edge| now < *edge)
            }) {
                self.retry_at = self.retry_at.min(edge);
            }
        }
        self.last_error = Some(err.clone());
        actions.push(Action::CountFailure);
        actions.push(Action::RefreshFailed {
            error: err,
            consecutive_failures: self.consecutive_failures,
            retry_at: self.retry_at,
        });
    }

    fn clear_failures(&mut self) {
        self.consecutive_failures = 0;
        self.retry_at = MonoTime::ZERO;
        self.last_error = None;
        self.last_failure_at = None;
    }

    /// When the timer should next act: the refresh point, or the backoff retry after a
    /// transient failure. Terminal failures wait for a caller.
    pub fn timer_deadline(&self) -> MonoTime {
        if self.closed || self.inflight {
            return MonoTime::FAR_FUTURE;
        }
        let Some(token) = &self.current else {
            return MonoTime::FAR_FUTURE;
        };
        if self.consecutive_failures == 0 {
            return token.refresh_at();
        }
        match &self.last_error {
            Some(err) if err.is_transient() => token.refresh_at().max(self.retry_at),
            _ => MonoTime::FAR_FUTURE,
        }
    }

    /// Starts the steps of the refresh that [`Action::StartRefresh`] asked for.
    /// `keeps_alive`: whether the source can keep a session alive; `has_store`: whether
    /// the manager has a store.
    pub fn begin_refresh(
        &self,
        keeps_alive: bool,
        has_store: bool,
        now: MonoTime,
    ) -> (RefreshRun<T>, RunStep<T>) {
        let mut run = RefreshRun {
            epoch: self.epoch,
            generation_at_start: self.next_generation,
            has_store,
            stage: Stage::Begin,
            lease: LeaseHold::None,
            give_up: MonoTime::ZERO,
            grant: Grant::RefreshToken,
            outcome: None,
        };
        if self.closed {
            return (run, RunStep::Done(Err(closed_error())));
        }
        if keeps_alive {
            let due = |token: &T| token.idle_is_due_first() && now < token.expires_at();
            if let Some(token) = self.current.clone().filter(due) {
                run.stage = Stage::KeepingAlive;
                return (run, RunStep::KeepAlive(token));
            }
        }
        let step = run.first_step();
        (run, step)
    }

    /// Asked by a refresh once the previous source call has really ended.
    pub fn admit_source_call(
        &self,
        run: &RefreshRun<T>,
        use_refresh_token: bool,
        now: MonoTime,
    ) -> SourceAdmission<T> {
        // A late call (or a lease holder, through the store) may have installed a token
        // since this refresh started.
        if self.next_generation != run.generation_at_start {
            if let Some(token) = self
                .current
                .clone()
                .filter(|token| now < token.refresh_at())
            {
                return SourceAdmission::Superseded(token);
            }
        }
        if let Err(refusal) = self.admit_install(run.epoch) {
            return SourceAdmission::Refused(refusal);
        }
        SourceAdmission::Call(if use_refresh_token {
            self.refresh_token.clone()
        } else {
            None
        })
    }

    /// Whether a token from a refresh of `epoch` may be saved and published. The manager
    /// asks under its install lock, which it holds until the token is published, so a
    /// revoke comes either before (and wins) or after.
    pub fn admit_install(&self, epoch: u64) -> Result<(), Refusal> {
        if self.closed {
            Err(Refusal::Closed)
        } else if self.epoch != epoch {
            Err(Refusal::Revoked)
        } else {
            Ok(())
        }
    }

    /// Publishes a new token: `make` builds it with the generation given here.
    pub fn publish(&mut self, make: impl FnOnce(u64) -> T, wall_now: SystemTime) -> T {
        self.next_generation += 1;
        let token = make(self.next_generation);
        self.refresh_token = token.refresh_token().cloned();
        self.last_refresh = Some(wall_now);
        if !self.closed {
            self.current = Some(token.clone());
        }
        token
    }

    /// A token was installed outside a refresh (a late source call, a login): the
    /// failure that came before is over.
    pub fn installed_outside_a_refresh(&mut self) {
        self.clear_failures();
    }

    /// The refresh token was refused by the server: the next refresh uses the primary grant.
    pub fn forget_refresh_token(&mut self) {
        self.refresh_token = None;
    }

    /// Offers a record read from the store: adopted when it is news (not the current
    /// token, not a rejected one nor obtained before the newest rejected one) and before
    /// its mandatory point. A stored refresh token
    /// is kept even when its access token is too old: it is the latest rotation. `make`
    /// builds the token with the generation given here.
    pub fn offer_stored(
        &mut self,
        offer: StoredOffer<'_, T::Value>,
        now: MonoTime,
        make: impl FnOnce(u64) -> T,
        wall_now: SystemTime,
    ) -> (Adoption, Option<T>) {
        let StoredOffer {
            epoch,
            value,
            refresh_token,
            mandatory_at,
            obtained_at,
        } = offer;
        let is_current = self
            .current
            .as_ref()
            .is_some_and(|token| token.value() == value);
        // Found by the model checker: with a failed save in between, the store can still
        // hold a token older than the last rejected one, rejected itself earlier.
        let was_rejected = self.rejected_value.as_ref() == Some(value)
            || self
                .rejected_obtained_at
                .is_some_and(|rejected| obtained_at <= rejected);
        if is_current || was_rejected {
            return (Adoption::NotNews, None);
        }
        if now >= mandatory_at {
            if let Some(refresh_token) = refresh_token {
                self.refresh_token = Some(refresh_token.clone());
            }
            return (Adoption::TooOld, None);
        }
        // A record read before a revoke must not come back after it.
        if let Err(refusal) = self.admit_install(epoch) {
            return (Adoption::Refused(refusal), None);
        }
        let token = self.publish(make, wall_now);
        (Adoption::Adopted, Some(token))
    }
}

/// One refresh, from the first store read to the lease release, as steps.
#[derive(Debug, Clone)]
pub struct RefreshRun<T> {
    epoch: u64,
    generation_at_start: u64,
    has_store: bool,
    stage: Stage,
    lease: LeaseHold,
    give_up: MonoTime,
    grant: Grant,
    /// The outcome, kept while the lease is released.
    outcome: Option<Result<T, Error>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stage {
    Begin,
    KeepingAlive,
    FirstLoad,
    Leasing,
    LoadWhileLeasing,
    LoadUnderLease,
    Calling,
    LoadAfterInvalidGrant,
    Releasing,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LeaseHold {
    None,
    Held,
    /// A source call that outlived its timeout owns the lease now and releases it.
    HandedOver,
}

/// Which grant the source call of a refresh uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Grant {
    /// The refresh token when there is one, with a fallback to the primary grant if the
    /// server refuses it.
    RefreshToken,
    /// The primary grant, without a fallback.
    Primary,
}

/// What a refresh does next.
#[derive(Debug, Clone)]
pub enum RunStep<T> {
    /// Keep this sliding session alive; answer with [`Feedback::KeptAlive`].
    KeepAlive(T),
    /// Read the store and offer the record ([`Lifecycle::offer_stored`]); answer with
    /// [`Feedback::Loaded`].
    Load,
    /// Ask the store for the refresh lease, waiting at most `wait`; answer with
    /// [`Feedback::Lease`].
    RequestLease {
        /// How long the store may wait for the lease.
        wait: Duration,
    },
    /// Call the source (after [`Lifecycle::admit_source_call`]) and install what it
    /// returns; answer with [`Feedback::Called`].
    CallSource {
        /// Redeem the refresh token (when there is one) rather than the primary grant.
        use_refresh_token: bool,
        /// Save under the lease this refresh holds (fenced).
        fenced: bool,
    },
    /// Release the lease; answer with [`Feedback::Released`].
    ReleaseLease,
    /// The refresh is over.
    Done(Result<T, Error>),
}

/// The answer to a lease request.
#[derive(Debug, Clone)]
pub enum LeaseAnswer {
    /// This process holds the lease now.
    Acquired,
    /// Another holder has it.
    Busy,
    /// The store has no leases.
    Unsupported,
    /// The store failed (or did not answer in time).
    Failed,
}

/// What became of a source call.
#[derive(Debug, Clone)]
pub enum Called<T> {
    /// The token was installed.
    Installed(T),
    /// The call or the install failed. `redeemed`: the call redeemed a refresh token.
    Failed {
        /// The error.
        error: Error,
        /// Whether a refresh token was redeemed.
        redeemed: bool,
    },
    /// A token installed meanwhile made the call unnecessary.
    Superseded(T),
    /// The source timeout passed. `straggler`: the call goes on and installs its late
    /// token itself (and owns the lease from now on).
    GaveUp {
        /// The timeout error.
        error: Error,
        /// Whether the call is still running.
        straggler: bool,
    },
}

/// The answer to a [`RunStep`].
#[derive(Debug, Clone)]
pub enum Feedback<T> {
    /// The keep-alive's result.
    KeptAlive(Result<(), Error>),
    /// The store was read; `Some` when a record was adopted.
    Loaded(Option<T>),
    /// The lease request's result.
    Lease(LeaseAnswer),
    /// The source call's result.
    Called(Called<T>),
    /// The lease was released.
    Released,
}

/// How long one lease request waits before the store is re-read for a sibling's token.
pub const LEASE_SLICE: Duration = Duration::from_millis(250);

impl<T: TokenHandle> RefreshRun<T> {
    /// The revoke epoch this refresh belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the refresh is over.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Feeds the refresh's progress into `state` (see [`Lifecycle::hash_state`]).
    pub fn hash_state<H: Hasher>(&self, state: &mut H)
    where
        T: Hash,
    {
        self.epoch.hash(state);
        self.generation_at_start.hash(state);
        self.has_store.hash(state);
        self.stage.hash(state);
        self.lease.hash(state);
        self.give_up.hash(state);
        self.grant.hash(state);
        match &self.outcome {
            None => 0u8.hash(state),
            Some(Ok(token)) => {
                1u8.hash(state);
                token.hash(state);
            }
            Some(Err(err)) => {
                2u8.hash(state);
                error_identity(err).hash(state);
            }
        }
    }

    /// Feeds the answer to the last step back; returns the next step. `lifecycle` is the
    /// state of the key this refresh belongs to.
    pub fn step(
        &mut self,
        lifecycle: &mut Lifecycle<T>,
        feedback: Feedback<T>,
        now: MonoTime,
    ) -> RunStep<T> {
        match (self.stage, feedback) {
            (Stage::KeepingAlive, Feedback::KeptAlive(result)) => match result {
                Ok(()) => match lifecycle.current.clone() {
                    Some(token) => self.finish(Ok(token)),
                    None => self.after_keep_alive(lifecycle, now),
                },
                // The server may be down: keep the session while it lasts, retry with backoff.
                Err(err) if err.is_transient() => self.finish(Err(err)),
                // The session is gone (expired, revoked): log in again.
                Err(_) => self.after_keep_alive(lifecycle, now),
            },
            (Stage::FirstLoad, Feedback::Loaded(adopted)) => match adopted {
                Some(token) => self.finish(Ok(token)),
                None => {
                    self.give_up = now + lifecycle.policy.lease_wait();
                    self.request_lease(now)
                }
            },
            (Stage::Leasing, Feedback::Lease(answer)) => match answer {
                LeaseAnswer::Acquired => {
                    self.lease = LeaseHold::Held;
                    // Whoever held the lease before may have just saved a fresh token.
                    self.stage = Stage::LoadUnderLease;
                    RunStep::Load
                }
                LeaseAnswer::Busy => {
                    // The lease is asked for in short slices and the store re-read between
                    // them: a token the holder (or any sibling) saves is adopted at once.
                    self.stage = Stage::LoadWhileLeasing;
                    RunStep::Load
                }
                LeaseAnswer::Unsupported => self.call(Grant::RefreshToken),
                LeaseAnswer::Failed => {
                    // Without the lease, siblings could redeem the same refresh token at
                    // once and make the server revoke the whole family: use the primary
                    // grant instead (it rotates nothing; a source without one fails, and
                    // the cached token is served while the lease is retried with backoff).
                    if lifecycle.refresh_token.is_some() {
                        self.call(Grant::Primary)
                    } else {
                        self.call(Grant::RefreshToken)
                    }
                }
            },
            (Stage::LoadWhileLeasing, Feedback::Loaded(adopted)) => match adopted {
                Some(token) => self.finish(Ok(token)),
                None if lifecycle.closed => self.finish(Err(closed_error())),
                None if now >= self.give_up => self.finish(Err(Error::transient(format!(
                    "another process held the refresh lease of {:?} for {:?}",
                    lifecycle.key,
                    lifecycle.policy.lease_wait()
                )))),
                None => self.request_lease(now),
            },
            (Stage::LoadUnderLease, Feedback::Loaded(adopted)) => match adopted {
                Some(token) => self.finish(Ok(token)),
                None => self.call(Grant::RefreshToken),
            },
            (Stage::Calling, Feedback::Called(called)) => match called {
                Called::Installed(token) | Called::Superseded(token) => self.finish(Ok(token)),
                Called::GaveUp { error, straggler } => {
                    if straggler && self.lease == LeaseHold::Held {
                        self.lease = LeaseHold::HandedOver;
                    }
                    self.finish(Err(error))
                }
                Called::Failed { error, redeemed }
                    if redeemed
                        && self.grant == Grant::RefreshToken
                        && error.kind() == ErrorKind::InvalidGrant =>
                {
                    if self.has_store {
                        // A sibling may have rotated the refresh token under us: adopt its
                        // token rather than logging in again.
                        self.stage = Stage::LoadAfterInvalidGrant;
                        RunStep::Load
                    } else {
                        lifecycle.forget_refresh_token();
                        self.call(Grant::Primary)
                    }
                }
                Called::Failed { error, .. } => self.finish(Err(error)),
            },
            (Stage::LoadAfterInvalidGrant, Feedback::Loaded(adopted)) => match adopted {
                Some(token) => self.finish(Ok(token)),
                None => {
                    // The refresh token is dead: fall back to the primary grant.
                    lifecycle.forget_refresh_token();
                    self.call(Grant::Primary)
                }
            },
            (Stage::Releasing, Feedback::Released) => {
                self.stage = Stage::Done;
                RunStep::Done(self.outcome.take().unwrap_or_else(|| {
                    Err(Error::new(
                        ErrorKind::Internal,
                        "a refresh lost its outcome",
                    ))
                }))
            }
            (stage, feedback) => {
                self.stage = Stage::Done;
                RunStep::Done(Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "refresh step out of order: {} in stage {stage:?}",
                        feedback.name()
                    ),
                )))
            }
        }
    }

    fn after_keep_alive(&mut self, lifecycle: &Lifecycle<T>, _now: MonoTime) -> RunStep<T> {
        // Tokens installed after this point (a late call's answer, a lease holder's token
        // adopted from the store) make this refresh unnecessary.
        self.generation_at_start = lifecycle.next_generation;
        self.first_step()
    }

    fn first_step(&mut self) -> RunStep<T> {
        if self.has_store {
            self.stage = Stage::FirstLoad;
            RunStep::Load
        } else {
            self.call(Grant::RefreshToken)
        }
    }

    fn call(&mut self, grant: Grant) -> RunStep<T> {
        self.stage = Stage::Calling;
        self.grant = grant;
        RunStep::CallSource {
            use_refresh_token: grant == Grant::RefreshToken,
            fenced: self.lease == LeaseHold::Held,
        }
    }

    fn request_lease(&mut self, now: MonoTime) -> RunStep<T> {
        self.stage = Stage::Leasing;
        RunStep::RequestLease {
            wait: LEASE_SLICE.min(self.give_up.saturating_duration_since(now)),
        }
    }

    fn finish(&mut self, outcome: Result<T, Error>) -> RunStep<T> {
        if self.lease == LeaseHold::Held {
            self.lease = LeaseHold::None;
            self.stage = Stage::Releasing;
            self.outcome = Some(outcome);
            return RunStep::ReleaseLease;
        }
        self.stage = Stage::Done;
        RunStep::Done(outcome)
    }
}

impl<T> Feedback<T> {
    fn name(&self) -> &'static str {
        match self {
            Feedback::KeptAlive(_) => "KeptAlive",
            Feedback::Loaded(_) => "Loaded",
            Feedback::Lease(_) => "Lease",
            Feedback::Called(_) => "Called",
            Feedback::Released => "Released",
        }
    }
}

/// What of an error can change a decision: its kind, its Retry-After, and whether it is
/// the overtaken-by-revoke marker.
fn error_identity(err: &Error) -> (ErrorKind, Option<Duration>, bool) {
    (err.kind(), err.retry_after(), is_overtaken_by_revoke(err))
}

/// Marks the error of a refresh that a revoke overtook.
const OVERTAKEN_BY_REVOKE: &str = "overtaken by revoke";

/// Whether a refresh ended because a revoke overtook it.
pub fn is_overtaken_by_revoke(err: &Error) -> bool {
    err.kind() == ErrorKind::Cancelled && err.message().starts_with(OVERTAKEN_BY_REVOKE)
}

/// The error of every call on a closed manager.
pub fn closed_error() -> Error {
    Error::new(ErrorKind::Closed, "the token manager was closed")
}
