//! Python token sources: an object with `fetch()` (sync or `async def`) and optionally
//! `refresh()` and `revoke()`, as core's `BlockingSource`.

use pyo3::prelude::*;
use std::fmt;
use tokenlease::{BlockingSource, ErrorKind, FetchedToken, SecretString, Token};

use crate::dispatch::attach_unless_stopped;
use crate::errors::callback_error;
use crate::token::fetched_from_py;

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
