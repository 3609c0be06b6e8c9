//! Tokens and times as Python values.

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokenlease::Token;

pub(crate) fn unix_seconds(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// `(value, token_type, expires_at_unix_s, generation, id_token, attributes)`, what
/// `_manager._info` makes a `TokenInfo` of.
pub(crate) fn token_tuple<'py>(py: Python<'py>, token: &Token) -> PyResult<Bound<'py, PyTuple>> {
    let attributes = PyDict::new(py);
    for (name, value) in token.attributes() {
        attributes.set_item(name, value)?;
    }
    (
        token.value().expose(),
        token.token_type(),
        unix_seconds(token.expires_at_wall()),
        token.generation(),
        token.id_token().map(|id_token| id_token.expose()),
        attributes,
    )
        .into_pyobject(py)
}
