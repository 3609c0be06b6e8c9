//! Exhaustive exploration of the lifecycle state machine (`tokenlease::lifecycle::machine`).
//!
//! The manager is a thin async driver: every decision is a call into the machine made under
//! one lock, and the awaits between those calls (a source call, a store read, a lease
//! request, a save) are where other things can happen. This test models exactly that: a
//! world made of the real machine, the one refresh run it started (a real `RefreshRun`), a
//! late source call still running after its timeout, the install lock, a revoke in
//! progress, waiting callers, a store with a lease that a sibling process can hold or take
//! over, and a token server that rotates refresh tokens and refuses a reused one. From each
//! state, every enabled event is tried (caller arrivals, stale reads, timer, invalidations
//! of the current and an older generation, revoke, close, clock advances to each window
//! boundary, store success/failure, lease acquired/busy/failed/lost, source success,
//! transient, terminal and timeout, a late answer arriving), depth first, with states
//! deduplicated by hash. The invariants are checked on every transition.
//!
//! The default bound runs in a few seconds; `TOKENLEASE_MODEL_DEPTH=deep` raises every
//! budget (minutes). The number of states explored is printed.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use tokenlease::lifecycle::machine::{
    Action, Adoption, Called, Feedback, Input, LeaseAnswer, Lifecycle, RefreshRun, Refusal,
    RunStep, SourceAdmission, StoredOffer, TokenHandle,
};
use tokenlease::{Error, ErrorKind, MonoTime, Policy};

// ---------------------------------------------------------------------------------------
// The token the model hands out

const LIFETIME: u64 = 10;
const REFRESH_AFTER: u64 = 6;
const MANDATORY_AFTER: u64 = 8;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Tok {
    generation: u64,
    value: u8,
    refresh: Option<u8>,
    issued: u64,
    /// A sliding session whose idle timeout comes before its refresh point: its refresh
    /// is a keep-alive.
    sliding: bool,
}

fn at(seconds: u64) -> MonoTime {
    MonoTime::from_duration(Duration::from_secs(seconds))
}

impl TokenHandle for Tok {
    type Value = u8;

    fn generation(&self) -> u64 {
        self.generation
    }
    fn value(&self) -> &u8 {
        &self.value
    }
    fn refresh_token(&self) -> Option<&u8> {
        self.refresh.as_ref()
    }
    fn obtained_at(&self) -> MonoTime {
        at(self.issued)
    }
    fn refresh_at(&self) -> MonoTime {
        at(self.issued + REFRESH_AFTER)
    }
    fn mandatory_at(&self) -> MonoTime {
        at(self.issued + MANDATORY_AFTER)
    }
    fn expires_at(&self) -> MonoTime {
        at(self.issued + LIFETIME)
    }
    fn expires_at_wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
    }
    fn idle_is_due_first(&self) -> bool {
        self.sliding
    }
}

// ---------------------------------------------------------------------------------------
// The world

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LeaseHolder {
    Free,
    Us,
    Sibling,
}

/// What the driver of the one refresh is doing between two machine calls.
#[derive(Debug, Clone)]
enum Pending {
    /// About to execute this step.
    Step(RunStep<Tok>),
    /// Holding the source gate, the call admitted, the source not yet answered.
    Calling { redeemed: Option<u8>, fenced: bool },
    /// The source answered with a token; waiting for the install lock.
    Installing { token: Issued, fenced: bool },
    /// Holding the install lock, the save in progress.
    Saving { token: Issued, fenced: bool },
    /// Read the store (this record or nothing) before the install lock was free.
    Offering(Option<Issued>),
}

/// A token the server issued, as it travels to the store and to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Issued {
    value: u8,
    refresh: Option<u8>,
    issued: u64,
}

#[derive(Debug, Clone)]
struct Flight {
    run: RefreshRun<Tok>,
    pending: Pending,
}

/// A source call that outlived its timeout: it holds the gate until it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Straggler {
    Running {
        epoch: u64,
        redeemed: Option<u8>,
        owns_lease: bool,
    },
    Installing {
        epoch: u64,
        token: Issued,
        owns_lease: bool,
    },
    Saving {
        epoch: u64,
        token: Issued,
        owns_lease: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LockHolder {
    Nobody,
    Flight,
    Straggler,
    Revoke,
    Login,
}

/// A new interactive login handed to the manager, being installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LoginInstall {
    epoch: u64,
    token: Issued,
    saving: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Budget {
    callers: u8,
    invalidations: u8,
    revokes: u8,
    closes: u8,
    ticks: u8,
    source_failures: u8,
    timeouts: u8,
    store_failures: u8,
    sibling_moves: u8,
    logins: u8,
}

#[derive(Debug, Clone)]
struct World {
    now: u64,
    machine: Lifecycle<Tok>,
    flight: Option<Flight>,
    straggler: Option<Straggler>,
    login: Option<LoginInstall>,
    lock: LockHolder,
    /// A revoke that took the install lock and has not finished clearing the store.
    revoke_deleting: bool,
    waiting_callers: u8,
    has_store: bool,
    /// The source keeps sliding sessions alive (its tokens are sliding sessions).
    sliding: bool,
    store: Option<Issued>,
    lease: LeaseHolder,
    /// The server's current refresh token for this client (rotation: one valid at a time).
    server_refresh: Option<u8>,
    next_value: u8,
    budget: Budget,
    /// Values of tokens that were invalidated (a bit per value).
    invalidated: u128,
    /// Values of tokens that were revoked (logged out).
    revoked: u128,
}

impl World {
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.now.hash(&mut h);
        self.machine.hash_state(&mut h);
        match &self.flight {
            None => 0u8.hash(&mut h),
            Some(flight) => {
                1u8.hash(&mut h);
                flight.run.hash_state(&mut h);
                format!("{:?}", flight.pending).hash(&mut h);
            }
        }
        self.straggler.hash(&mut h);
        self.login.hash(&mut h);
        self.lock.hash(&mut h);
        self.revoke_deleting.hash(&mut h);
        self.waiting_callers.hash(&mut h);
        self.store.hash(&mut h);
        self.lease.hash(&mut h);
        self.server_refresh.hash(&mut h);
        self.next_value.hash(&mut h);
        self.budget.hash(&mut h);
        self.invalidated.hash(&mut h);
        self.revoked.hash(&mut h);
        h.finish()
    }

    fn now(&self) -> MonoTime {
        at(self.now)
    }

    fn gate_busy(&self) -> bool {
        self.straggler.is_some()
            || matches!(
                self.flight.as_ref().map(|flight| &flight.pending),
                Some(Pending::Calling { .. })
            )
    }

    fn mint(&mut self, rotate: bool) -> Issued {
        self.next_value += 1;
        let value = self.next_value;
        let refresh = if rotate {
            self.next_value += 1;
            self.server_refresh = Some(self.next_value);
            Some(self.next_value)
        } else {
            None
        };
        Issued {
            value,
            refresh,
            issued: self.now,
        }
    }
}

/// The bit of a token value in the ghost sets.
fn bit(value: u8) -> u128 {
    assert!(
        value < 128,
        "the model minted more than 128 values: lower the bound"
    );
    1 << value
}

// ---------------------------------------------------------------------------------------
// Invariants

#[derive(Debug)]
struct Violation(String);

fn check(condition: bool, what: impl FnOnce() -> String) -> Result<(), Violation> {
    if condition {
        Ok(())
    } else {
        Err(Violation(what()))
    }
}

fn check_world(world: &World) -> Result<(), Violation> {
    check(
        world.machine.is_refreshing() == world.flight.is_some(),
        || "the machine's flight and the driver's refresh disagree (single flight broken)".into(),
    )?;
    let calls = usize::from(world.straggler.is_some())
        + usize::from(matches!(
            world.flight.as_ref().map(|flight| &flight.pending),
            Some(Pending::Calling { .. })
        ));
    check(calls <= 1, || {
        format!("{calls} source calls in flight at once")
    })?;
    if world.machine.is_closed() {
        check(world.machine.current().is_none(), || {
            "a closed manager still publishes a token".into()
        })?;
    }
    if let Some(token) = world.machine.current() {
        check(world.invalidated & bit(token.value) == 0, || {
            format!("invalidated value {} is published again", token.value)
        })?;
        check(world.revoked & bit(token.value) == 0, || {
            format!("revoked value {} is published again", token.value)
        })?;
    }
    Ok(())
}

/// A caller got `outcome`: it must not be an invalidated token, and it must not be a
/// failure while a valid token is cached.
fn check_served(world: &World, outcome: &Result<Tok, Error>) -> Result<(), Violation> {
    match outcome {
        Ok(token) => {
            check(world.invalidated & bit(token.value) == 0, || {
                format!("invalidated value {} served", token.value)
            })?;
            check(world.now() < token.expires_at(), || {
                format!("expired token {} served at {}", token.value, world.now)
            })
        }
        Err(err) => {
            let valid = world
                .machine
                .current()
                .is_some_and(|token| world.now() < token.expires_at());
            let excused = matches!(err.kind(), ErrorKind::Closed | ErrorKind::Cancelled);
            check(!valid || excused, || {
                format!(
                    "a caller failed with {:?} while a valid token was cached",
                    err.kind()
                )
            })
        }
    }
}

/// A save admitted for a refresh of `epoch` completes: no revoke may have come in between
/// (a close may: the save was already under way, but nothing is published).
fn check_not_revoked_since(world: &World, epoch: u64) -> Result<(), Violation> {
    check(world.machine.epoch() == epoch, || {
        "a revoke overtook a save in progress (the install lock did not hold it off)".into()
    })
}

/// About to publish or persist on behalf of a refresh of `epoch`.
fn check_may_publish(world: &World, epoch: u64) -> Result<(), Violation> {
    check(!world.machine.is_closed(), || {
        "a closed manager publishes or persists".into()
    })?;
    check(world.machine.epoch() == epoch, || {
        "a refresh overtaken by revoke publishes or persists".into()
    })
}

// ---------------------------------------------------------------------------------------
// Executing the machine's actions the way the manager does

fn execute(
    world: &mut World,
    actions: Vec<Action<Tok>>,
) -> Result<Option<Result<Tok, Error>>, Violation> {
    let mut verdict = None;
    for action in actions {
        match action {
            Action::StartRefresh(_) => {
                check(world.flight.is_none(), || "a second refresh started".into())?;
                let (run, step) =
                    world
                        .machine
                        .begin_refresh(world.sliding, world.has_store, world.now());
                world.flight = Some(Flight {
                    run,
                    pending: Pending::Step(step),
                });
            }
            Action::Serve(token) => verdict = Some(Ok(token)),
            Action::Wait => {
                check(world.flight.is_some(), || {
                    "told to wait without a refresh".into()
                })?;
                world.waiting_callers += 1;
            }
            Action::Fail(err) => verdict = Some(Err(err)),
            Action::DeleteStored => {
                world.revoke_deleting = true;
            }
            Action::RevokeAtSource(_)
            | Action::CountServedStale
            | Action::CountInvalidation
            | Action::CountFailure
            | Action::Emit(_)
            | Action::RefreshFailed { .. }
            | Action::RearmTimer
            | Action::StopTimer => {}
        }
    }
    Ok(verdict)
}

/// A caller's input: it must end with exactly one verdict (served, failed or waiting),
/// and what it is served must be right.
fn resolve_caller(world: &mut World, input: Input) -> Result<(), Violation> {
    let waiting_before = world.waiting_callers;
    let verdict = handle(world, input)?;
    let waits = world.waiting_callers - waiting_before;
    match (verdict, waits) {
        (Some(verdict), 0) => check_served(world, &verdict),
        (None, 1) => Ok(()),
        (verdict, waits) => Err(Violation(format!(
            "a caller got {} verdicts and {waits} waits",
            usize::from(verdict.is_some())
        ))),
    }
}

fn handle(world: &mut World, input: Input) -> Result<Option<Result<Tok, Error>>, Violation> {
    let actions = world.machine.handle(input, world.now());
    execute(world, actions)
}

fn publish(world: &mut World, token: Issued) -> Tok {
    world.machine.publish(
        |generation| Tok {
            generation,
            value: token.value,
            refresh: token.refresh,
            issued: token.issued,
            sliding: world.sliding,
        },
        SystemTime::UNIX_EPOCH,
    )
}

/// The end of an install: the save (unless the store fails or, for a fenced save, the
/// lease passed to another holder) and then the publication, as `Shared::install` does.
fn save_and_publish(world: &mut World, token: Issued, save_refused: bool) -> Tok {
    if world.has_store && !save_refused {
        world.store = Some(token);
    }
    publish(world, token)
}

// ---------------------------------------------------------------------------------------
// Transitions

type Successors = Vec<(String, World)>;

fn push(
    out: &mut Successors,
    label: impl Into<String>,
    world: Result<World, Violation>,
) -> Result<(), Violation> {
    let label = label.into();
    match world {
        Ok(world) => {
            check_world(&world)
                .map_err(|Violation(what)| Violation(format!("{what} (after {label})")))?;
            out.push((label, world));
            Ok(())
        }
        Err(Violation(what)) => Err(Violation(format!("{what} (during {label})"))),
    }
}

fn successors(world: &World) -> Result<Successors, Violation> {
    let mut out = Vec::new();
    let b = world.budget;

    // A caller arrives: the read path first (as `Manager::cached`), then the machine.
    if b.callers > 0 {
        let mut next = world.clone();
        next.budget.callers -= 1;
        let result = (|| {
            // The read path shows what the machine holds (the manager copies it on change).
            let fresh = next
                .machine
                .current()
                .cloned()
                .filter(|token| next.now() < token.mandatory_at());
            match fresh {
                Some(token) => {
                    if next.now() >= token.refresh_at() {
                        handle(&mut next, Input::StaleRead)?;
                    }
                    check_served(&next, &Ok(token))?;
                }
                None => {
                    resolve_caller(&mut next, Input::Acquire)?;
                }
            }
            Ok(next)
        })();
        push(&mut out, "caller", result)?;
    }

    // The timer fires.
    if world.now() >= world.machine.timer_deadline() {
        let mut next = world.clone();
        let result = handle(&mut next, Input::TimerFired).map(|_| next);
        push(&mut out, "timer", result)?;
    }

    // The server rejects the current token, or a late rejection of an older one arrives.
    if b.invalidations > 0 {
        let current = world.machine.current().map(|token| token.generation);
        for generation in [current, current.map(|g| g.saturating_sub(1))]
            .into_iter()
            .flatten()
        {
            let mut next = world.clone();
            next.budget.invalidations -= 1;
            if let Some(token) = next
                .machine
                .current()
                .filter(|t| t.generation == generation)
            {
                next.invalidated |= bit(token.value);
            }
            let result = handle(&mut next, Input::Invalidate { generation }).map(|_| next);
            push(&mut out, "invalidate", result)?;
        }
    }

    // Logout: takes the install lock, then clears memory and deletes the stored record.
    if b.revokes > 0 && world.lock == LockHolder::Nobody {
        let mut next = world.clone();
        next.budget.revokes -= 1;
        next.lock = LockHolder::Revoke;
        if let Some(token) = next.machine.current() {
            next.revoked |= bit(token.value);
        }
        if let Some(record) = next.store {
            // Logout ends the stored session too.
            next.revoked |= bit(record.value);
        }
        let result = handle(&mut next, Input::Revoke).map(|_| next);
        let result = result.map(|mut next| {
            if !next.revoke_deleting {
                next.lock = LockHolder::Nobody;
            }
            next
        });
        push(&mut out, "revoke", result)?;
    }
    if world.revoke_deleting {
        let mut next = world.clone();
        next.store = None;
        next.revoke_deleting = false;
        next.lock = LockHolder::Nobody;
        push(&mut out, "revoke deleted the record", Ok(next))?;
    }

    if b.closes > 0 {
        let mut next = world.clone();
        next.budget.closes -= 1;
        let result = handle(&mut next, Input::Close).map(|_| next);
        push(&mut out, "close", result)?;
    }

    // The clock advances to the next boundary that can change a decision.
    if b.ticks > 0 {
        let mut edges: Vec<MonoTime> = Vec::new();
        if let Some(token) = world.machine.current() {
            edges.extend([token.refresh_at(), token.mandatory_at(), token.expires_at()]);
        }
        edges.push(world.machine.retry_at());
        edges.push(world.now() + Duration::from_secs(1));
        if let Some(next_edge) = edges.into_iter().filter(|edge| *edge > world.now()).min() {
            let mut next = world.clone();
            next.budget.ticks -= 1;
            next.now = next_edge.since_origin().as_secs().max(next.now + 1);
            push(&mut out, "tick", Ok(next))?;
        }
    }

    // A sibling process takes the free lease and saves a token it got (rotating the
    // family), or our lease lapses to it.
    if b.sibling_moves > 0 && world.has_store {
        if world.lease == LeaseHolder::Free {
            let mut next = world.clone();
            next.budget.sibling_moves -= 1;
            next.lease = LeaseHolder::Sibling;
            push(&mut out, "sibling takes the lease", Ok(next))?;
        }
        if world.lease == LeaseHolder::Sibling {
            let mut next = world.clone();
            next.budget.sibling_moves -= 1;
            let token = next.mint(true);
            next.store = Some(token);
            next.lease = LeaseHolder::Free;
            push(&mut out, "sibling saves and releases", Ok(next))?;
        }
        if world.lease == LeaseHolder::Us {
            let mut next = world.clone();
            next.budget.sibling_moves -= 1;
            next.lease = LeaseHolder::Sibling;
            push(&mut out, "our lease lapses to a sibling", Ok(next))?;
        }
    }

    login_successors(world, &mut out)?;
    flight_successors(world, &mut out)?;
    straggler_successors(world, &mut out)?;
    Ok(out)
}

/// Feeds a step's answer back to the run, and ends the flight when it is done.
fn feed(world: &mut World, feedback: Feedback<Tok>) -> Result<(), Violation> {
    let now = world.now();
    let flight = world.flight.as_mut().expect("flight");
    let step = flight.run.step(&mut world.machine, feedback, now);
    flight.pending = Pending::Step(step);
    settle(world)
}

/// Ends the flight when its step is `Done`: the waiters get the outcome.
fn settle(world: &mut World) -> Result<(), Violation> {
    let Some(Flight {
        pending: Pending::Step(RunStep::Done(outcome)),
        ..
    }) = &world.flight
    else {
        return Ok(());
    };
    let outcome = outcome.clone();
    world.flight = None;
    // The longest backoff the jitter can draw: the bound the clamps to the token's last
    // chances must hold against.
    handle(
        world,
        Input::RefreshEnded {
            outcome: outcome.clone().map(|_| ()),
            backoff_draw: 1.0,
        },
    )?;
    let waiting = std::mem::take(&mut world.waiting_callers);
    for _ in 0..waiting {
        match &outcome {
            Ok(token) => {
                let generation = token.generation;
                resolve_caller(world, Input::WaitSucceeded { generation })?;
            }
            Err(err) => {
                resolve_caller(world, Input::WaitFailed(err.clone()))?;
            }
        }
    }
    Ok(())
}

fn transient() -> Error {
    Error::transient("the server is down")
}

fn flight_successors(world: &World, out: &mut Successors) -> Result<(), Violation> {
    let Some(flight) = &world.flight else {
        return Ok(());
    };
    let b = world.budget;
    match &flight.pending {
        Pending::Step(RunStep::Done(_)) => unreachable!("settled"),
        Pending::Step(RunStep::KeepAlive(_)) => {
            if !world.gate_busy() {
                let mut next = world.clone();
                let result = feed(&mut next, Feedback::KeptAlive(Ok(()))).map(|_| next);
                push(out, "keep-alive", result)?;
                if b.source_failures > 0 {
                    for (label, error) in [
                        ("keep-alive fails (transient)", transient()),
                        (
                            "keep-alive: the session is gone",
                            Error::new(ErrorKind::Expired, "session expired"),
                        ),
                    ] {
                        let mut next = world.clone();
                        next.budget.source_failures -= 1;
                        let result = feed(&mut next, Feedback::KeptAlive(Err(error))).map(|_| next);
                        push(out, label, result)?;
                    }
                }
            }
        }
        Pending::Step(RunStep::Load) => {
            // The read takes the install lock, and the offer happens under it.
            if world.lock == LockHolder::Nobody {
                let mut next = world.clone();
                next.lock = LockHolder::Flight;
                next.flight.as_mut().unwrap().pending = Pending::Offering(next.store);
                push(out, "store read", Ok(next))?;
                if b.store_failures > 0 {
                    let mut next = world.clone();
                    next.budget.store_failures -= 1;
                    next.lock = LockHolder::Flight;
                    next.flight.as_mut().unwrap().pending = Pending::Offering(None);
                    push(out, "store read fails", Ok(next))?;
                }
            }
        }
        Pending::Offering(record) => {
            let mut next = world.clone();
            let epoch = flight.run.epoch();
            let result = (|| {
                let adopted = match record {
                    None => None,
                    Some(record) => {
                        let now = next.now();
                        let record = *record;
                        let mandatory_at = at(record.issued + MANDATORY_AFTER);
                        let (adoption, token) = next.machine.offer_stored(
                            StoredOffer {
                                epoch,
                                value: &record.value,
                                refresh_token: record.refresh.as_ref(),
                                mandatory_at,
                                obtained_at: at(record.issued),
                            },
                            now,
                            |generation| Tok {
                                generation,
                                value: record.value,
                                refresh: record.refresh,
                                issued: record.issued,
                                sliding: next.sliding,
                            },
                            SystemTime::UNIX_EPOCH,
                        );
                        if adoption == Adoption::Adopted {
                            check_may_publish(&next, epoch)?;
                        }
                        token
                    }
                };
                next.lock = LockHolder::Nobody;
                feed(&mut next, Feedback::Loaded(adopted))?;
                Ok(next)
            })();
            push(out, "offer the stored record", result)?;
        }
        Pending::Step(RunStep::RequestLease { wait }) => {
            let wait = *wait;
            let lease_answer = |answer: LeaseAnswer,
                                holder: LeaseHolder,
                                label: &str,
                                spend: bool,
                                out: &mut Successors| {
                let mut next = world.clone();
                if spend {
                    next.budget.store_failures -= 1;
                }
                next.lease = holder;
                if matches!(answer, LeaseAnswer::Busy) {
                    // The store waited for the lease this long.
                    let _ = wait;
                    next.now += 1;
                }
                let result = feed(&mut next, Feedback::Lease(answer)).map(|_| next);
                push(out, label.to_owned(), result)
            };
            match world.lease {
                LeaseHolder::Free => lease_answer(
                    LeaseAnswer::Acquired,
                    LeaseHolder::Us,
                    "lease acquired",
                    false,
                    out,
                )?,
                LeaseHolder::Sibling => lease_answer(
                    LeaseAnswer::Busy,
                    LeaseHolder::Sibling,
                    "lease busy",
                    false,
                    out,
                )?,
                LeaseHolder::Us => lease_answer(
                    LeaseAnswer::Busy,
                    LeaseHolder::Us,
                    "lease busy (ours, held by a late call)",
                    false,
                    out,
                )?,
            }
            if b.store_failures > 0 {
                lease_answer(
                    LeaseAnswer::Failed,
                    world.lease,
                    "lease request fails",
                    true,
                    out,
                )?;
            }
        }
        Pending::Step(RunStep::CallSource {
            use_refresh_token,
            fenced,
        }) => {
            if !world.gate_busy() {
                let mut next = world.clone();
                let now = next.now();
                let admission = {
                    let flight = next.flight.as_ref().unwrap();
                    next.machine
                        .admit_source_call(&flight.run, *use_refresh_token, now)
                };
                let result = (|| {
                    match admission {
                        SourceAdmission::Call(redeemed) => {
                            next.flight.as_mut().unwrap().pending = Pending::Calling {
                                redeemed,
                                fenced: *fenced,
                            };
                        }
                        SourceAdmission::Superseded(token) => {
                            feed(&mut next, Feedback::Called(Called::Superseded(token)))?;
                        }
                        SourceAdmission::Refused(refusal) => {
                            let error = refusal.into_error("model", "before the call");
                            feed(
                                &mut next,
                                Feedback::Called(Called::Failed {
                                    error,
                                    redeemed: false,
                                }),
                            )?;
                        }
                    }
                    Ok(next)
                })();
                push(out, "source call admitted", result)?;
            } else if b.timeouts > 0 {
                // The gate stays busy past the source timeout.
                let mut next = world.clone();
                next.budget.timeouts -= 1;
                let error = Error::new(ErrorKind::Timeout, "an earlier call is still running");
                let result = feed(
                    &mut next,
                    Feedback::Called(Called::GaveUp {
                        error,
                        straggler: false,
                    }),
                )
                .map(|_| next);
                push(out, "gate wait times out", result)?;
            }
        }
        Pending::Calling { redeemed, fenced } => {
            let (redeemed, fenced) = (*redeemed, *fenced);
            // The server answers: a reused (rotated away) refresh token is refused.
            let reused = redeemed.is_some() && redeemed != world.server_refresh;
            if reused {
                let mut next = world.clone();
                next.server_refresh = None;
                let error = Error::new(ErrorKind::InvalidGrant, "refresh token reused");
                let result = feed(
                    &mut next,
                    Feedback::Called(Called::Failed {
                        error,
                        redeemed: true,
                    }),
                )
                .map(|_| next);
                push(out, "server refuses a reused refresh token", result)?;
            } else {
                let mut next = world.clone();
                let token = next.mint(true);
                next.flight.as_mut().unwrap().pending = Pending::Installing { token, fenced };
                push(out, "source answers", Ok(next))?;
            }
            if b.source_failures > 0 {
                for (label, error) in [
                    ("source fails (transient)", transient()),
                    (
                        "source fails (terminal)",
                        Error::new(ErrorKind::InvalidCredentials, "bad secret"),
                    ),
                ] {
                    let mut next = world.clone();
                    next.budget.source_failures -= 1;
                    let result = feed(
                        &mut next,
                        Feedback::Called(Called::Failed {
                            error,
                            redeemed: redeemed.is_some(),
                        }),
                    )
                    .map(|_| next);
                    push(out, label, result)?;
                }
            }
            if b.timeouts > 0 {
                let mut next = world.clone();
                next.budget.timeouts -= 1;
                let epoch = next.flight.as_ref().unwrap().run.epoch();
                next.straggler = Some(Straggler::Running {
                    epoch,
                    redeemed,
                    owns_lease: fenced && next.lease == LeaseHolder::Us,
                });
                // The gate passes to the straggler; the flight stops waiting for the call.
                let result = feed(
                    &mut next,
                    Feedback::Called(Called::GaveUp {
                        error: Error::new(ErrorKind::Timeout, "source timeout"),
                        straggler: true,
                    }),
                )
                .map(|_| next);
                push(out, "source times out", result)?;
            }
        }
        Pending::Installing { token, fenced } => {
            if world.lock == LockHolder::Nobody {
                let mut next = world.clone();
                let epoch = flight.run.epoch();
                let (token, fenced) = (*token, *fenced);
                let result = (|| {
                    match next.machine.admit_install(epoch) {
                        Ok(()) => {
                            check_may_publish(&next, epoch)?;
                            next.lock = LockHolder::Flight;
                            next.flight.as_mut().unwrap().pending =
                                Pending::Saving { token, fenced };
                        }
                        Err(refusal) => {
                            let error = refusal_error(refusal);
                            feed(
                                &mut next,
                                Feedback::Called(Called::Failed {
                                    error,
                                    redeemed: false,
                                }),
                            )?;
                        }
                    }
                    Ok(next)
                })();
                push(out, "install admitted", result)?;
            }
        }
        Pending::Saving { token, fenced, .. } => {
            let (token, fenced) = (*token, *fenced);
            let epoch = flight.run.epoch();
            for store_fails in [false, true] {
                if store_fails && b.store_failures == 0 {
                    continue;
                }
                let mut next = world.clone();
                if store_fails {
                    next.budget.store_failures -= 1;
                }
                let result = (|| {
                    check_not_revoked_since(&next, epoch)?;
                    let lease_lost = fenced && next.lease != LeaseHolder::Us;
                    let published = save_and_publish(&mut next, token, store_fails || lease_lost);
                    next.lock = LockHolder::Nobody;
                    feed(&mut next, Feedback::Called(Called::Installed(published)))?;
                    Ok(next)
                })();
                push(
                    out,
                    if store_fails {
                        "save fails, publish"
                    } else {
                        "save, publish"
                    },
                    result,
                )?;
            }
        }
        Pending::Step(RunStep::ReleaseLease) => {
            let mut next = world.clone();
            if next.lease == LeaseHolder::Us {
                next.lease = LeaseHolder::Free;
            }
            let result = feed(&mut next, Feedback::Released).map(|_| next);
            push(out, "lease released", result)?;
        }
    }
    Ok(())
}

fn refusal_error(refusal: Refusal) -> Error {
    refusal.into_error("model", "while the refresh ran")
}

fn straggler_successors(world: &World, out: &mut Successors) -> Result<(), Violation> {
    let Some(straggler) = world.straggler else {
        return Ok(());
    };
    match straggler {
        Straggler::Running {
            epoch,
            redeemed,
            owns_lease,
        } => {
            // The late answer: a token (or a refused reused refresh token), or an error.
            let reused = redeemed.is_some() && redeemed != world.server_refresh;
            let mut next = world.clone();
            if reused {
                next.server_refresh = None;
                next.straggler = None;
                release_if_owned(&mut next, owns_lease);
            } else {
                let token = next.mint(true);
                next.straggler = Some(Straggler::Installing {
                    epoch,
                    token,
                    owns_lease,
                });
            }
            push(out, "late answer arrives", Ok(next))?;
            let mut next = world.clone();
            next.straggler = None;
            release_if_owned(&mut next, owns_lease);
            push(out, "late call fails", Ok(next))?;
        }
        Straggler::Installing {
            epoch,
            token,
            owns_lease,
        } => {
            if world.lock == LockHolder::Nobody {
                let mut next = world.clone();
                match next.machine.admit_install(epoch) {
                    Ok(()) => {
                        if let Err(Violation(what)) = check_may_publish(&next, epoch) {
                            return Err(Violation(what));
                        }
                        next.lock = LockHolder::Straggler;
                        next.straggler = Some(Straggler::Saving {
                            epoch,
                            token,
                            owns_lease,
                        });
                    }
                    Err(_) => {
                        next.straggler = None;
                        release_if_owned(&mut next, owns_lease);
                    }
                }
                push(out, "late install admitted", Ok(next))?;
            }
        }
        Straggler::Saving {
            epoch,
            token,
            owns_lease,
        } => {
            let mut next = world.clone();
            let result = (|| {
                check_not_revoked_since(&next, epoch)?;
                let lease_lost = owns_lease && next.lease != LeaseHolder::Us;
                save_and_publish(&mut next, token, lease_lost);
                next.machine.installed_outside_a_refresh();
                next.lock = LockHolder::Nobody;
                next.straggler = None;
                release_if_owned(&mut next, owns_lease);
                Ok(next)
            })();
            push(out, "late token saved and published", result)?;
        }
    }
    Ok(())
}

fn login_successors(world: &World, out: &mut Successors) -> Result<(), Violation> {
    match world.login {
        // Like revoke, the epoch bump happens under the install lock.
        None if world.budget.logins > 0 && world.lock == LockHolder::Nobody => {
            let mut next = world.clone();
            next.budget.logins -= 1;
            let result = (|| {
                let refused = handle(&mut next, Input::Login)?;
                if refused.is_none() {
                    // A new session: the server's refresh family starts over.
                    let token = next.mint(true);
                    next.login = Some(LoginInstall {
                        epoch: next.machine.epoch(),
                        token,
                        saving: false,
                    });
                }
                Ok(next)
            })();
            push(out, "the user logs in", result)?;
        }
        None => {}
        Some(login) if !login.saving && world.lock == LockHolder::Nobody => {
            let mut next = world.clone();
            match next.machine.admit_install(login.epoch) {
                Ok(()) => {
                    next.lock = LockHolder::Login;
                    next.login = Some(LoginInstall {
                        saving: true,
                        ..login
                    });
                }
                Err(_) => next.login = None,
            }
            push(out, "login install admitted", Ok(next))?;
        }
        Some(login) if login.saving => {
            let mut next = world.clone();
            let result = (|| {
                check_not_revoked_since(&next, login.epoch)?;
                save_and_publish(&mut next, login.token, false);
                next.machine.installed_outside_a_refresh();
                next.lock = LockHolder::Nobody;
                next.login = None;
                Ok(next)
            })();
            push(out, "login saved and published", result)?;
        }
        Some(_) => {}
    }
    Ok(())
}

fn release_if_owned(world: &mut World, owns_lease: bool) {
    if owns_lease && world.lease == LeaseHolder::Us {
        world.lease = LeaseHolder::Free;
    }
}

// ---------------------------------------------------------------------------------------
// The explorer

struct Report {
    states: usize,
    transitions: usize,
    dead_ends: usize,
    elapsed: Duration,
}

fn explore(start: World, limit: usize) -> Result<Report, String> {
    let started = Instant::now();
    let mut seen = HashSet::new();
    let mut stack = vec![start];
    let mut transitions = 0;
    let mut dead_ends = 0;
    while let Some(world) = stack.pop() {
        if !seen.insert(world.fingerprint()) {
            continue;
        }
        if seen.len() > limit {
            return Err(format!(
                "more than {limit} states: raise the limit or lower the bound"
            ));
        }
        let next = successors(&world)
            .map_err(|Violation(what)| format!("invariant broken: {what}\nin state: {world:#?}"))?;
        if next.is_empty() {
            dead_ends += 1;
            // Nothing can happen any more: nobody may be left waiting, no refresh stuck.
            if world.waiting_callers > 0
                || world.flight.is_some()
                || world.lock != LockHolder::Nobody
            {
                return Err(format!(
                    "stuck with waiting callers or a refresh: {world:#?}"
                ));
            }
        }
        transitions += next.len();
        stack.extend(next.into_iter().map(|(_, world)| world));
    }
    Ok(Report {
        states: seen.len(),
        transitions,
        dead_ends,
        elapsed: started.elapsed(),
    })
}

fn policy() -> Policy {
    Policy::builder()
        .backoff(Duration::from_secs(1), Duration::from_secs(2))
        .lease(Duration::from_secs(30), Duration::from_millis(500))
        .build()
        .expect("policy")
}

fn deep() -> bool {
    std::env::var("TOKENLEASE_MODEL_DEPTH").is_ok_and(|depth| depth == "deep")
}

fn start(has_store: bool, sliding: bool, budget: Budget) -> World {
    World {
        now: 0,
        machine: Lifecycle::new("model", policy()),
        flight: None,
        straggler: None,
        login: None,
        lock: LockHolder::Nobody,
        revoke_deleting: false,
        waiting_callers: 0,
        has_store,
        sliding,
        store: None,
        lease: LeaseHolder::Free,
        server_refresh: None,
        next_value: 0,
        budget,
        invalidated: 0,
        revoked: 0,
    }
}

fn run(name: &str, has_store: bool, sliding: bool, budget: Budget) {
    let report = explore(
        start(has_store, sliding, budget),
        if deep() { 200_000_000 } else { 20_000_000 },
    )
    .unwrap_or_else(|failure| panic!("{name}: {failure}"));
    // Straight to the terminal: the numbers belong in the test output.
    let _ = writeln!(
        std::io::stderr(),
        "lifecycle model [{name}{}]: {} states, {} transitions, {} end states, {:.1?}",
        if deep() { ", deep" } else { "" },
        report.states,
        report.transitions,
        report.dead_ends,
        report.elapsed
    );
    assert!(
        report.states > 1000,
        "{name}: the model explored too little"
    );
}

#[test]
fn every_interleaving_without_a_store_keeps_the_invariants() {
    let scale = if deep() { 1 } else { 0 };
    run(
        "memory",
        false,
        false,
        Budget {
            callers: 3 + scale,
            invalidations: 2,
            revokes: 1,
            closes: 1,
            ticks: 4 + scale,
            source_failures: 2,
            timeouts: 1 + scale,
            store_failures: 0,
            sibling_moves: 0,
            logins: scale,
        },
    );
}

#[test]
fn every_interleaving_with_a_shared_store_keeps_the_invariants() {
    let scale = if deep() { 1 } else { 0 };
    run(
        "store",
        true,
        false,
        Budget {
            callers: 2 + scale,
            invalidations: 1 + scale,
            revokes: 1,
            closes: scale,
            ticks: 3 + scale,
            source_failures: 1,
            timeouts: 1,
            store_failures: 1 + scale,
            sibling_moves: 2,
            // Logins are explored by the other two models (this one is the largest).
            logins: 0,
        },
    );
}

#[test]
fn every_interleaving_of_a_kept_alive_session_keeps_the_invariants() {
    let scale = if deep() { 1 } else { 0 };
    run(
        "sliding session",
        false,
        true,
        Budget {
            callers: 2 + scale,
            invalidations: 1 + scale,
            revokes: 1,
            closes: 1,
            ticks: 4 + scale,
            source_failures: 2,
            timeouts: 1,
            store_failures: 0,
            sibling_moves: 0,
            logins: 1,
        },
    );
}
