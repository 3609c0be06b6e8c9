//! `tl_manual_clock`: core's manual clock (`tokenlease::testing`) for tests of C code that
//! uses tokenlease. A manager built on it with `tl_manager_from_config_on_clock` lives through
//! an hour of token lifetimes in well under a second: time moves only when the test calls
//! `tl_manual_clock_advance`, which can also wait until the manager's background work
//! (refreshes, keep-alives, logins) that the move started has finished.

use std::ffi::c_char;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tl_core::testing::{self, ManualClock};

use crate::boundary::{ffi_boundary, ffi_boundary_or, refuse_inside_callback, Failure};
use crate::manager::{self, manager_call, tl_manager};
use crate::result::tl_result;

/// What `tl_manual_clock_advance` waits for the manager's background work at most when its
/// `settle_timeout_ms` is 0: core's default settle timeout, in milliseconds.
pub const TL_DEFAULT_SETTLE_TIMEOUT_MS: u32 = 20_000;

const _: () =
    assert!(TL_DEFAULT_SETTLE_TIMEOUT_MS as u128 == testing::DEFAULT_SETTLE_TIMEOUT.as_millis());

/// A clock that moves only when told (`tl_manual_clock_advance`), for tests of code that uses
/// tokenlease. Opaque.
///
/// Create it with `tl_manual_clock_new`, build managers on it with
/// `tl_manager_from_config_on_clock`, release it with `tl_manual_clock_free`. Managers keep
/// their own reference to the clock: it may be freed before them (it then no longer moves).
#[derive(Debug)]
pub struct tl_manual_clock {
    clock: ManualClock,
}

/// Creates a manual clock whose wall time reads `wall_unix_ms` (milliseconds since the Unix
/// epoch) now; 0 means the system's wall time now. Its time stands still until
/// `tl_manual_clock_advance` moves it. Point it at the wall time of the server the test
/// talks to (0 for a server on this machine started with real time), so the expiry times
/// the server reports mean the same thing to both.
///
/// Returns `TL_NULL_ARGUMENT` when `out` is NULL and `TL_INVALID_ARGUMENT` for a negative
/// `wall_unix_ms` (or one too large to represent); on failure `*out` is NULL.
///
/// Ownership: the caller owns the returned handle and releases it with
/// `tl_manual_clock_free`. Thread-safety: callable from any thread.
///
/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manual_clock_new(
    wall_unix_ms: i64,
    out: *mut *mut tl_manual_clock,
) -> tl_result {
    ffi_boundary(|| {
        if out.is_null() {
            return tl_result::TL_NULL_ARGUMENT;
        }
        // SAFETY: non-NULL (checked) and writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let wall = match u64::try_from(wall_unix_ms) {
            Ok(0) => SystemTime::now(),
            Ok(ms) => match SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
                Some(wall) => wall,
                None => return tl_result::TL_INVALID_ARGUMENT,
            },
            Err(_) => return tl_result::TL_INVALID_ARGUMENT,
        };
        let handle = Box::new(tl_manual_clock {
            clock: ManualClock::with_wall(wall),
        });
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(handle)) };
        tl_result::TL_OK
    })
}

/// Moves `clock` forward by `ms` milliseconds, waking every timer now due (the background
/// refreshes, keep-alives and re-logins of managers on it). Move the server's clock first
/// when the test controls one, so the work the move starts meets a server already there.
///
/// With `settle` not NULL, then waits, in real time and at most `settle_timeout_ms`
/// milliseconds (0: `TL_DEFAULT_SETTLE_TIMEOUT_MS`, 20 s), until `settle` is idle: no
/// refresh, keep-alive or login in flight and its timer armed again for a future time.
/// `settle` must be a manager built on this clock (`tl_manager_from_config_on_clock`); when
/// several managers share the clock, advance once and settle the others with `ms` 0. Returns
/// `TL_TIMEOUT` when the work did not finish in time (the detail is in
/// `tl_manager_last_error(settle, ...)`); the clock has moved all the same.
///
/// Returns `TL_NULL_ARGUMENT` for a NULL `clock`, and `TL_USAGE`, without moving the clock,
/// when called from inside a tokenlease callback (it must not be: the wait would wait for the
/// callback itself).
///
/// Thread-safety: callable from any thread; calls on one clock from several threads move it
/// by the sum of their `ms`.
///
/// # Safety
/// `clock` must be NULL or a live clock; `settle` NULL or a live manager.
#[no_mangle]
pub unsafe extern "C" fn tl_manual_clock_advance(
    clock: *mut tl_manual_clock,
    ms: u64,
    settle: *const tl_manager,
    settle_timeout_ms: u32,
) -> tl_result {
    ffi_boundary(|| {
        // SAFETY: NULL or a live clock per the contract.
        let Some(clock) = (unsafe { clock.as_ref() }) else {
            return tl_result::TL_NULL_ARGUMENT;
        };
        let by = Duration::from_millis(ms);
        if settle.is_null() {
            if let Err(failure) = refuse_inside_callback("tl_manual_clock_advance") {
                return failure.code;
            }
            clock.clock.advance(by);
            return tl_result::TL_OK;
        }
        manager_call(settle, |mgr| {
            refuse_inside_callback("tl_manual_clock_advance")?;
            let timeout = testing::settle_timeout_ms(u64::from(settle_timeout_ms));
            testing::advance_and_settle(&clock.clock, by, &mgr.manager, timeout)
                .map_err(Failure::from)
        })
    })
}

/// Frees a manual clock. NULL is a no-op. Managers built on it keep running on their own
/// reference to the clock, which then no longer moves.
///
/// Ownership: takes ownership of `clock`. Thread-safety: must be the last call on `clock`.
///
/// # Safety
/// `clock` must be NULL or a clock from `tl_manual_clock_new` not freed before.
#[no_mangle]
pub unsafe extern "C" fn tl_manual_clock_free(clock: *mut tl_manual_clock) {
    ffi_boundary_or((), || {
        if !clock.is_null() {
            // SAFETY: `clock` came from Box::into_raw in tl_manual_clock_new and ownership
            // returns here exactly once per the contract.
            drop(unsafe { Box::from_raw(clock) });
        }
    });
}

/// As `tl_manager_from_config`, but the manager runs on `clock`: its token lifetimes,
/// refresh points and background timers follow `tl_manual_clock_advance` instead of real
/// time (HTTP timeouts stay real). For tests.
///
/// Returns `TL_NULL_ARGUMENT` for a NULL `clock` (or `config`, `out`); other failures and
/// their detail as for `tl_manager_from_config` (`tl_manager_last_error(NULL, ...)` on the
/// same thread).
///
/// Ownership: `config` and `clock` are only read during the call (the manager keeps its own
/// reference to the clock). The caller owns the returned handle and releases it with
/// `tl_manager_free`. Thread-safety: callable from any thread.
///
/// # Safety
/// `config` must be NULL or a NUL-terminated string; `clock` NULL or a live clock; `out` NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn tl_manager_from_config_on_clock(
    config: *const c_char,
    clock: *const tl_manual_clock,
    out: *mut *mut tl_manager,
) -> tl_result {
    manager::create(out, || {
        // SAFETY: NULL or a live clock per the contract.
        let Some(clock) = (unsafe { clock.as_ref() }) else {
            return Err(Failure::null("clock"));
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        unsafe { manager::from_config_text(config, Some(Arc::new(clock.clock.clone()))) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_result_codes() {
        let mut clock: *mut tl_manual_clock = std::ptr::dangling_mut();
        // SAFETY: valid out-pointers or NULL, as the contracts allow.
        unsafe {
            assert_eq!(
                tl_manual_clock_new(-1, &mut clock),
                tl_result::TL_INVALID_ARGUMENT
            );
            assert!(clock.is_null());
            assert_eq!(
                tl_manual_clock_new(0, std::ptr::null_mut()),
                tl_result::TL_NULL_ARGUMENT
            );
            assert_eq!(
                tl_manual_clock_advance(std::ptr::null_mut(), 1, std::ptr::null(), 0),
                tl_result::TL_NULL_ARGUMENT
            );
            let mut mgr: *mut tl_manager = std::ptr::dangling_mut();
            assert_eq!(
                tl_manager_from_config_on_clock(c"{}".as_ptr(), std::ptr::null(), &mut mgr),
                tl_result::TL_NULL_ARGUMENT
            );
            assert!(mgr.is_null());
            tl_manual_clock_free(std::ptr::null_mut());
        }
    }

    #[test]
    fn the_clock_starts_at_the_wall_time_given_and_moves_when_told() {
        let mut clock: *mut tl_manual_clock = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the handle is used while live and freed once.
        unsafe {
            assert_eq!(
                tl_manual_clock_new(1_767_225_600_000, &mut clock),
                tl_result::TL_OK
            );
            let wall = |clock: *mut tl_manual_clock| {
                tl_core::Clock::wall_now(&(*clock).clock)
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
            };
            assert_eq!(wall(clock), Duration::from_secs(1_767_225_600));
            assert_eq!(
                tl_manual_clock_advance(clock, 90_000, std::ptr::null(), 0),
                tl_result::TL_OK
            );
            assert_eq!(wall(clock), Duration::from_secs(1_767_225_690));
            tl_manual_clock_free(clock);
        }
    }
}
