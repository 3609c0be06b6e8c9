//! User logins as Python values: `LoginRequest` (authorization code + PKCE) and `DeviceLogin`
//! (RFC 8628), the login results Python hands over (`FetchedToken`, a mapping or a string),
//! and the interruptible wait of a device login. The protocol and the install of the tokens
//! are core's `Manager::begin_login`, `complete_login`, `start_device_login`,
//! `complete_device_login`, `login` and `seed`.

use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;
use tokenlease::source::authorization::AuthorizationRequest;
use tokenlease::source::device::DeviceAuthorization;
use tokenlease::{Error, ErrorKind, FetchedToken};

use crate::errors::to_pyerr;
use crate::token::fetched_from_py;

/// An interactive login in progress (authorization code with PKCE), from
/// ``Manager.begin_login``: open ``url`` in the user's browser, then hand the URL the browser
/// is sent back to (at ``redirect_uri``) to ``Manager.complete_login``.
///
/// It holds the secret ``state`` and PKCE verifier; ``repr()`` shows neither (nor the URL,
/// which carries the state).
#[pyclass(frozen, module = "tokenlease", name = "LoginRequest")]
pub(crate) struct LoginRequest {
    pub(crate) inner: AuthorizationRequest,
}

impl LoginRequest {
    pub(crate) fn new(inner: AuthorizationRequest) -> Self {
        Self { inner }
    }
}

#[pymethods]
impl LoginRequest {
    /// The URL to open in the user's browser (it carries the ``state``: do not log it).
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    /// The redirect URI the request names (where the browser comes back).
    #[getter]
    fn redirect_uri(&self) -> &str {
        self.inner.redirect_uri()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let redirect_uri = PyString::new(py, self.inner.redirect_uri()).repr()?;
        Ok(format!("LoginRequest(redirect_uri={redirect_uri})"))
    }
}

/// A device login in progress (RFC 8628), from ``Manager.start_device_login``: show the
/// user ``verification_uri`` and ``user_code`` (or ``verification_uri_complete`` as a QR
/// code), then wait with ``Manager.complete_device_login``. ``cancel()`` (from any thread)
/// ends that wait with ``TokenCancelledError``.
///
/// It holds the secret device code; ``repr()`` never shows it.
#[pyclass(frozen, module = "tokenlease", name = "DeviceLogin")]
pub(crate) struct DeviceLogin {
    pub(crate) inner: DeviceAuthorization,
}

impl DeviceLogin {
    pub(crate) fn new(inner: DeviceAuthorization) -> Self {
        Self { inner }
    }
}

#[pymethods]
impl DeviceLogin {
    /// The code the user enters at ``verification_uri``.
    #[getter]
    fn user_code(&self) -> &str {
        self.inner.user_code()
    }

    /// Where the user goes to approve (on a phone or computer).
    #[getter]
    fn verification_uri(&self) -> &str {
        self.inner.verification_uri()
    }

    /// The verification URI with the user code in it (for a QR code), or ``None``.
    #[getter]
    fn verification_uri_complete(&self) -> Option<&str> {
        self.inner.verification_uri_complete()
    }

    /// Seconds the user has to approve, from ``start_device_login``.
    #[getter]
    fn expires_in(&self) -> f64 {
        self.inner.expires_in().as_secs_f64()
    }

    /// The polling interval the server asked for, in seconds.
    #[getter]
    fn interval(&self) -> f64 {
        self.inner.interval().as_secs_f64()
    }

    /// Whether ``cancel()`` was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// Stops the login: a ``complete_device_login`` waiting on it (or started later) raises
    /// ``TokenCancelledError``. Safe from any thread; never blocks.
    fn cancel(&self) {
        self.inner.cancel();
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let user_code = PyString::new(py, self.inner.user_code()).repr()?;
        let uri = PyString::new(py, self.inner.verification_uri()).repr()?;
        Ok(format!(
            "DeviceLogin(user_code={user_code}, verification_uri={uri}, expires_in={:?}, \
             interval={:?})",
            self.inner.expires_in().as_secs_f64(),
            self.inner.interval().as_secs_f64()
        ))
    }
}

/// A login result from Python: what a source's ``fetch()`` may return.
pub(crate) fn login_result(value: &Bound<'_, PyAny>) -> PyResult<FetchedToken> {
    fetched_from_py(value, "a login result")
}

/// ``issued_at`` of ``seed``: ``None`` or a ``datetime`` (aware; a naive one is local time).
pub(crate) fn issued_at(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<SystemTime>> {
    let Some(value) = value.filter(|value| !value.is_none()) else {
        return Ok(None);
    };
    let datetime = value.py().import("datetime")?.getattr("datetime")?;
    if !value.is_instance(&datetime)? {
        return Err(PyTypeError::new_err("issued_at must be a datetime or None"));
    }
    let seconds: f64 = value.call_method0("timestamp")?.extract()?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|since| UNIX_EPOCH.checked_add(since))
        .map(Some)
        .ok_or_else(|| PyValueError::new_err("issued_at must be after the Unix epoch"))
}

/// Runs `future` on core's background runtime and waits for it with the GIL released,
/// checking for signals every 100 ms: Ctrl-C (``KeyboardInterrupt``) stops the wait and
/// drops the future (a device login stops polling). Refused, as core's blocking calls are,
/// on tokenlease's own threads (inside a source or store callback).
pub(crate) fn wait_interruptibly<T: Send + 'static>(
    py: Python<'_>,
    future: impl Future<Output = tokenlease::Result<T>> + Send + 'static,
) -> PyResult<T> {
    if tokenlease::runtime::on_background_runtime() {
        return Err(to_pyerr(&Error::new(
            ErrorKind::Usage,
            "a blocking tokenlease call was made from the tokenlease background runtime \
             (inside a source, store or listener callback); use the async API there",
        )));
    }
    let (sender, receiver) = mpsc::channel();
    let task = tokenlease::runtime::handle().spawn(async move {
        let _ = sender.send(future.await);
    });
    let mut receiver = receiver;
    loop {
        // The receiver goes into the GIL-free closure and comes back (it is not `Sync`).
        let (received, back) = py.detach(move || {
            let received = receiver.recv_timeout(Duration::from_millis(100));
            (received, receiver)
        });
        receiver = back;
        match received {
            Ok(result) => return result.map_err(|err| to_pyerr(&err)),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(interrupted) = py.check_signals() {
                    task.abort();
                    return Err(interrupted);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(to_pyerr(&Error::new(
                    ErrorKind::Internal,
                    "the login ended without a result",
                )));
            }
        }
    }
}
