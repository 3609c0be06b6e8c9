//! The dispatcher thread: completions of `token_async` and the asyncio login calls,
//! `flush_events` and the stop flag set at interpreter exit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyString;
use tokenlease::source::authorization::AuthorizationRequest;
use tokenlease::source::device::DeviceAuthorization;
use tokenlease::Token;

use crate::errors::error_instance;
use crate::login::{DeviceLogin, LoginRequest};
use crate::token::token_tuple;

pub(crate) enum Job {
    Complete {
        callback: Py<PyAny>,
        result: tokenlease::Result<Arc<Token>>,
        info: bool,
    },
    /// A login step of an asyncio call: `callback(value, exc)` with the value as Python sees it.
    Finish {
        callback: Py<PyAny>,
        result: tokenlease::Result<Outcome>,
    },
    Flush(mpsc::Sender<()>),
}

/// What a login step (or `session_info`) gives Python.
pub(crate) enum Outcome {
    /// A token, as the tuple of `token::token_tuple`.
    Token(Arc<Token>),
    /// A `LoginRequest`.
    LoginRequest(Box<AuthorizationRequest>),
    /// A `DeviceLogin`.
    DeviceLogin(Box<DeviceAuthorization>),
    /// A `str` (the body of `session_info`).
    Text(String),
}

impl Outcome {
    fn into_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        match self {
            Outcome::Token(token) => token_tuple(py, &token).map(Bound::into_any),
            Outcome::LoginRequest(request) => {
                Bound::new(py, LoginRequest::new(*request)).map(Bound::into_any)
            }
            Outcome::DeviceLogin(device) => {
                Bound::new(py, DeviceLogin::new(*device)).map(Bound::into_any)
            }
            Outcome::Text(text) => Ok(PyString::new(py, &text).into_any()),
        }
    }
}

/// Set at interpreter exit (`_shutdown`, an `atexit` handler): from then on no thread of
/// this binding takes the GIL.
static STOPPED: AtomicBool = AtomicBool::new(false);
/// Threads Python did not start (core's event thread and blocking pool, the dispatcher)
/// that are taking or holding the GIL through [`attach_unless_stopped`].
static ATTACHED: AtomicUsize = AtomicUsize::new(0);
/// How long `_shutdown` waits for those threads.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Runs `f` with the GIL on a thread Python did not start, or returns `None` without
/// touching Python once the interpreter is shutting down.
///
/// CPython 3.11-3.13 end a thread that waits for the GIL after finalization has begun
/// (`pthread_exit`), which aborts the process when it unwinds through Rust frames. So
/// `_shutdown` sets `STOPPED` and then waits, GIL released, until no thread is inside
/// here: a thread that entered before sees its call through, one that enters after sees
/// `STOPPED` (both use `SeqCst`, so one of the two always sees the other).
pub(crate) fn attach_unless_stopped<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            ATTACHED.fetch_sub(1, Ordering::SeqCst);
        }
    }
    ATTACHED.fetch_add(1, Ordering::SeqCst);
    let _leave = Leave;
    if STOPPED.load(Ordering::SeqCst) {
        return None;
    }
    Some(Python::attach(f))
}

/// Whether the interpreter is shutting down (`_shutdown` was called).
pub(crate) fn stopped() -> bool {
    STOPPED.load(Ordering::SeqCst)
}

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

pub(crate) fn dispatch(job: Job) {
    if stopped() {
        return;
    }
    let _ = dispatcher().lock().send(job);
}

fn dispatch_loop(receiver: &mpsc::Receiver<Job>) {
    while let Ok(first) = receiver.recv() {
        let mut first = Some(first);
        attach_unless_stopped(|py| {
            // Everything queued meanwhile is handled under this one GIL acquisition.
            let mut next = first.take();
            while let Some(job) = next.take() {
                run_job(py, job);
                next = receiver.try_recv().ok();
            }
        });
        if let Some(job) = first {
            // The interpreter is shutting down: drop jobs without touching Python.
            std::mem::forget(job);
        }
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
        Job::Finish { callback, result } => {
            let args = match result {
                Ok(outcome) => outcome
                    .into_py(py)
                    .map(|value| (value, py.None().into_bound(py))),
                Err(err) => Ok((py.None().into_bound(py), error_instance(py, &err))),
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

/// Waits (GIL released) until every event (core's event thread) and completion (this
/// binding's dispatcher) queued so far was delivered.
#[pyfunction]
pub(crate) fn flush_events(py: Python<'_>) {
    let (sender, receiver) = mpsc::channel();
    dispatch(Job::Flush(sender));
    py.detach(move || {
        tokenlease::events::flush(Duration::from_secs(10));
        let _ = receiver.recv_timeout(Duration::from_secs(10));
    });
}

/// Stops delivering events and calling Python from other threads (called at interpreter
/// exit), then waits (GIL released, at most `SHUTDOWN_WAIT`) for the calls under way.
#[pyfunction]
pub(crate) fn _shutdown(py: Python<'_>) {
    STOPPED.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while ATTACHED.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
