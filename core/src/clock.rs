//! Time, owned by core: wall time, monotonic time and timers behind one trait.
//!
//! [`SystemClock`] is the only code in tokenlease that reads the system clock. Tests use
//! [`ManualClock`] (feature `test-util`) and advance time by hand, so no timing test sleeps.

use std::fmt;
use std::future::Future;
use std::ops::{Add, Sub};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// A point on a clock's monotonic timeline, in nanoseconds since that clock's origin.
///
/// Monotonic instants never jump when the wall clock is changed, so token deadlines are
/// kept in this form. Only instants of the same clock are comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(u64);

impl MonoTime {
    /// The clock's origin.
    pub const ZERO: MonoTime = MonoTime(0);
    /// Later than any real instant (used for "never").
    pub const FAR_FUTURE: MonoTime = MonoTime(u64::MAX);

    /// An instant `since_origin` after the clock's origin.
    pub fn from_duration(since_origin: Duration) -> Self {
        Self(u64::try_from(since_origin.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The instant with these nanoseconds since the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Time since the origin.
    pub fn since_origin(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for MonoTime {
    type Output = MonoTime;
    fn add(self, rhs: Duration) -> MonoTime {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        MonoTime(self.0.saturating_add(nanos))
    }
}

impl Sub<Duration> for MonoTime {
    type Output = MonoTime;
    fn sub(self, rhs: Duration) -> MonoTime {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        MonoTime(self.0.saturating_sub(nanos))
    }
}

/// A future that completes at a deadline.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Wall time, monotonic time and timers.
///
/// Implementations must be cheap to call: [`Clock::now`] is on the token read path.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Monotonic now.
    fn now(&self) -> MonoTime;
    /// Wall-clock now (for display, persistence and comparing with server timestamps).
    fn wall_now(&self) -> SystemTime;
    /// A cheaper, possibly slightly late reading of [`Clock::now`] for the token read path:
    /// never later than `now()`, and at most [`Clock::coarse_lag`] earlier.
    fn coarse_now(&self) -> MonoTime {
        self.now()
    }

    /// How far [`Clock::coarse_now`] may lag behind [`Clock::now`].
    fn coarse_lag(&self) -> Duration {
        Duration::ZERO
    }

    /// A future that completes once [`Clock::now`] has reached `deadline`.
    ///
    /// Must be polled inside the tokenlease background runtime (the system clock's timers
    /// are tokio timers).
    fn sleep_until(&self, deadline: MonoTime) -> Sleep;

    /// Converts a monotonic instant of this clock to wall time.
    fn wall_of_mono(&self, instant: MonoTime) -> SystemTime {
        let now = self.now();
        let wall = self.wall_now();
        if instant >= now {
            wall + instant.saturating_duration_since(now)
        } else {
            wall.checked_sub(now.saturating_duration_since(instant))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    /// Converts a wall-clock time to an instant of this clock (clamped at the origin).
    fn mono_of_wall(&self, wall: SystemTime) -> MonoTime {
        let now = self.now();
        match wall.duration_since(self.wall_now()) {
            Ok(ahead) => now + ahead,
            Err(behind) => now - behind.duration(),
        }
    }
}

/// The real clock: the OS monotonic clock and `SystemTime`, timers on tokio.
///
/// On Linux the read path uses `CLOCK_MONOTONIC_COARSE` (a few ns instead of ~25 ns for
/// `CLOCK_MONOTONIC`); callers treat it as up to [`Clock::coarse_lag`] late.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

struct Origin {
    instant: std::time::Instant,
    #[cfg(target_os = "linux")]
    raw_nanos: u64,
    #[cfg(target_os = "linux")]
    coarse_lag: Duration,
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| Origin {
        instant: std::time::Instant::now(),
        #[cfg(target_os = "linux")]
        raw_nanos: linux::read(libc::CLOCK_MONOTONIC),
        #[cfg(target_os = "linux")]
        coarse_lag: linux::coarse_resolution(),
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use std::time::Duration;

    #[inline]
    pub(super) fn read(clock: libc::clockid_t) -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec; both clock ids exist on every Linux
        // since 2.6.32, so the call cannot fail.
        unsafe { libc::clock_gettime(clock, &mut now) };
        (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
    }

    pub(super) fn coarse_resolution() -> Duration {
        let mut resolution = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `resolution` is a valid, writable timespec.
        let status = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut resolution) };
        if status != 0 {
            return Duration::from_millis(10);
        }
        // One tick of lag, plus one for the tick in progress.
        Duration::new(resolution.tv_sec as u64, resolution.tv_nsec as u32) * 2
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> MonoTime {
        #[cfg(target_os = "linux")]
        {
            MonoTime::from_nanos(
                linux::read(libc::CLOCK_MONOTONIC).saturating_sub(origin().raw_nanos),
            )
        }
        #[cfg(not(target_os = "linux"))]
        {
            MonoTime::from_duration(origin().instant.elapsed())
        }
    }

    #[inline]
    fn coarse_now(&self) -> MonoTime {
        #[cfg(target_os = "linux")]
        {
            MonoTime::from_nanos(
                linux::read(libc::CLOCK_MONOTONIC_COARSE).saturating_sub(origin().raw_nanos),
            )
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.now()
        }
    }

    fn coarse_lag(&self) -> Duration {
        #[cfg(target_os = "linux")]
        {
            origin().coarse_lag
        }
        #[cfg(not(target_os = "linux"))]
        {
            Duration::ZERO
        }
    }

    fn wall_now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: MonoTime) -> Sleep {
        // `std::time::Instant` is CLOCK_MONOTONIC on Linux, the same timeline as `now()`.
        let at = tokio::time::Instant::from_std(origin().instant) + deadline.since_origin();
        Box::pin(tokio::time::sleep_until(at))
    }
}

/// The process-wide system clock, shared by every manager that doesn't set its own.
pub fn system_clock() -> Arc<dyn Clock> {
    static CLOCK: OnceLock<Arc<dyn Clock>> = OnceLock::new();
    CLOCK.get_or_init(|| Arc::new(SystemClock)).clone()
}

#[cfg(feature = "test-util")]
pub use manual::ManualClock;

#[cfg(feature = "test-util")]
mod manual {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll, Waker};

    /// A clock that only moves when a test calls [`ManualClock::advance`].
    ///
    /// Timers due at or before the new time are woken by `advance`, so a test drives a
    /// manager's background refresh deterministically.
    #[derive(Clone)]
    pub struct ManualClock {
        shared: Arc<ManualShared>,
    }

    struct ManualShared {
        now_nanos: AtomicU64,
        wall_at_origin: SystemTime,
        timers: Mutex<Vec<Timer>>,
        next_timer_id: AtomicU64,
    }

    struct Timer {
        id: u64,
        deadline: MonoTime,
        waker: Waker,
    }

    impl fmt::Debug for ManualClock {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ManualClock")
                .field("now", &self.now())
                .field("pending_timers", &self.shared.timers.lock().len())
                .finish()
        }
    }

    impl Default for ManualClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl ManualClock {
        /// A clock at monotonic time 1000 s whose wall time reads 2026-01-01T00:00:00Z.
        pub fn new() -> Self {
            Self::with_wall(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        }

        /// A clock whose wall time reads `wall` now.
        pub fn with_wall(wall: SystemTime) -> Self {
            let start = Duration::from_secs(1000);
            Self {
                shared: Arc::new(ManualShared {
                    now_nanos: AtomicU64::new(start.as_nanos() as u64),
                    wall_at_origin: wall - start,
                    timers: Mutex::new(Vec::new()),
                    next_timer_id: AtomicU64::new(1),
                }),
            }
        }

        /// Moves time forward and wakes every timer that is now due.
        pub fn advance(&self, by: Duration) {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            let now = MonoTime::from_nanos(
                self.shared
                    .now_nanos
                    .fetch_add(nanos, Ordering::SeqCst)
                    .saturating_add(nanos),
            );
            let due: Vec<Waker> = {
                let mut timers = self.shared.timers.lock();
                let mut due = Vec::new();
                timers.retain(|timer| {
                    if timer.deadline <= now {
                        due.push(timer.waker.clone());
                        false
                    } else {
                        true
                    }
                });
                due
            };
            for waker in due {
                waker.wake();
            }
        }

        /// Number of timers waiting for a future time (a test can wait for a manager to
        /// arm its timer before advancing).
        pub fn pending_timers(&self) -> usize {
            self.shared.timers.lock().len()
        }

        /// The earliest pending timer deadline.
        pub fn next_timer(&self) -> Option<MonoTime> {
            self.shared
                .timers
                .lock()
                .iter()
                .map(|timer| timer.deadline)
                .min()
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> MonoTime {
            MonoTime::from_nanos(self.shared.now_nanos.load(Ordering::SeqCst))
        }

        fn wall_now(&self) -> SystemTime {
            self.shared.wall_at_origin + self.now().since_origin()
        }

        fn sleep_until(&self, deadline: MonoTime) -> Sleep {
            Box::pin(ManualSleep {
                id: self.shared.next_timer_id.fetch_add(1, Ordering::Relaxed),
                shared: self.shared.clone(),
                deadline,
            })
        }
    }

    struct ManualSleep {
        id: u64,
        shared: Arc<ManualShared>,
        deadline: MonoTime,
    }

    impl Future for ManualSleep {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut timers = self.shared.timers.lock();
            // Checked under the lock so an `advance` cannot slip between check and register.
            if MonoTime::from_nanos(self.shared.now_nanos.load(Ordering::SeqCst)) >= self.deadline {
                return Poll::Ready(());
            }
            let id = self.id;
            match timers.iter_mut().find(|timer| timer.id == id) {
                Some(timer) => timer.waker.clone_from(cx.waker()),
                None => timers.push(Timer {
                    id,
                    deadline: self.deadline,
                    waker: cx.waker().clone(),
                }),
            }
            Poll::Pending
        }
    }

    impl Drop for ManualSleep {
        fn drop(&mut self) {
            let id = self.id;
            // A dropped sleep must not keep counting as a pending timer.
            self.shared.timers.lock().retain(|timer| timer.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_coarse_reading_is_within_its_lag() {
        let clock = SystemClock;
        for _ in 0..1000 {
            let coarse = clock.coarse_now();
            let precise = clock.now();
            assert!(
                coarse <= precise + Duration::from_micros(50),
                "coarse ahead of precise"
            );
            assert!(precise.saturating_duration_since(coarse) <= clock.coarse_lag());
        }
    }

    #[test]
    fn mono_arithmetic_saturates() {
        let t = MonoTime::from_nanos(10);
        assert_eq!(t - Duration::from_secs(1), MonoTime::ZERO);
        assert_eq!(
            MonoTime::FAR_FUTURE + Duration::from_secs(1),
            MonoTime::FAR_FUTURE
        );
        assert_eq!(
            (t + Duration::from_nanos(5)).saturating_duration_since(t),
            Duration::from_nanos(5)
        );
    }

    #[cfg(feature = "test-util")]
    #[test]
    fn manual_clock_converts_between_wall_and_mono() {
        let clock = ManualClock::new();
        let later = clock.now() + Duration::from_secs(90);
        let wall = clock.wall_of_mono(later);
        assert_eq!(
            wall.duration_since(clock.wall_now()).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(clock.mono_of_wall(wall), later);
        clock.advance(Duration::from_secs(30));
        assert_eq!(clock.mono_of_wall(wall), later);
    }

    #[cfg(feature = "test-util")]
    #[test]
    fn manual_sleep_fires_only_when_advanced_past_deadline() {
        use futures::FutureExt;
        let clock = ManualClock::new();
        let deadline = clock.now() + Duration::from_secs(5);
        let mut sleep = clock.sleep_until(deadline);
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(sleep.poll_unpin(&mut cx).is_pending());
        assert_eq!(clock.pending_timers(), 1);
        clock.advance(Duration::from_secs(4));
        assert!(sleep.poll_unpin(&mut cx).is_pending());
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.pending_timers(), 0);
        assert!(sleep.poll_unpin(&mut cx).is_ready());
    }
}
