//! Tokens and times as Python values.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use tokenlease::{FetchedToken, Lifetime, SecretString, Token};

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

fn optional_field<'py>(
    value: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let field = if let Ok(dict) = value.cast::<PyDict>() {
        dict.get_item(name)?
    } else if value.hasattr(name)? {
        Some(value.getattr(name)?)
    } else {
        None
    };
    Ok(field.filter(|field| !field.is_none()))
}

/// A token result in the shape a Python source's `fetch()` returns (a `FetchedToken`, a
/// mapping with the same keys, or a bare string); `what` names the producer in errors.
pub(crate) fn fetched_from_py(value: &Bound<'_, PyAny>, what: &str) -> PyResult<FetchedToken> {
    if let Ok(text) = value.cast::<PyString>() {
        // A bare string: a bearer token whose lifetime the policy's default decides.
        return Ok(
            FetchedToken::bearer(text.extract::<String>()?, Duration::ZERO)
                .with_lifetime(Lifetime::Unknown),
        );
    }
    let token = optional_field(value, "value")?
        .ok_or_else(|| PyTypeError::new_err(format!("{what} must be a token with a `value`")))?
        .extract::<String>()?;
    let lifetime = match optional_field(value, "expires_in")? {
        Some(expires_in) => {
            let seconds = expires_in.extract::<f64>()?;
            Lifetime::ExpiresIn(Duration::try_from_secs_f64(seconds).map_err(|_| {
                PyTypeError::new_err("expires_in must be a non-negative number of seconds")
            })?)
        }
        None => match optional_field(value, "expires_at")? {
            Some(expires_at) => {
                let seconds = expires_at.call_method0("timestamp")?.extract::<f64>()?;
                let since = Duration::try_from_secs_f64(seconds)
                    .map_err(|_| PyTypeError::new_err("expires_at must be after the Unix epoch"))?;
                Lifetime::ExpiresAt(UNIX_EPOCH + since)
            }
            None => Lifetime::Unknown,
        },
    };
    let mut fetched = FetchedToken::bearer(token, Duration::ZERO).with_lifetime(lifetime);
    if let Some(token_type) = optional_field(value, "token_type")? {
        fetched.token_type = token_type.extract()?;
    }
    if let Some(refresh_token) = optional_field(value, "refresh_token")? {
        fetched.refresh_token = Some(SecretString::new(refresh_token.extract::<String>()?));
    }
    if let Some(scopes) = optional_field(value, "scopes")? {
        fetched.scopes = scopes.extract()?;
    }
    if let Some(id_token) = optional_field(value, "id_token")? {
        fetched.id_token = Some(SecretString::new(id_token.extract::<String>()?));
    }
    Ok(fetched)
}
