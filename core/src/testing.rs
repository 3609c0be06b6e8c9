//! Support for testing code that uses tokenlease (feature `test-util`), in Rust and, through
//! the bindings, in every language: a manager driven by a [`ManualClock`] lives through an
//! hour of token lifetimes in well under a second, and nothing sleeps.
//!
//! Point the manager and the server at the same time: advance the server's clock first
//! (so a keep-alive or refresh the move triggers reaches a server already at the new time),
//! then [`advance_and_settle`] the manager's clock.

use std::time::{Duration, Instant};

pub use crate::clock::ManualClock;
use crate::{Clock, Error, ErrorKind, Manager, MonoTime, Result, TokenState};

/// How long [`settle`] waits by default for background work to finish (real time: the
/// work is HTTP requests to a real server).
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The settle timeout a binding was given in milliseconds: `0` means
/// [`DEFAULT_SETTLE_TIMEOUT`] (C and UniFFI callers cannot leave an argument out).
pub fn settle_timeout_ms(ms: u64) -> Duration {
    match ms {
        0 => DEFAULT_SETTLE_TIMEOUT,
        ms => Duration::from_millis(ms),
    }
}

/// Moves `clock` forward by `by`, then waits (see [`settle`]) until the background work the
/// move started in `manager` has finished.
pub fn advance_and_settle(
    clock: &ManualClock,
    by: Duration,
    manager: &Manager,
    timeout: Duration,
) -> Result<()> {
    clock.advance(by);
    settle(clock, manager, timeout)
}

/// Waits, up to `timeout` of real time, until `manager` (which runs on `clock`) is idle: no
/// refresh, keep-alive or login in flight, and its timer armed again for a future deadline.
///
/// Blocking: call it from a test's thread, never from inside an async runtime. When several
/// managers share one clock, settle each of them in turn.
pub fn settle(clock: &ManualClock, manager: &Manager, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if is_settled(clock, manager) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the manager's background work did not finish within {} ms",
                    timeout.as_millis()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn is_settled(clock: &ManualClock, manager: &Manager) -> bool {
    let status = manager.status();
    if status.refreshing {
        return false;
    }
    if status.state == TokenState::Empty {
        return true;
    }
    // A due timer is removed by `advance` and armed again by the manager's timer task.
    // While a refresh runs that task parks at FAR_FUTURE; the parked timer is still
    // registered for a moment after the refresh ends, until the task re-arms, so it only
    // counts as settled when nothing is left to schedule (a terminal failure).
    let terminal = status
        .last_error_kind
        .is_some_and(|kind| !kind.is_transient());
    clock
        .next_timer()
        .is_some_and(|next| next > clock.now() && (next != MonoTime::FAR_FUTURE || terminal))
}
