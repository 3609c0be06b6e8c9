//! Python token stores: an object with `load`, `save` and `delete` over JSON records, as
//! core's `BlockingStore`.

use std::fmt;

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tokenlease::{BlockingStore, ErrorKind, TokenRecord};

use crate::dispatch::attach_unless_stopped;
use crate::errors::callback_error;
use crate::source::{interpreter_exiting, resolve_awaitable};

/// A Python object with `load(key) -> str | None`, `save(key, record_json)`, `delete(key)`.
/// Records are the JSON of core's `TokenRecord`.
pub(crate) struct PyStore {
    pub(crate) object: Py<PyAny>,
}

impl fmt::Debug for PyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PyStore")
    }
}

impl PyStore {
    fn call(
        &self,
        method: &str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>>,
    ) -> tokenlease::Result<Option<String>> {
        attach_unless_stopped(|py| {
            args(py)
                .and_then(|args| self.object.bind(py).call_method1(method, args))
                .and_then(|value| resolve_awaitable(py, value))
                .and_then(|value| value.extract::<Option<String>>())
                .map_err(|err| callback_error(py, err, "store", ErrorKind::Store))
        })
        .unwrap_or_else(|| Err(interpreter_exiting()))
    }
}

impl BlockingStore for PyStore {
    fn load(&self, key: &str) -> tokenlease::Result<Option<TokenRecord>> {
        let json = self.call("load", |py| PyTuple::new(py, [key]))?;
        json.map(|json| TokenRecord::from_json(&json)).transpose()
    }

    fn save(&self, key: &str, record: &TokenRecord) -> tokenlease::Result<()> {
        let json = record.to_json()?;
        self.call("save", |py| PyTuple::new(py, [key, json.as_str()]))
            .map(drop)
    }

    fn delete(&self, key: &str) -> tokenlease::Result<()> {
        self.call("delete", |py| PyTuple::new(py, [key])).map(drop)
    }
}
