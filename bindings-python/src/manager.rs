//! `tokenlease.Manager`: the public manager class, native (a core `Manager`), so a cached
//! `token()` is one native method call with no Python frame in between. What has to stay in
//! Python (the dataclasses, the logging event handler, the coroutines of `token_async` and of
//! the asyncio login calls) are thin functions of `tokenlease/_manager.py`, looked up when
//! first needed.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyString, PyTuple, PyType};
use tokenlease::http::MAX_INSPECTED_ERROR_BODY_BYTES;
use tokenlease::{BlockingSourceAdapter, BlockingStoreAdapter, ErrorKind};

use crate::dispatch::{dispatch, Job, Outcome};
use crate::errors::{config_error, to_pyerr};
use crate::events::PyListener;
use crate::login::{login_result, wait_interruptibly, DeviceLogin, LoginRequest};
use crate::source::PySource;
use crate::store::PyStore;
use crate::testing::ManualClock;
use crate::token::{token_tuple, unix_seconds};

/// The parts of `tokenlease/_manager.py` this class calls, looked up once (that module
/// imports this one, so they are found when first needed rather than at import).
macro_rules! python_part {
    ($py:expr, $name:literal) => {{
        static PART: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        PART.get_or_try_init($py, || -> PyResult<Py<PyAny>> {
            Ok($py.import("tokenlease._manager")?.getattr($name)?.unbind())
        })
        .map(|part| part.bind($py))
    }};
}

/// `json.dumps(dict(value))`.
fn json_text(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<String> {
    let dict = py.get_type::<PyDict>().call1((value,))?;
    py.import("json")?
        .getattr("dumps")?
        .call1((dict,))?
        .extract()
}

/// Builds a core manager around a Python source (and optional Python store).
fn build_with_source(
    source: Py<PyAny>,
    store: Option<Py<PyAny>>,
    key: &str,
    policy_json: Option<&str>,
) -> PyResult<tokenlease::Manager> {
    let mut builder =
        tokenlease::Manager::builder(BlockingSourceAdapter::new(PySource { object: source }))
            .key(key);
    if let Some(policy_json) = policy_json {
        let config: tokenlease::config::PolicyConfig =
            serde_json::from_str(policy_json).map_err(|err| {
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
    Ok(builder.build())
}

/// Sends every event of `manager` to `_manager._event_handler(listener)` (which logs it and
/// calls `listener`) on core's event thread.
fn add_event_handler(
    py: Python<'_>,
    manager: &tokenlease::Manager,
    listener: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let handler = python_part!(py, "_event_handler")?.call1((listener,))?;
    manager.add_listener(Arc::new(PyListener {
        callback: Arc::new(handler.unbind()),
    }));
    Ok(())
}

/// A core manager built by `from_config` on a subclass of `Manager`, handed to the
/// subclass's `__new__` as its `source` (internal; never seen by users).
#[pyclass(frozen, module = "tokenlease._native", name = "_Prebuilt")]
struct Prebuilt {
    inner: Mutex<Option<tokenlease::Manager>>,
}

/// Gets, caches and refreshes the token of one credential.
///
/// Thread-safe; share one per credential. ``token()`` on a fresh token is a lock-free
/// read; otherwise it waits (GIL released) for the single shared refresh.
///
/// ``Manager(source, *, store=None, listener=None, key="default", policy=None)``: a manager
/// around a Python ``source`` (and optional ``store``, ``listener``). ``policy`` takes the
/// same fields as the ``policy`` section of the configuration (e.g.
/// ``{"waiter_timeout_ms": 5000}``).
#[pyclass(frozen, subclass, weakref, module = "tokenlease", name = "Manager")]
pub(crate) struct Manager {
    inner: tokenlease::Manager,
}

impl Manager {
    /// The core manager this object wraps.
    pub(crate) fn core(&self) -> &tokenlease::Manager {
        &self.inner
    }
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
impl Manager {
    #[new]
    #[pyo3(signature = (source, *, store=None, listener=None, key="default", policy=None))]
    fn new(
        py: Python<'_>,
        source: Bound<'_, PyAny>,
        store: Option<Bound<'_, PyAny>>,
        listener: Option<Bound<'_, PyAny>>,
        key: &str,
        policy: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if let Ok(prebuilt) = source.cast::<Prebuilt>() {
            if let Some(inner) = prebuilt.get().inner.lock().take() {
                return Ok(Self { inner });
            }
        }
        if !source.hasattr("fetch")? {
            return Err(PyTypeError::new_err("source must have a fetch() method"));
        }
        if let Some(store) = &store {
            for method in ["load", "save", "delete"] {
                if !store.hasattr(method)? {
                    return Err(PyTypeError::new_err(
                        "store must have load(), save() and delete() methods",
                    ));
                }
            }
        }
        let policy_json = policy.map(|policy| json_text(py, &policy)).transpose()?;
        let inner = build_with_source(
            source.unbind(),
            store.map(Bound::unbind),
            key,
            policy_json.as_deref(),
        )?;
        add_event_handler(py, &inner, listener)?;
        Ok(Self { inner })
    }

    /// A manager from the configuration every language uses (a dict, JSON or TOML).
    #[classmethod]
    ///
    /// ``clock``: a ``tokenlease.testing.ManualClock`` for tests (the system clock when
    /// omitted).
    #[pyo3(signature = (config, *, listener=None, clock=None))]
    fn from_config<'py>(
        cls: &Bound<'py, PyType>,
        config: &Bound<'py, PyAny>,
        listener: Option<Bound<'py, PyAny>>,
        clock: Option<PyRef<'py, ManualClock>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = cls.py();
        let text = match config.cast::<PyString>() {
            Ok(text) => text.to_cow()?.into_owned(),
            Err(_) => json_text(py, config)?,
        };
        let clock = clock.map(|clock| clock.shared());
        // Resolving `{"file": ...}` secrets reads the file system: release the GIL.
        let inner = py
            .detach(move || {
                let builder = tokenlease::config::ManagerConfig::parse(&text)?.builder()?;
                Ok::<_, tokenlease::Error>(match clock {
                    Some(clock) => builder.clock(clock).build(),
                    None => builder.build(),
                })
            })
            .map_err(|err| to_pyerr(&err))?;
        add_event_handler(py, &inner, listener)?;
        if cls.is(py.get_type::<Self>()) {
            return Ok(Bound::new(py, Self { inner })?.into_any());
        }
        // A subclass: its own `__new__` makes the object (as `cls.__new__(cls)` did when
        // `Manager` was a Python class; `__init__` is not called).
        let prebuilt = Bound::new(
            py,
            Prebuilt {
                inner: Mutex::new(Some(inner)),
            },
        )?;
        cls.call_method1("__new__", (cls, prebuilt))
    }

    /// The store key of this manager.
    #[getter]
    fn key(&self) -> &str {
        self.inner.key()
    }

    /// A valid token value (waits, GIL released, for the shared refresh when needed).
    fn token<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        // From the cache without releasing the GIL (a lock-free read).
        if let Some(token) = self.inner.cached() {
            return Ok(PyString::new(py, token.value().expose()));
        }
        let result = py.detach(|| self.inner.token_blocking().map(|token| token.into_arc()));
        match result {
            Ok(token) => Ok(PyString::new(py, token.value().expose())),
            Err(err) => Err(to_pyerr(&err)),
        }
    }

    /// The token with its type, expiry and generation.
    fn token_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let raw = match self.inner.cached() {
            Some(token) => token_tuple(py, &token)?,
            None => {
                let result =
                    py.detach(|| self.inner.token_blocking().map(|token| token.into_arc()));
                match result {
                    Ok(token) => token_tuple(py, &token)?,
                    Err(err) => return Err(to_pyerr(&err)),
                }
            }
        };
        python_part!(py, "_info")?.call1((raw,))
    }

    /// Like ``token()``, without ever blocking the event loop. Cancellable.
    fn token_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_token_async")?.call1((slf,))
    }

    /// Like ``token_info()``, without ever blocking the event loop. Cancellable.
    fn token_info_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_token_info_async")?.call1((slf,))
    }

    /// The cached value when it can be served without waiting, else `None`. Never blocks.
    #[pyo3(name = "_cached_token")]
    fn cached_token<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        self.inner
            .cached()
            .map(|token| PyString::new(py, token.value().expose()))
    }

    /// Like `_cached_token` but the `(value, token_type, expires_at_unix_s, generation)`
    /// tuple.
    #[pyo3(name = "_cached_token_info")]
    fn cached_token_info<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner
            .cached()
            .map(|token| token_tuple(py, &token))
            .transpose()
    }

    /// Starts getting a token on the background runtime; `callback(value, exc)` is called
    /// on the dispatcher thread when done (value is the token tuple when `info`).
    #[pyo3(name = "_token_start", signature = (callback, info=false))]
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

    /// Discards the cached token if it is still ``token`` (a value, a generation or a
    /// ``TokenInfo``). A late rejection of an older token never discards a newer one.
    fn invalidate(&self, py: Python<'_>, token: &Bound<'_, PyAny>) -> PyResult<bool> {
        if token.is_instance(python_part!(py, "TokenInfo")?)? {
            let generation: u64 = token.getattr("generation")?.extract()?;
            return Ok(self.inner.invalidate_generation(generation));
        }
        if token.is_instance_of::<PyBool>() {
            return Err(invalidate_type_error());
        }
        if token.is_instance_of::<PyInt>() {
            return Ok(self.inner.invalidate_generation(token.extract()?));
        }
        if let Ok(value) = token.cast::<PyString>() {
            return Ok(self.inner.invalidate_value(&value.to_cow()?));
        }
        Err(invalidate_type_error())
    }

    /// The header ``(name, value)`` that carries ``token`` (a ``TokenInfo``) on an API
    /// request, as this manager's configuration says: ``("Authorization", "Bearer …")``, a
    /// session's own header (``vmware-api-session-id``, with its prefix) or
    /// ``("Cookie", "NAME=…")``. ``None`` when the token travels only in the request body
    /// (``authorize_body``). The value contains the token: never log it.
    fn request_header<'py>(
        &self,
        py: Python<'py>,
        token: &Bound<'py, PyAny>,
    ) -> PyResult<Option<(String, Bound<'py, PyString>)>> {
        let (value, token_type) = token_info_parts(py, token)?;
        let header = self
            .inner
            .request_header(&value, &token_type)
            .map_err(|err| to_pyerr(&err))?;
        Ok(header.map(|(name, value)| (name, PyString::new(py, value.expose()))))
    }

    /// For a configuration that carries the token in request bodies (``"send": {"body":
    /// "{{session}}"}``, a SOAP ``SessionHeader``): ``body`` (``str`` or ``bytes``) with the
    /// placeholder replaced by the XML-escaped token of ``token`` (a ``TokenInfo``), as UTF-8
    /// ``bytes``. ``None`` when the token does not travel in bodies: send ``body`` as it is.
    /// The result contains the token: never log it.
    fn authorize_body<'py>(
        &self,
        py: Python<'py>,
        token: &Bound<'py, PyAny>,
        body: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let (value, _) = token_info_parts(py, token)?;
        if self.inner.authorizer().body_placeholder().is_none() {
            // Not rendered, so any body (binary too) goes as it is; its type is still checked.
            if body.is_instance_of::<PyString>() || body.extract::<PyBackedBytes>().is_ok() {
                return Ok(None);
            }
        }
        let mut holder = None;
        let text = crate::http::body_text(body, &mut holder)?;
        Ok(self
            .inner
            .authorize_body(&value, &text)
            .map(|rendered| crate::http::body_bytes(py, &rendered)))
    }

    /// Whether a response with ``status`` needs (a prefix of) its body read before
    /// ``judge_response`` can tell whether it rejects the token. Successful responses never
    /// do.
    fn needs_response_body(&self, status: u16) -> bool {
        self.inner.needs_response_body(status)
    }

    /// Judges the response to a request made with the token of ``generation``: ``True`` when
    /// it rejects that token by this configuration's rules (a Bearer 401 ``invalid_token``, a
    /// session's ``expired`` rules such as 500 with ``INVALID_SESSION`` in the body); the
    /// manager has then discarded exactly that token: get a token again and retry the request
    /// once. ``False`` otherwise (a sliding session's use is recorded, with the remaining
    /// lifetime a configured response header reports). ``headers``: a mapping or ``(name,
    /// value)`` pairs (the first 256 are read); ``body_prefix``: the first bytes of the body
    /// when ``needs_response_body(status)`` (at most 64 KiB are looked at).
    #[pyo3(signature = (generation, status, headers=None, body_prefix=None))]
    fn judge_response(
        &self,
        generation: u64,
        status: u16,
        headers: Option<&Bound<'_, PyAny>>,
        body_prefix: Option<PyBackedBytes>,
    ) -> PyResult<bool> {
        let pairs = crate::http::header_pairs(headers, "judge_response")?;
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let body: &[u8] = body_prefix.as_deref().unwrap_or_default();
        let body = &body[..body.len().min(MAX_INSPECTED_ERROR_BODY_BYTES)];
        Ok(self.inner.judge_response(generation, status, &pairs, body)
            == tokenlease::ResponseVerdict::Rejected)
    }

    /// The DPoP proof (RFC 9449) for an API request ``method`` ``url`` with ``token`` (a
    /// ``TokenInfo``) when that token is bound to this manager's key (``token_type``
    /// ``"DPoP"``, from a configuration with ``"dpop": true``): send it as the ``DPoP``
    /// header next to ``request_header``'s ``Authorization: DPoP …``. A new proof (new
    /// ``jti``, the server's latest nonce) on every call. ``None`` for other tokens. The
    /// proof is a credential: never log it.
    fn dpop_proof<'py>(
        &self,
        py: Python<'py>,
        token: &Bound<'py, PyAny>,
        method: &str,
        url: &str,
    ) -> PyResult<Option<Bound<'py, PyString>>> {
        let (value, token_type) = token_info_parts(py, token)?;
        let proof = self
            .inner
            .dpop_proof(method, url, &value, &token_type)
            .map_err(|err| to_pyerr(&err))?;
        Ok(proof.map(|proof| PyString::new(py, proof.expose())))
    }

    /// After an API request made with a token of ``token_type`` to ``url`` was answered with
    /// ``status`` and ``headers`` (a mapping or ``(name, value)`` pairs; the first 256 are
    /// read): keeps the ``DPoP-Nonce`` it carried, whatever the status, and returns whether
    /// to send the same request once more with a new proof (a DPoP-bound token's 401 that
    /// brought a new nonce). Core decides; the adapters only ask.
    #[pyo3(signature = (token_type, url, status, headers=None))]
    fn dpop_resend(
        &self,
        token_type: &str,
        url: &str,
        status: u16,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let pairs = crate::http::header_pairs(headers, "dpop_resend")?;
        let Ok(url) = reqwest::Url::parse(url) else {
            return Ok(false);
        };
        Ok(self
            .inner
            .dpop_resend(token_type, &url, status, &crate::http::header_map(&pairs)))
    }

    /// Keeps the ``DPoP-Nonce`` a response from ``url`` carried (``headers``: a mapping or
    /// ``(name, value)`` pairs; the first 256 are read), for the next proofs to that origin.
    /// ``True`` when the nonce is new: a 401 that brings one is worth sending once more,
    /// with a new proof. ``False`` without one, for a known one, or for a manager without
    /// DPoP.
    #[pyo3(signature = (url, headers=None))]
    fn remember_dpop_nonce(&self, url: &str, headers: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let pairs = crate::http::header_pairs(headers, "remember_dpop_nonce")?;
        let Ok(url) = reqwest::Url::parse(url) else {
            return Ok(false);
        };
        Ok(self
            .inner
            .remember_dpop_nonce(&url, &crate::http::header_map(&pairs)))
    }

    /// Asks the server about the current session (``session.info`` in the configuration,
    /// e.g. vSphere's ``GET /api/session``: whose session it is, whether it is alive) and
    /// returns the response body. Gets a session first when needed (GIL released).
    /// ``ConfigurationError`` without ``session.info``; ``TokenRejectedError`` when the server
    /// says the session ended (the manager has then discarded it).
    fn session_info(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.inner.session_info_blocking())
            .map_err(|err| to_pyerr(&err))
    }

    /// Like ``session_info()``, without blocking the event loop. Cancellable.
    fn session_info_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_session_info_async")?.call1((slf,))
    }

    /// Starts an interactive login (authorization code with PKCE): a ``LoginRequest``
    /// whose ``url`` the app opens in the user's browser. ``redirect_uri`` must be
    /// registered for the client (``http://127.0.0.1:PORT/callback`` for desktop apps and
    /// CLIs). ``ConfigurationError`` when the source has no interactive login.
    fn begin_login(&self, py: Python<'_>, redirect_uri: &str) -> PyResult<LoginRequest> {
        py.detach(|| self.inner.begin_login_blocking(redirect_uri))
            .map(LoginRequest::new)
            .map_err(|err| to_pyerr(&err))
    }

    /// Finishes an interactive login with the URL the browser was sent back to: checks its
    /// ``state``, redeems the code, stores the tokens and serves them from now on. Returns
    /// the new ``TokenInfo``. ``TokenCancelledError`` when the user said no,
    /// ``ProtocolError`` for a forged or foreign redirect.
    fn complete_login<'py>(
        &self,
        py: Python<'py>,
        request: PyRef<'py, LoginRequest>,
        redirect_url: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = request.inner.clone();
        let token = py
            .detach(|| {
                self.inner
                    .complete_login_blocking(&request, redirect_url)
                    .map(tokenlease::TokenRef::into_arc)
            })
            .map_err(|err| to_pyerr(&err))?;
        python_part!(py, "_info")?.call1((token_tuple(py, &token)?,))
    }

    /// Starts a device login (RFC 8628): a ``DeviceLogin`` with what to show the user;
    /// then wait with ``complete_device_login``.
    fn start_device_login(&self, py: Python<'_>) -> PyResult<DeviceLogin> {
        py.detach(|| self.inner.start_device_login_blocking())
            .map(DeviceLogin::new)
            .map_err(|err| to_pyerr(&err))
    }

    /// Waits (GIL released; Ctrl-C interrupts it) until the user approved the device login,
    /// then stores the tokens and serves them from now on. Returns the new ``TokenInfo``.
    /// ``TokenCancelledError`` when the user denied it or ``device.cancel()`` was called;
    /// ``LoginRequiredError`` when the code expired.
    fn complete_device_login<'py>(
        &self,
        py: Python<'py>,
        device: PyRef<'py, DeviceLogin>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let manager = self.inner.clone();
        let device = device.inner.clone();
        let token = wait_interruptibly(py, async move {
            manager
                .complete_device_login(&device)
                .await
                .map(tokenlease::TokenRef::into_arc)
        })?;
        python_part!(py, "_info")?.call1((token_tuple(py, &token)?,))
    }

    /// Installs the result of a new login the app did itself (e.g. through a platform SDK):
    /// a ``FetchedToken`` (or a mapping with its keys) with its refresh token. It replaces
    /// whatever the manager held. Returns the installed ``TokenInfo``.
    fn login<'py>(
        &self,
        py: Python<'py>,
        result: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let login = login_result(result)?;
        let token = py
            .detach(|| {
                self.inner
                    .login_blocking(login)
                    .map(tokenlease::TokenRef::into_arc)
            })
            .map_err(|err| to_pyerr(&err))?;
        python_part!(py, "_info")?.call1((token_tuple(py, &token)?,))
    }

    /// Installs a login result kept from before, unless memory or the store already hold a
    /// token obtained at or after ``issued_at`` (a datetime; with ``None`` any stored token
    /// counts as newer): then that one is served and ``result`` is ignored, so a rotated
    /// refresh token is never rolled back. Returns the ``TokenInfo`` served from now on.
    #[pyo3(signature = (result, issued_at=None))]
    fn seed<'py>(
        &self,
        py: Python<'py>,
        result: &Bound<'py, PyAny>,
        issued_at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let login = login_result(result)?;
        let issued_at = crate::login::issued_at(issued_at)?;
        let token = py
            .detach(|| {
                self.inner
                    .seed_blocking(login, issued_at)
                    .map(tokenlease::TokenRef::into_arc)
            })
            .map_err(|err| to_pyerr(&err))?;
        python_part!(py, "_info")?.call1((token_tuple(py, &token)?,))
    }

    /// Like ``begin_login()``, without blocking the event loop. Cancellable.
    fn begin_login_async<'py>(
        slf: &Bound<'py, Self>,
        redirect_uri: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_begin_login_async")?.call1((slf, redirect_uri))
    }

    /// Like ``complete_login()``, without blocking the event loop. Cancellable.
    fn complete_login_async<'py>(
        slf: &Bound<'py, Self>,
        request: &Bound<'py, PyAny>,
        redirect_url: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_complete_login_async")?.call1((slf, request, redirect_url))
    }

    /// Like ``start_device_login()``, without blocking the event loop. Cancellable.
    fn start_device_login_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_start_device_login_async")?.call1((slf,))
    }

    /// Like ``complete_device_login()``, without blocking the event loop. Cancelling the
    /// task stops the polling (as ``device.cancel()`` does, without cancelling ``device``).
    fn complete_device_login_async<'py>(
        slf: &Bound<'py, Self>,
        device: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_complete_device_login_async")?.call1((slf, device))
    }

    /// Like ``login()``, without blocking the event loop.
    fn login_async<'py>(
        slf: &Bound<'py, Self>,
        result: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_login_async")?.call1((slf, result))
    }

    /// Like ``seed()``, without blocking the event loop.
    #[pyo3(signature = (result, issued_at=None))]
    fn seed_async<'py>(
        slf: &Bound<'py, Self>,
        result: &Bound<'py, PyAny>,
        issued_at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_seed_async")?.call1((slf, result, issued_at))
    }

    /// Starts a login step on the background runtime; `callback(value, exc)` is called on
    /// the dispatcher thread when done (internal, for the asyncio forms). `step` is one of
    /// `begin_login`, `complete_login`, `start_device_login`, `complete_device_login`,
    /// `login`, `seed`, with that method's arguments, or `session_info` (for
    /// `session_info_async`).
    #[pyo3(name = "_login_start", signature = (callback, step, *args))]
    fn login_start(
        &self,
        callback: Py<PyAny>,
        step: &str,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<AsyncCall> {
        let manager = self.inner.clone();
        let arity = |wanted: usize| {
            if args.len() == wanted {
                Ok(())
            } else {
                Err(PyTypeError::new_err(format!(
                    "{step} takes {wanted} argument(s), got {}",
                    args.len()
                )))
            }
        };
        let token = |token: tokenlease::TokenRef| Outcome::Token(token.into_arc());
        let future: std::pin::Pin<
            Box<dyn std::future::Future<Output = tokenlease::Result<Outcome>> + Send>,
        > = match step {
            "begin_login" => {
                arity(1)?;
                let redirect_uri: String = args.get_item(0)?.extract()?;
                Box::pin(async move {
                    manager
                        .begin_login(&redirect_uri)
                        .await
                        .map(|request| Outcome::LoginRequest(Box::new(request)))
                })
            }
            "complete_login" => {
                arity(2)?;
                let request = args
                    .get_item(0)?
                    .cast::<LoginRequest>()?
                    .get()
                    .inner
                    .clone();
                let redirect_url: String = args.get_item(1)?.extract()?;
                Box::pin(async move {
                    manager
                        .complete_login(&request, &redirect_url)
                        .await
                        .map(token)
                })
            }
            "start_device_login" => {
                arity(0)?;
                Box::pin(async move {
                    manager
                        .start_device_login()
                        .await
                        .map(|device| Outcome::DeviceLogin(Box::new(device)))
                })
            }
            "complete_device_login" => {
                arity(1)?;
                let device = args.get_item(0)?.cast::<DeviceLogin>()?.get().inner.clone();
                Box::pin(async move { manager.complete_device_login(&device).await.map(token) })
            }
            "login" => {
                arity(1)?;
                let login = login_result(&args.get_item(0)?)?;
                Box::pin(async move { manager.login(login).await.map(token) })
            }
            "session_info" => {
                arity(0)?;
                Box::pin(async move { manager.session_info().await.map(Outcome::Text) })
            }
            "seed" => {
                arity(2)?;
                let login = login_result(&args.get_item(0)?)?;
                let issued_at = crate::login::issued_at(Some(&args.get_item(1)?))?;
                Box::pin(async move { manager.seed(login, issued_at).await.map(token) })
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown login step {other:?}"
                )));
            }
        };
        let task = tokenlease::runtime::handle().spawn(async move {
            let result = future.await;
            dispatch(Job::Finish { callback, result });
        });
        Ok(AsyncCall {
            abort: task.abort_handle(),
        })
    }

    /// Logs out: revokes at the source, clears memory and store.
    fn revoke(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.revoke_blocking())
            .map_err(|err| to_pyerr(&err))
    }

    /// State, expiry, generation, last error and counters.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        python_part!(py, "_status")?.call1((self.raw_status(py)?,))
    }

    /// Cancels background refreshes and drops the cached token; later calls raise
    /// ``ClosedError``.
    fn close(&self) {
        self.inner.close();
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.inner.close();
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_aenter")?.call1((slf,))
    }

    fn __aexit__<'py>(
        slf: &Bound<'py, Self>,
        _exc_type: &Bound<'py, PyAny>,
        _exc: &Bound<'py, PyAny>,
        _tb: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        python_part!(slf.py(), "_aexit")?.call1((slf,))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let key = PyString::new(py, self.inner.key()).repr()?;
        let state = PyString::new(py, self.inner.status().state.name()).repr()?;
        Ok(format!("Manager(key={key}, state={state})"))
    }
}

impl Manager {
    /// A snapshot as a dict (times as Unix seconds), for `_manager._status`.
    fn raw_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
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
        for (name, value) in status.counters.named() {
            counters.set_item(name, value)?;
        }
        dict.set_item("counters", counters)?;
        Ok(dict)
    }
}

/// The value and type of ``token``, which must be a ``TokenInfo``.
fn token_info_parts(
    py: Python<'_>,
    token: &Bound<'_, PyAny>,
) -> PyResult<(tokenlease::SecretString, String)> {
    if !token.is_instance(python_part!(py, "TokenInfo")?)? {
        return Err(PyTypeError::new_err(
            "takes a TokenInfo (from token_info() or token_info_async())",
        ));
    }
    crate::http::token_parts(token)
}

fn invalidate_type_error() -> PyErr {
    PyTypeError::new_err("invalidate() takes a token value, a generation or a TokenInfo")
}
