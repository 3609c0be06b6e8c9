//! Tokens and times as Python values.

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tokenlease::Token;

pub(crate) fn unix_seconds(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

pub(crate) fn token_tuple<'py>(py: Python<'py>, token: &Token) -> PyResult<Bound<'py, PyTuple>> {
    (
        token.value().expose(),
        token.token_type(),
        unix_seconds(token.expires_at_wall()),
        token.generation(),
    )
        .into_pyobject(py)
}
