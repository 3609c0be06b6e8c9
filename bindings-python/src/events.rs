//! Events: core events as dicts for the Python listener (the `tokenlease` package turns them
//! into log records and calls the user's listener).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokenlease::{Event, EventListener, RefreshReason};

use crate::dispatch::attach_unless_stopped;
use crate::token::unix_seconds;

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

pub(crate) struct PyListener {
    pub(crate) callback: Arc<Py<PyAny>>,
}

impl EventListener for PyListener {
    fn on_event(&self, key: &str, event: &Event) {
        // Core calls listeners on its event thread, never on the refresh thread, so taking
        // the GIL here cannot stall a refresh; core's bounded queue absorbs a slow callback.
        attach_unless_stopped(|py| {
            let result =
                event_dict(py, event).and_then(|dict| self.callback.bind(py).call1((key, dict)));
            if let Err(err) = result {
                err.write_unraisable(py, Some(self.callback.bind(py)));
            }
        });
    }
}
