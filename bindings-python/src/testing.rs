//! `tokenlease.testing.ManualClock`: core's manual clock, so Python tests of code built on
//! tokenlease live through hours of token lifetimes without sleeping.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokenlease::testing;

use crate::errors::to_pyerr;
use crate::manager::Manager;

/// A clock that moves only when ``advance`` is called.
///
/// Give it to ``Manager.from_config(config, clock=clock)``; move a test server's clock in
/// step (first), then ``clock.advance(seconds, settle=manager)``.
#[pyclass(frozen, module = "tokenlease.testing", name = "ManualClock")]
pub(crate) struct ManualClock {
    pub(crate) clock: testing::ManualClock,
}

#[pymethods]
impl ManualClock {
    /// A manual clock whose wall time reads ``wall`` (seconds since the epoch; the
    /// system's time now when omitted).
    #[new]
    #[pyo3(signature = (wall=None))]
    fn new(wall: Option<f64>) -> PyResult<Self> {
        let wall = match wall {
            None => SystemTime::now(),
            Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                SystemTime::UNIX_EPOCH + Duration::from_secs_f64(seconds)
            }
            Some(_) => {
                return Err(PyValueError::new_err(
                    "wall must be a finite, non-negative number of seconds since the epoch",
                ))
            }
        };
        Ok(Self {
            clock: testing::ManualClock::with_wall(wall),
        })
    }

    /// Moves the clock forward by ``seconds``; with ``settle``, then waits (GIL released,
    /// at most ``timeout`` seconds of real time) until that manager's background work the
    /// move started has finished (raises ``TokenTimeoutError`` otherwise).
    #[pyo3(signature = (seconds, *, settle=None, timeout=20.0))]
    fn advance(
        &self,
        py: Python<'_>,
        seconds: f64,
        settle: Option<PyRef<'_, Manager>>,
        timeout: f64,
    ) -> PyResult<()> {
        let by = positive_seconds("seconds", seconds)?;
        let timeout = positive_seconds("timeout", timeout)?;
        self.clock.advance(by);
        if let Some(manager) = settle {
            let manager = manager.core().clone();
            let clock = self.clock.clone();
            py.detach(move || testing::settle(&clock, &manager, timeout))
                .map_err(|err| to_pyerr(&err))?;
        }
        Ok(())
    }

    /// The clock's wall time, in seconds since the epoch.
    fn wall(&self) -> f64 {
        use tokenlease::Clock;
        self.clock
            .wall_now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64())
    }

    fn __repr__(&self) -> String {
        format!("ManualClock(wall={:.3})", self.wall())
    }
}

impl ManualClock {
    pub(crate) fn shared(&self) -> Arc<dyn tokenlease::Clock> {
        Arc::new(self.clock.clone())
    }
}

fn positive_seconds(name: &str, seconds: f64) -> PyResult<Duration> {
    if (0.0..1e12).contains(&seconds) {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(PyValueError::new_err(format!(
            "{name} must be a finite, non-negative number of seconds"
        )))
    }
}
