//! [`ManualClock`]: core's manual clock, so Kotlin and Swift tests of code built on
//! tokenlease live through hours of token lifetimes without sleeping.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokenlease::testing;
use tokenlease::Clock;

use crate::errors::{BindingResult, TokenleaseError};
use crate::manager::NativeTokenManager;

/// A clock that moves only when told; give it to `TokenManager.fromConfig(config, clock)`.
///
/// With a test server that has a clock of its own, move the server first, then this clock
/// (so work the move starts meets a server already at the new time).
#[derive(Debug, uniffi::Object)]
pub struct ManualClock {
    clock: testing::ManualClock,
}

#[uniffi::export]
impl ManualClock {
    /// A manual clock whose wall time reads `wall_unix_ms` (milliseconds since the epoch;
    /// the system's time now when `None`). Negative times are a `Usage` error.
    #[uniffi::constructor(default(wall_unix_ms = None))]
    pub fn new(wall_unix_ms: Option<i64>) -> BindingResult<Arc<Self>> {
        let wall = match wall_unix_ms {
            None => SystemTime::now(),
            Some(ms) => {
                let ms = u64::try_from(ms).map_err(|_| TokenleaseError::Usage {
                    reason: "wall_unix_ms must not be negative".to_owned(),
                })?;
                SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
            }
        };
        Ok(Arc::new(Self {
            clock: testing::ManualClock::with_wall(wall),
        }))
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    /// Moves the clock forward by `ms`, then blocks (at most `timeout_ms` of real time; 0
    /// means 20 s) until `manager`'s background work the move started has finished;
    /// `Timeout` otherwise. Never call it from a tokenlease callback.
    pub fn advance_and_settle(
        &self,
        ms: u64,
        manager: Arc<NativeTokenManager>,
        timeout_ms: u64,
    ) -> BindingResult<()> {
        testing::advance_and_settle(
            &self.clock,
            Duration::from_millis(ms),
            manager.core(),
            testing::settle_timeout_ms(timeout_ms),
        )?;
        Ok(())
    }

    /// The clock's wall time, in milliseconds since the epoch.
    pub fn wall_unix_ms(&self) -> i64 {
        self.clock
            .wall_now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
            })
    }
}

impl ManualClock {
    pub(crate) fn shared(&self) -> Arc<dyn Clock> {
        Arc::new(self.clock.clone())
    }
}
