//! Python token sources: an object with `fetch()` (sync or `async def`) and optionally
//! `refresh()` and `revoke()`, as core's `BlockingSource`.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use tokenlease::{BlockingSource, ErrorKind, FetchedToken, Lifetime, SecretString, Token};

use crate::dispatch::attach_unless_stopped;
use crate::errors::callback_error;

/// Runs `fetch()`'s result to completion if it is a coroutine (`async def fetch`), on a
/// private event loop of this blocking-pool thread.
pub(crate) fn resolve_awaitable<'py>(
    py: Python<'py>,
    value: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let inspect = py.import("inspect")?;
    if inspect
        .call_method1("iscoroutine", (&value,))?
        .is_truthy()?
    {
        py.import("asyncio")?.call_method1("run", (value,))
    } else {
        Ok(value)
    }
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

/// A Python object with `fetch()` (sync or `async def`) and optionally
/// `refresh(refresh_token)` and `revoke(token_value)`.
pub(crate) struct PySource {
    pub(crate) object: Py<PyAny>,
}

impl fmt::Debug for PySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PySource")
    }
}

impl PySource {
    fn call_fetch_like(
        &self,
        method: &str,
        arg: Option<&SecretString>,
    ) -> tokenlease::Result<FetchedToken> {
        attach_unless_stopped(|py| {
            let object = self.object.bind(py);
            let result = match arg {
                Some(arg) => object.call_method1(method, (arg.expose(),)),
                None => object.call_method0(method),
            };
            result
                .and_then(|value| resolve_awaitable(py, value))
                .and_then(|value| fetched_from_py(&value, "the result of fetch()"))
                .map_err(|err| callback_error(py, err, "source", ErrorKind::Internal))
        })
        .unwrap_or_else(|| Err(interpreter_exiting()))
    }

    fn has(&self, method: &str) -> bool {
        attach_unless_stopped(|py| self.object.bind(py).hasattr(method).unwrap_or(false))
            .unwrap_or(false)
    }
}

impl BlockingSource for PySource {
    fn fetch(&self) -> tokenlease::Result<FetchedToken> {
        self.call_fetch_like("fetch", None)
    }

    fn refresh(&self, refresh_token: &SecretString) -> tokenlease::Result<FetchedToken> {
        if self.has("refresh") {
            self.call_fetch_like("refresh", Some(refresh_token))
        } else {
            self.fetch()
        }
    }

    fn revoke(&self, token: &Token) -> tokenlease::Result<()> {
        attach_unless_stopped(|py| {
            let object = self.object.bind(py);
            if !object.hasattr("revoke").unwrap_or(false) {
                return Ok(());
            }
            object
                .call_method1("revoke", (token.value().expose(),))
                .and_then(|value| resolve_awaitable(py, value))
                .map(drop)
                .map_err(|err| callback_error(py, err, "source", ErrorKind::Internal))
        })
        .unwrap_or_else(|| Err(interpreter_exiting()))
    }
}

/// What a Python callback "returns" once the interpreter is shutting down (it is not called).
pub(crate) fn interpreter_exiting() -> tokenlease::Error {
    tokenlease::Error::new(ErrorKind::Closed, "the Python interpreter is shutting down")
}
