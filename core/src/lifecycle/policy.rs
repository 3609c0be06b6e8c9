//! When to refresh, how to back off, how long callers wait.

use std::time::Duration;

use rand::Rng;

use crate::clock::MonoTime;
use crate::error::{Error, ErrorKind, Result};

/// Default advisory window as a fraction of the token lifetime: a 15-minute token starts
/// refreshing in the background at minute 10.
pub const DEFAULT_ADVISORY_FRACTION: f64 = 1.0 / 3.0;
/// Lower clamp of the advisory window.
pub const DEFAULT_ADVISORY_MIN: Duration = Duration::from_secs(10);
/// Upper clamp of the advisory window.
pub const DEFAULT_ADVISORY_MAX: Duration = Duration::from_secs(15 * 60);
/// Default mandatory window as a fraction of the lifetime: from there on callers wait for
/// the refresh instead of being served the old token.
pub const DEFAULT_MANDATORY_FRACTION: f64 = 1.0 / 10.0;
/// Lower clamp of the mandatory window.
pub const DEFAULT_MANDATORY_MIN: Duration = Duration::from_secs(2);
/// Upper clamp of the mandatory window.
pub const DEFAULT_MANDATORY_MAX: Duration = Duration::from_secs(60);
/// Jitter: the refresh point moves earlier by a random part of the advisory window, up to
/// this fraction, so managers that got their tokens together don't refresh together.
pub const DEFAULT_JITTER_FRACTION: f64 = 0.1;
/// First backoff delay after a transient failure.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Largest backoff delay.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long a caller waits for the in-flight refresh before getting a `Timeout` error.
pub const DEFAULT_WAITER_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime assumed when a source doesn't say.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Upper bound on one source call; a hung server becomes a transient `Timeout`.
pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refresh lease lasts at most: a holder that dies (kill -9) blocks its
/// siblings no longer than this. Longer than the source timeout, so a live holder keeps it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(35);
/// How long a manager waits for a sibling's lease before reporting a transient error.
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(36);
/// Upper bound on one store call (load, save, delete, release; a lease request gets this on
/// top of its lease wait). A store that does not answer in time counts as a failed store:
/// the manager carries on from memory and the source.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest Retry-After honoured (from a server's header or a foreign callback's error):
/// five minutes. A longer one is shortened to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Longest lifetime accepted from any source (server, callback, store record): ten years.
/// Longer lifetimes, like negative numbers cast to unsigned ones, are refused as `Protocol`
/// errors, so a token that would never refresh is never cached or shared.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Refresh, backoff and waiting rules of a manager. Build with [`Policy::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    advisory_fraction: f64,
    advisory_min: Duration,
    advisory_max: Duration,
    mandatory_fraction: f64,
    mandatory_min: Duration,
    mandatory_max: Duration,
    jitter_fraction: f64,
    backoff_base: Duration,
    backoff_cap: Duration,
    waiter_timeout: Duration,
    default_lifetime: Duration,
    source_timeout: Duration,
    lease_ttl: Duration,
    lease_wait: Duration,
    store_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            advisory_fraction: DEFAULT_ADVISORY_FRACTION,
            advisory_min: DEFAULT_ADVISORY_MIN,
            advisory_max: DEFAULT_ADVISORY_MAX,
            mandatory_fraction: DEFAULT_MANDATORY_FRACTION,
            mandatory_min: DEFAULT_MANDATORY_MIN,
            mandatory_max: DEFAULT_MANDATORY_MAX,
            jitter_fraction: DEFAULT_JITTER_FRACTION,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            waiter_timeout: DEFAULT_WAITER_TIMEOUT,
            default_lifetime: DEFAULT_LIFETIME,
            source_timeout: DEFAULT_SOURCE_TIMEOUT,
            lease_ttl: DEFAULT_LEASE_TTL,
            lease_wait: DEFAULT_LEASE_WAIT,
            store_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }
}

/// The three deadlines of a token under a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Background refresh starts here (advisory window, jitter applied).
    pub refresh_at: MonoTime,
    /// Callers wait for the refresh from here (mandatory window).
    pub mandatory_at: MonoTime,
    /// The token is dead from here.
    pub expires_at: MonoTime,
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            policy: Policy::default(),
        }
    }

    /// The advisory window for a token of this lifetime: `lifetime * fraction` clamped to
    /// `[advisory_min, advisory_max]`, and never more than half the lifetime (a token of a
    /// few seconds would otherwise be stale the moment it arrives and refresh in a loop).
    pub fn advisory_window(&self, lifetime: Duration) -> Duration {
        lifetime
            .mul_f64(self.advisory_fraction)
            .clamp(self.advisory_min, self.advisory_max)
            .min(lifetime / 2)
    }

    /// The mandatory window: `lifetime * fraction` clamped to `[mandatory_min,
    /// mandatory_max]`, and never more than half the advisory window.
    pub fn mandatory_window(&self, lifetime: Duration) -> Duration {
        lifetime
            .mul_f64(self.mandatory_fraction)
            .clamp(self.mandatory_min, self.mandatory_max)
            .min(self.advisory_window(lifetime) / 2)
    }

    /// Deadlines for a token valid from `obtained_at` to `expires_at`. `jitter` in `[0, 1]`
    /// picks how far inside the jitter range the refresh point lands (0 = no jitter).
    pub fn windows(&self, obtained_at: MonoTime, expires_at: MonoTime, jitter: f64) -> Windows {
        let lifetime = expires_at.saturating_duration_since(obtained_at);
        let advisory = self.advisory_window(lifetime);
        let mandatory = self.mandatory_window(lifetime);
        let jitter_span = (advisory - mandatory)
            .mul_f64(self.jitter_fraction)
            .mul_f64(jitter.clamp(0.0, 1.0));
        Windows {
            refresh_at: expires_at - advisory - jitter_span,
            mandatory_at: expires_at - mandatory,
            expires_at,
        }
    }

    /// Deadlines with a fresh random jitter.
    pub fn windows_with_random_jitter(
        &self,
        obtained_at: MonoTime,
        expires_at: MonoTime,
    ) -> Windows {
        self.windows(obtained_at, expires_at, rand::thread_rng().gen::<f64>())
    }

    /// Delay before retry number `failures` (1 = after the first failure): "full jitter",
    /// a uniform random delay in `[0, min(cap, base * 2^(failures-1))]`, but never less
    /// than the server's Retry-After.
    pub fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        self.backoff_with(failures, retry_after, rand::thread_rng().gen::<f64>())
    }

    /// [`Policy::backoff`] with the random draw given (for tests).
    pub fn backoff_with(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        draw: f64,
    ) -> Duration {
        let ceiling = self.backoff_ceiling(failures);
        let delay = ceiling.mul_f64(draw.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => delay.max(asked),
            None => delay,
        }
    }

    /// Upper bound of the backoff delay after `failures` failures.
    pub fn backoff_ceiling(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        self.backoff_base
            .saturating_mul(1u32 << exponent)
            .min(self.backoff_cap)
    }

    /// Advisory window (fraction, min, max).
    pub fn advisory_parameters(&self) -> (f64, Duration, Duration) {
        (self.advisory_fraction, self.advisory_min, self.advisory_max)
    }

    /// Mandatory window (fraction, min, max).
    pub fn mandatory_parameters(&self) -> (f64, Duration, Duration) {
        (
            self.mandatory_fraction,
            self.mandatory_min,
            self.mandatory_max,
        )
    }

    /// Backoff (base, cap).
    pub fn backoff_parameters(&self) -> (Duration, Duration) {
        (self.backoff_base, self.backoff_cap)
    }

    /// How long a caller waits for the in-flight refresh.
    pub fn waiter_timeout(&self) -> Duration {
        self.waiter_timeout
    }

    /// Lifetime assumed when the source doesn't say.
    pub fn default_lifetime(&self) -> Duration {
        self.default_lifetime
    }

    /// Upper bound on one source call.
    pub fn source_timeout(&self) -> Duration {
        self.source_timeout
    }

    /// How long a refresh lease lasts without renewal. A holder renews it every third of
    /// this while its refresh runs, so a live holder never loses it mid-refresh, however
    /// slow the server; a holder that died blocks its siblings no longer than this.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Upper bound on one store call.
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// Callers arriving when no valid token is left start a new attempt, despite a backoff,
    /// once the last failed attempt is this old (unless the server asked for a Retry-After):
    /// a server that recovered is noticed by the next caller, not by the next backoff step.
    pub fn caller_retry_interval(&self) -> Duration {
        self.backoff_base.min(Duration::from_secs(1))
    }

    /// Longest wait for a sibling's lease.
    pub fn lease_wait(&self) -> Duration {
        self.lease_wait
    }
}

/// Builds a [`Policy`]; `build` checks the values.
#[derive(Debug, Clone)]
pub struct PolicyBuilder {
    policy: Policy,
}

impl PolicyBuilder {
    /// Advisory window as a fraction of the lifetime, and its clamps.
    pub fn advisory_window(mut self, fraction: f64, min: Duration, max: Duration) -> Self {
        self.policy.advisory_fraction = fraction;
        self.policy.advisory_min = min;
        self.policy.advisory_max = max;
        self
    }

    /// Mandatory window as a fraction of the lifetime, and its clamps.
    pub fn mandatory_window(mut self, fraction: f64, min: Duration, max: Duration) -> Self {
        self.policy.mandatory_fraction = fraction;
        self.policy.mandatory_min = min;
        self.policy.mandatory_max = max;
        self
    }

    /// Fraction of the advisory window used for random jitter (0 disables jitter).
    pub fn jitter_fraction(mut self, fraction: f64) -> Self {
        self.policy.jitter_fraction = fraction;
        self
    }

    /// Backoff base and cap for transient failures.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.policy.backoff_base = base;
        self.policy.backoff_cap = cap;
        self
    }

    /// How long callers wait for an in-flight refresh.
    pub fn waiter_timeout(mut self, timeout: Duration) -> Self {
        self.policy.waiter_timeout = timeout;
        self
    }

    /// Lifetime assumed when a source doesn't report one.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.policy.default_lifetime = lifetime;
        self
    }

    /// Upper bound on one source call.
    pub fn source_timeout(mut self, timeout: Duration) -> Self {
        self.policy.source_timeout = timeout;
        self
    }

    /// Upper bound on one store call (default [`DEFAULT_STORE_TIMEOUT`]).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.policy.store_timeout = timeout;
        self
    }

    /// Lease lifetime and how long to wait for a sibling's lease.
    pub fn lease(mut self, ttl: Duration, wait: Duration) -> Self {
        self.policy.lease_ttl = ttl;
        self.policy.lease_wait = wait;
        self
    }

    /// Checks and returns the policy; a `Configuration` error names the bad field.
    pub fn build(self) -> Result<Policy> {
        let p = &self.policy;
        let fraction_ok = |value: f64| value.is_finite() && (0.0..=1.0).contains(&value);
        let check = |ok: bool, field: &str, rule: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::Configuration,
                    format!("policy.{field}: {rule}"),
                ))
            }
        };
        check(
            fraction_ok(p.advisory_fraction),
            "advisory_fraction",
            "must be within [0, 1]",
        )?;
        check(
            fraction_ok(p.mandatory_fraction),
            "mandatory_fraction",
            "must be within [0, 1]",
        )?;
        check(
            fraction_ok(p.jitter_fraction),
            "jitter_fraction",
            "must be within [0, 1]",
        )?;
        check(
            p.advisory_min <= p.advisory_max,
            "advisory_min",
            "must not exceed advisory_max",
        )?;
        check(
            p.mandatory_min <= p.mandatory_max,
            "mandatory_min",
            "must not exceed mandatory_max",
        )?;
        check(
            !p.backoff_base.is_zero(),
            "backoff_base",
            "must be greater than zero",
        )?;
        check(
            p.backoff_base <= p.backoff_cap,
            "backoff_base",
            "must not exceed backoff_cap",
        )?;
        check(
            !p.waiter_timeout.is_zero(),
            "waiter_timeout",
            "must be greater than zero",
        )?;
        check(
            !p.default_lifetime.is_zero(),
            "default_lifetime",
            "must be greater than zero",
        )?;
        check(
            !p.source_timeout.is_zero(),
            "source_timeout",
            "must be greater than zero",
        )?;
        check(
            p.lease_ttl >= Duration::from_millis(300),
            "lease_ttl",
            "must be at least 300 ms (it is renewed every third of it)",
        )?;
        check(
            !p.store_timeout.is_zero(),
            "store_timeout",
            "must be greater than zero",
        )?;
        Ok(self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn fifteen_minute_token_refreshes_at_minute_ten() {
        let policy = Policy::default();
        let start = MonoTime::from_duration(Duration::from_secs(1000));
        let windows = policy.windows(start, start + 15 * MIN, 0.0);
        assert_eq!(windows.refresh_at, start + 10 * MIN);
        assert_eq!(
            windows.mandatory_at,
            start + 15 * MIN - Duration::from_secs(60)
        );
        let jittered = policy.windows(start, start + 15 * MIN, 1.0);
        assert!(jittered.refresh_at < windows.refresh_at);
        assert!(jittered.refresh_at >= start + 10 * MIN - Duration::from_secs(24));
    }

    #[test]
    fn windows_clamp_for_long_and_short_tokens() {
        let policy = Policy::default();
        assert_eq!(policy.advisory_window(24 * 60 * MIN), 15 * MIN);
        assert_eq!(policy.advisory_window(MIN), Duration::from_secs(20));
        // 12 s: lifetime/3 = 4 s clamps up to 10 s, then down to half the lifetime.
        assert_eq!(
            policy.advisory_window(Duration::from_secs(12)),
            Duration::from_secs(6)
        );
        assert_eq!(
            policy.mandatory_window(Duration::from_secs(12)),
            Duration::from_secs(2)
        );
        let w = policy.windows(MonoTime::ZERO, MonoTime::ZERO + Duration::from_secs(4), 0.5);
        assert!(w.refresh_at > MonoTime::ZERO && w.refresh_at < w.mandatory_at);
        assert!(w.mandatory_at < w.expires_at);
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let policy = Policy::default();
        assert_eq!(
            policy.backoff_with(1, None, 1.0),
            Duration::from_millis(500)
        );
        assert_eq!(policy.backoff_with(3, None, 1.0), Duration::from_secs(2));
        assert_eq!(policy.backoff_with(40, None, 1.0), DEFAULT_BACKOFF_CAP);
        assert_eq!(policy.backoff_with(3, None, 0.5), Duration::from_secs(1));
        assert_eq!(
            policy.backoff_with(1, Some(Duration::from_secs(7)), 0.1),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn builder_rejects_bad_values_naming_the_field() {
        let err = Policy::builder().jitter_fraction(2.0).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("jitter_fraction"));
        let err = Policy::builder()
            .backoff(Duration::from_secs(10), Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert!(err.message().contains("backoff_base"));
        assert!(Policy::builder()
            .waiter_timeout(Duration::from_secs(5))
            .build()
            .is_ok());
    }
}
