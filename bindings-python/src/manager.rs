//! The native manager (a core `Manager`) and `AsyncCall`, a running `token_async` call.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use tokenlease::{BlockingSourceAdapter, BlockingStoreAdapter, ErrorKind};

use crate::dispatch::{dispatch, Job};
use crate::errors::{config_error, to_pyerr};
use crate::events::PyListener;
use crate::source::PySource;
use crate::store::PyStore;
use crate::token::{token_tuple, unix_seconds};

/// A core `Manager`. Wrapped by `tokenlease.Manager`.
#[pyclass(frozen, module = "tokenlease._native", name = "NativeManager")]
pub(crate) struct NativeManager {
    inner: tokenlease::Manager,
}

/// A running `token_async` call; `cancel()` stops waiting (the shared refresh goes on).
#[pyclass(frozen, module = "tokenlease._native", name = "AsyncCall")]
pub(crate) struct AsyncCall {
    abort: tokio::task::AbortHandle,
}

#[pymethods]
impl AsyncCall {
    fn cancel(&self) {
        self.abort.abort();
    }
}

#[pymethods]
impl NativeManager {
    /// Builds a manager from the JSON or TOML configuration every language uses.
    #[staticmethod]
    fn from_config(py: Python<'_>, text: &str) -> PyResult<Self> {
        let text = text.to_owned();
        // Resolving `{"file": ...}` secrets reads the file system: release the GIL.
        let manager = py.detach(move || tokenlease::Manager::from_config(&text));
        manager
            .map(|inner| Self { inner })
            .map_err(|err| to_pyerr(&err))
    }

    /// Builds a manager around a Python source (and optional Python store).
    #[staticmethod]
    #[pyo3(signature = (source, store, key, policy_json))]
    fn with_source(
        source: Py<PyAny>,
        store: Option<Py<PyAny>>,
        key: &str,
        policy_json: Option<&str>,
    ) -> PyResult<Self> {
        let mut builder =
            tokenlease::Manager::builder(BlockingSourceAdapter::new(PySource { object: source }))
                .key(key);
        if let Some(policy_json) = policy_json {
            let config: tokenlease::config::PolicyConfig = serde_json::from_str(policy_json)
                .map_err(|err| {
                    let text = err.to_string();
                    // Keep serde's structural messages only (they name fields, not values).
                    let detail = if text.starts_with("unknown field") {
                        text.split(" at line ").next().unwrap_or("").to_owned()
                    } else {
                        "invalid type or value".to_owned()
                    };
                    config_error(format!("policy: {detail}"))
                })?;
            let policy = config.to_policy().map_err(|err| to_pyerr(&err))?;
            builder = builder.policy(policy);
        }
        if let Some(store) = store {
            builder = builder.store(Arc::new(BlockingStoreAdapter::new(PyStore {
                object: store,
            })));
        }
        Ok(Self {
            inner: builder.build(),
        })
    }

    /// Sends every event of this manager to `callback(key, event_dict)` on core's event
    /// thread.
    fn add_listener(&self, callback: Py<PyAny>) {
        self.inner.add_listener(Arc::new(PyListener {
            callback: Arc::new(callback),
        }));
    }

    #[getter]
    fn key(&self) -> &str {
        self.inner.key()
    }

    /// The token value: from the cache without releasing the GIL (a lock-free read), else
    /// after the shared refresh with the GIL released.
    fn token<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        if let Some(token) = self.inner.cached() {
            return Ok(PyString::new(py, token.value().expose()));
        }
        let result = py.detach(|| self.inner.token_blocking().map(|token| token.into_arc()));
        match result {
            Ok(token) => Ok(PyString::new(py, token.value().expose())),
            Err(err) => Err(to_pyerr(&err)),
        }
    }

    /// `(value, token_type, expires_at_unix_s, generation)`.
    fn token_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        if let Some(token) = self.inner.cached() {
            return token_tuple(py, &token);
        }
        let result = py.detach(|| self.inner.token_blocking().map(|token| token.into_arc()));
        match result {
            Ok(token) => token_tuple(py, &token),
            Err(err) => Err(to_pyerr(&err)),
        }
    }

    /// The cached value when it can be served without waiting, else `None`. Never blocks.
    fn cached_token<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        self.inner
            .cached()
            .map(|token| PyString::new(py, token.value().expose()))
    }

    /// Like `cached_token` but the `token_info` tuple.
    fn cached_token_info<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner
            .cached()
            .map(|token| token_tuple(py, &token))
            .transpose()
    }

    /// Starts getting a token on the background runtime; `callback(value, exc)` is called
    /// on the dispatcher thread when done (value is the `token_info` tuple when `info`).
    #[pyo3(signature = (callback, info=false))]
    fn token_start(&self, callback: Py<PyAny>, info: bool) -> AsyncCall {
        let manager = self.inner.clone();
        let task = tokenlease::runtime::handle().spawn(async move {
            let result = manager.token().await.map(|token| token.into_arc());
            dispatch(Job::Complete {
                callback,
                result,
                info,
            });
        });
        AsyncCall {
            abort: task.abort_handle(),
        }
    }

    /// Discards the cached token if its generation is still `generation`.
    fn invalidate_generation(&self, generation: u64) -> bool {
        self.inner.invalidate_generation(generation)
    }

    /// Discards the cached token if its value is `value`.
    fn invalidate_value(&self, value: &str) -> bool {
        self.inner.invalidate_value(value)
    }

    fn revoke(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.revoke_blocking())
            .map_err(|err| to_pyerr(&err))
    }

    fn close(&self) {
        self.inner.close();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// A snapshot as a dict (times as Unix seconds).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let status = self.inner.status();
        let dict = PyDict::new(py);
        dict.set_item("state", status.state.name())?;
        dict.set_item("expires_at", status.expires_at.map(unix_seconds))?;
        dict.set_item("generation", status.generation)?;
        dict.set_item("last_refresh", status.last_refresh.map(unix_seconds))?;
        dict.set_item(
            "last_error_kind",
            status.last_error_kind.map(ErrorKind::name),
        )?;
        dict.set_item("last_error_message", status.last_error_message)?;
        dict.set_item("refreshing", status.refreshing)?;
        let counters = PyDict::new(py);
        let c = status.counters;
        for (name, value) in [
            ("fetches", c.fetches),
            ("refreshes", c.refreshes),
            ("failures", c.failures),
            ("served_stale", c.served_stale),
            ("waits", c.waits),
            ("invalidations", c.invalidations),
            ("store_loads", c.store_loads),
            ("store_errors", c.store_errors),
            ("keep_alives", c.keep_alives),
            ("events_dropped", c.events_dropped),
            ("store_timeouts", c.store_timeouts),
            ("source_timeouts", c.source_timeouts),
        ] {
            counters.set_item(name, value)?;
        }
        dict.set_item("counters", counters)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        format!(
            "NativeManager(key={:?}, state={:?})",
            self.inner.key(),
            self.inner.status().state.name()
        )
    }
}
