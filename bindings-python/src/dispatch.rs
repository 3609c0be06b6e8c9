//! The dispatcher thread: `token_async` completions, `flush_events` and the stop flag set at
//! interpreter exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyString;
use tokenlease::Token;

use crate::errors::error_instance;
use crate::token::token_tuple;

pub(crate) enum Job {
    Complete {
        callback: Py<PyAny>,
        result: tokenlease::Result<Arc<Token>>,
        info: bool,
    },
    Flush(mpsc::Sender<()>),
}

pub(crate) static STOPPED: AtomicBool = AtomicBool::new(false);

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

/// Stops delivering events (called at interpreter exit).
#[pyfunction]
pub(crate) fn _shutdown() {
    STOPPED.store(true, Ordering::SeqCst);
}
