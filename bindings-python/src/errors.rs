//! Errors: core `Error` <-> one Python exception class per kind (the classes are defined in
//! `tokenlease/_errors.py` and registered here at import), with the Python exception a
//! callback raised kept as `__cause__`.

use std::fmt;
use std::time::Duration;

use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};
use tokenlease::{Error, ErrorKind};

/// `code -> exception class`, registered by `tokenlease/_errors.py` at import.
static ERROR_CLASSES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
/// The `TokenleaseError` base class.
static ERROR_BASE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A Python exception kept as the cause of a core error, so it can be re-raised as the
/// `__cause__` of the exception the caller sees.
struct PyCause {
    exception: Py<PyAny>,
    description: String,
}

impl fmt::Debug for PyCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PyCause")
            .field("description", &self.description)
            .finish()
    }
}

impl fmt::Display for PyCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl std::error::Error for PyCause {}

/// Converts a core error into an instance of its Python class, with `__cause__` set to the
/// Python exception a callback raised, or to the converted underlying tokenlease error.
pub(crate) fn error_instance<'py>(py: Python<'py>, err: &Error) -> Bound<'py, PyAny> {
    let retry_after = err.retry_after().map(|after| after.as_secs_f64());
    let message = err.to_string();
    let instance = ERROR_CLASSES
        .get(py)
        .and_then(|classes| classes.bind(py).get_item(err.kind().code()).ok().flatten())
        .and_then(|class| class.call1((message.clone(), retry_after)).ok())
        .unwrap_or_else(|| {
            PyRuntimeError::new_err(message)
                .into_value(py)
                .into_bound(py)
                .into_any()
        });
    let cause = python_cause(err)
        .map(|cause| cause.exception.bind(py).clone())
        .or_else(|| err.cause_error().map(|cause| error_instance(py, cause)));
    if let Some(cause) = cause {
        let _ = instance.setattr("__cause__", cause);
    }
    instance
}

/// The Python exception somewhere in the cause chain of `err`, if a callback raised one.
fn python_cause(err: &Error) -> Option<&PyCause> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = current {
        if let Some(py_cause) = cause.downcast_ref::<PyCause>() {
            return Some(py_cause);
        }
        current = cause.source();
    }
    None
}

pub(crate) fn to_pyerr(err: &Error) -> PyErr {
    Python::attach(|py| PyErr::from_value(error_instance(py, err)))
}

/// Converts an exception raised by a Python callback into a core error. A tokenlease
/// exception keeps its kind; `TimeoutError` is `Timeout`; `ConnectionError` and other
/// `OSError`s are `Transient`; anything else is `fallback` (`Internal` for sources: a bug
/// in the callback is not retried as if the server were down; `Store` for stores).
pub(crate) fn callback_error(py: Python<'_>, err: PyErr, what: &str, fallback: ErrorKind) -> Error {
    let value = err.value(py);
    let is_tokenlease = ERROR_BASE
        .get(py)
        .is_some_and(|base| value.is_instance(base.bind(py)).unwrap_or(false));
    let kind = if is_tokenlease {
        value
            .getattr("code")
            .ok()
            .and_then(|code| code.extract::<u32>().ok())
            .and_then(ErrorKind::from_code)
            .unwrap_or(fallback)
    } else if err.is_instance_of::<PyTimeoutError>(py) {
        ErrorKind::Timeout
    } else if err.is_instance_of::<PyConnectionError>(py) || err.is_instance_of::<PyOSError>(py) {
        ErrorKind::Transient
    } else {
        fallback
    };
    let type_name = value
        .get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    // Exception text can carry a URL with credentials or a token: it is redacted the way
    // core redacts every foreign message (the exception itself stays `__cause__`).
    let text = value.str().map(|text| text.to_string()).unwrap_or_default();
    let mut text = tokenlease::redact_foreign_text(&text);
    if text.is_empty() {
        text = "(no message)".to_owned();
    }
    // Core caps every Retry-After (policy::MAX_RETRY_AFTER); NaN, negative and infinite
    // values are dropped here.
    let retry_after = if is_tokenlease {
        value
            .getattr("retry_after")
            .ok()
            .and_then(|after| after.extract::<f64>().ok())
            .and_then(|after| Duration::try_from_secs_f64(after).ok())
    } else {
        None
    };
    let description = format!("{type_name}: {text}");
    Error::new(kind, format!("the Python {what} raised {description}"))
        .with_retry_after(retry_after)
        .with_cause(PyCause {
            exception: value.clone().unbind().into_any(),
            description,
        })
}

pub(crate) fn config_error(message: String) -> PyErr {
    to_pyerr(&Error::new(ErrorKind::Configuration, message))
}

/// Registers the exception classes (`{code: class}`) and their base.
#[pyfunction]
pub(crate) fn _register_errors(
    py: Python<'_>,
    base: Bound<'_, PyType>,
    classes: Bound<'_, PyDict>,
) -> PyResult<()> {
    let _ = ERROR_BASE.set(py, base.unbind());
    let _ = ERROR_CLASSES.set(py, classes.unbind());
    Ok(())
}

/// `[(code, name)]` of every core error kind, in numeric order.
#[pyfunction]
pub(crate) fn error_kinds() -> Vec<(u32, &'static str)> {
    ErrorKind::ALL
        .iter()
        .map(|kind| (kind.code(), kind.name()))
        .collect()
}
