//! `tokenlease._native`: the Python binding of tokenlease.
//!
//! This module converts and nothing else: types (tokens, records, events, status) and
//! errors (core `ErrorKind` <-> one Python exception class per kind). Refresh, retry,
//! caching and scheduling are core's `Manager`, running on core's one background runtime.
//! The GIL is released around every call that may block; Python callbacks (sources,
//! stores) run on core's blocking pool and take the GIL only for the call; listeners run on
//! core's event thread (shared by every binding, with its bounded queue) and `token_async`
//! completions on one dispatcher thread, so the background runtime thread never waits for
//! the GIL.
//!
//! The public, documented API is the pure-Python package `tokenlease`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyTimeoutError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use tokenlease::{
    BlockingSource, BlockingSourceAdapter, BlockingStore, BlockingStoreAdapter, Error, ErrorKind,
    Event, EventListener, FetchedToken, Lifetime, RefreshReason, SecretString, Token, TokenRecord,
};

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

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

fn unix_seconds(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// Converts a core error into an instance of its Python class, with `__cause__` set to the
/// Python exception a callback raised, or to the converted underlying tokenlease error.
fn error_instance<'py>(py: Python<'py>, err: &Error) -> Bound<'py, PyAny> {
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

fn to_pyerr(err: &Error) -> PyErr {
    Python::attach(|py| PyErr::from_value(error_instance(py, err)))
}

/// Converts an exception raised by a Python callback into a core error. A tokenlease
/// exception keeps its kind; `TimeoutError` is `Timeout`; `ConnectionError` and other
/// `OSError`s are `Transient`; anything else is `fallback` (`Internal` for sources: a bug
/// in the callback is not retried as if the server were down; `Store` for stores).
fn callback_error(py: Python<'_>, err: PyErr, what: &str, fallback: ErrorKind) -> Error {
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

// ---------------------------------------------------------------------------------------
// Python sources and stores
// ---------------------------------------------------------------------------------------

/// Runs `fetch()`'s result to completion if it is a coroutine (`async def fetch`), on a
/// private event loop of this blocking-pool thread.
fn resolve_awaitable<'py>(
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

fn fetched_from_py(value: &Bound<'_, PyAny>) -> PyResult<FetchedToken> {
    if let Ok(text) = value.cast::<PyString>() {
        // A bare string: a bearer token whose lifetime the policy's default decides.
        return Ok(
            FetchedToken::bearer(text.extract::<String>()?, Duration::ZERO)
                .with_lifetime(Lifetime::Unknown),
        );
    }
    let token = optional_field(value, "value")?
        .ok_or_else(|| PyTypeError::new_err("fetch() must return a token with a `value`"))?
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
    Ok(fetched)
}

/// A Python object with `fetch()` (sync or `async def`) and optionally
/// `refresh(refresh_token)` and `revoke(token_value)`.
struct PySource {
    object: Py<PyAny>,
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
        Python::attach(|py| {
            let object = self.object.bind(py);
            let result = match arg {
                Some(arg) => object.call_method1(method, (arg.expose(),)),
                None => object.call_method0(method),
            };
            result
                .and_then(|value| resolve_awaitable(py, value))
                .and_then(|value| fetched_from_py(&value))
                .map_err(|err| callback_error(py, err, "source", ErrorKind::Internal))
        })
    }

    fn has(&self, method: &str) -> bool {
        Python::attach(|py| self.object.bind(py).hasattr(method).unwrap_or(false))
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
        Python::attach(|py| {
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
    }
}

/// A Python object with `load(key) -> str | None`, `save(key, record_json)`, `delete(key)`.
/// Records are the JSON of core's `TokenRecord`.
struct PyStore {
    object: Py<PyAny>,
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
        Python::attach(|py| {
            args(py)
                .and_then(|args| self.object.bind(py).call_method1(method, args))
                .and_then(|value| resolve_awaitable(py, value))
                .and_then(|value| value.extract::<Option<String>>())
                .map_err(|err| callback_error(py, err, "store", ErrorKind::Store))
        })
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

// ---------------------------------------------------------------------------------------
// The dispatcher thread: token_async completions
// ---------------------------------------------------------------------------------------

enum Job {
    Complete {
        callback: Py<PyAny>,
        result: tokenlease::Result<Arc<Token>>,
        info: bool,
    },
    Flush(mpsc::Sender<()>),
}

static STOPPED: AtomicBool = AtomicBool::new(false);

fn dispatcher() -> &'static Mutex<mpsc::Sender<Job>> {
    static SENDER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tokenlease-py-dispatch".to_owned())
            .spawn(move || dispatch_loop(&receiver))
            .expect("tokenlease: cannot start the Python dispatcher thread");
        Mutex::new(sender)
    })
}

fn dispatch(job: Job) {
    if STOPPED.load(Ordering::SeqCst) {
        return;
    }
    let _ = dispatcher().lock().send(job);
}

fn dispatch_loop(receiver: &mpsc::Receiver<Job>) {
    while let Ok(first) = receiver.recv() {
        if STOPPED.load(Ordering::SeqCst) {
            // The interpreter is shutting down: drop jobs without touching Python.
            std::mem::forget(first);
            continue;
        }
        Python::attach(|py| {
            // Everything queued meanwhile is handled under this one GIL acquisition.
            let mut next = Some(first);
            while let Some(job) = next.take() {
                run_job(py, job);
                next = receiver.try_recv().ok();
            }
        });
    }
}

fn run_job(py: Python<'_>, job: Job) {
    match job {
        Job::Complete {
            callback,
            result,
            info,
        } => {
            let args = match &result {
                Ok(token) => {
                    let value = if info {
                        token_tuple(py, token).map(Bound::into_any)
                    } else {
                        Ok(PyString::new(py, token.value().expose()).into_any())
                    };
                    value.map(|value| (value, py.None().into_bound(py)))
                }
                Err(err) => Ok((py.None().into_bound(py), error_instance(py, err))),
            };
            let outcome = args.and_then(|args| callback.bind(py).call1(args));
            if let Err(err) = outcome {
                err.write_unraisable(py, Some(callback.bind(py)));
            }
        }
        Job::Flush(done) => {
            let _ = done.send(());
        }
    }
}

fn reason_name(reason: RefreshReason) -> &'static str {
    match reason {
        RefreshReason::Initial => "initial",
        RefreshReason::Scheduled => "scheduled",
        RefreshReason::Stale => "stale",
        RefreshReason::Mandatory => "mandatory",
        RefreshReason::Invalidated => "invalidated",
        _ => "other",
    }
}

/// An event as a dict; times are Unix seconds (the Python layer makes datetimes of them).
/// Never contains a token value (core events carry none).
fn event_dict<'py>(py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    match event {
        Event::RefreshStarted { reason } => {
            dict.set_item("type", "refresh_started")?;
            dict.set_item("reason", reason_name(*reason))?;
        }
        Event::RefreshSucceeded {
            generation,
            expires_at,
            from_store,
        } => {
            dict.set_item("type", "refresh_succeeded")?;
            dict.set_item("generation", generation)?;
            dict.set_item("expires_at", unix_seconds(*expires_at))?;
            dict.set_item("from_store", from_store)?;
        }
        Event::RefreshFailed {
            kind,
            message,
            consecutive_failures,
            next_retry_at,
        } => {
            dict.set_item("type", "refresh_failed")?;
            dict.set_item("kind", kind.name())?;
            dict.set_item("code", kind.code())?;
            dict.set_item("message", message)?;
            dict.set_item("consecutive_failures", consecutive_failures)?;
            dict.set_item("next_retry_at", next_retry_at.map(unix_seconds))?;
        }
        Event::ServedStale {
            generation,
            expires_at,
        } => {
            dict.set_item("type", "served_stale")?;
            dict.set_item("generation", generation)?;
            dict.set_item("expires_at", unix_seconds(*expires_at))?;
        }
        Event::Invalidated { generation } => {
            dict.set_item("type", "invalidated")?;
            dict.set_item("generation", generation)?;
        }
        Event::Revoked { generation } => {
            dict.set_item("type", "revoked")?;
            dict.set_item("generation", generation)?;
        }
        Event::Expired { generation } => {
            dict.set_item("type", "expired")?;
            dict.set_item("generation", generation)?;
        }
        Event::StoreError { operation, message } => {
            dict.set_item("type", "store_error")?;
            dict.set_item("operation", *operation)?;
            dict.set_item("message", message)?;
        }
        _ => {
            dict.set_item("type", "other")?;
        }
    }
    Ok(dict)
}

struct PyListener {
    callback: Arc<Py<PyAny>>,
}

impl EventListener for PyListener {
    fn on_event(&self, key: &str, event: &Event) {
        // Core calls listeners on its event thread, never on the refresh thread, so taking
        // the GIL here cannot stall a refresh; core's bounded queue absorbs a slow callback.
        if STOPPED.load(Ordering::SeqCst) {
            return;
        }
        Python::attach(|py| {
            let result =
                event_dict(py, event).and_then(|dict| self.callback.bind(py).call1((key, dict)));
            if let Err(err) = result {
                err.write_unraisable(py, Some(self.callback.bind(py)));
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// The manager
// ---------------------------------------------------------------------------------------

fn token_tuple<'py>(py: Python<'py>, token: &Token) -> PyResult<Bound<'py, PyTuple>> {
    (
        token.value().expose(),
        token.token_type(),
        unix_seconds(token.expires_at_wall()),
        token.generation(),
    )
        .into_pyobject(py)
}

fn config_error(message: String) -> PyErr {
    to_pyerr(&Error::new(ErrorKind::Configuration, message))
}

/// A core `Manager`. Wrapped by `tokenlease.Manager`.
#[pyclass(frozen, module = "tokenlease._native", name = "NativeManager")]
struct NativeManager {
    inner: tokenlease::Manager,
}

/// A running `token_async` call; `cancel()` stops waiting (the shared refresh goes on).
#[pyclass(frozen, module = "tokenlease._native", name = "AsyncCall")]
struct AsyncCall {
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

/// Registers the exception classes (`{code: class}`) and their base.
#[pyfunction]
fn _register_errors(
    py: Python<'_>,
    base: Bound<'_, PyType>,
    classes: Bound<'_, PyDict>,
) -> PyResult<()> {
    let _ = ERROR_BASE.set(py, base.unbind());
    let _ = ERROR_CLASSES.set(py, classes.unbind());
    Ok(())
}

/// Waits (GIL released) until every event (core's event thread) and completion (this
/// binding's dispatcher) queued so far was delivered.
#[pyfunction]
fn flush_events(py: Python<'_>) {
    let (sender, receiver) = mpsc::channel();
    dispatch(Job::Flush(sender));
    py.detach(move || {
        tokenlease::events::flush(Duration::from_secs(10));
        let _ = receiver.recv_timeout(Duration::from_secs(10));
    });
}

/// Stops delivering events (called at interpreter exit).
#[pyfunction]
fn _shutdown() {
    STOPPED.store(true, Ordering::SeqCst);
}

/// Core's decision whether a resource server's answer rejects the token (401 with a Bearer
/// `invalid_token` challenge, or a bare Bearer 401).
#[pyfunction]
#[pyo3(signature = (status, www_authenticate=None))]
fn is_token_rejected(status: u16, www_authenticate: Option<&str>) -> bool {
    let Ok(status) = reqwest::StatusCode::from_u16(status) else {
        return false;
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) =
        www_authenticate.and_then(|value| reqwest::header::HeaderValue::from_str(value).ok())
    {
        headers.insert(reqwest::header::WWW_AUTHENTICATE, value);
    }
    tokenlease::http::is_token_rejected(status, &headers)
}

/// `[(code, name)]` of every core error kind, in numeric order.
#[pyfunction]
fn error_kinds() -> Vec<(u32, &'static str)> {
    ErrorKind::ALL
        .iter()
        .map(|kind| (kind.code(), kind.name()))
        .collect()
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<NativeManager>()?;
    module.add_class::<AsyncCall>()?;
    module.add_function(wrap_pyfunction!(_register_errors, module)?)?;
    module.add_function(wrap_pyfunction!(flush_events, module)?)?;
    module.add_function(wrap_pyfunction!(_shutdown, module)?)?;
    module.add_function(wrap_pyfunction!(is_token_rejected, module)?)?;
    module.add_function(wrap_pyfunction!(error_kinds, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
