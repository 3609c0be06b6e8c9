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
//! The public, documented API is the package `tokenlease`, whose `Manager` is this module's
//! native `Manager` class (shown as `tokenlease.Manager`), so a cached `token()` is one
//! native call; the rest of the package is typed Python.
//!
//! Modules, by concept: `errors` (exceptions both ways), `token` (tokens and times as Python
//! values), `login` (user logins: `LoginRequest`, `DeviceLogin`, login results), `source`
//! and `store` (Python callbacks as core's blocking source and store),
//! `events` (events as dicts for the listener), `dispatch` (the completion thread,
//! `flush_events`, shutdown), `manager` (the public `Manager` class, with core's HTTP
//! decisions for the adapters: `request_header`, `authorize_body`, `judge_response`,
//! `dpop_proof`, `dpop_resend`, `remember_dpop_nonce`) and
//! `http` (their argument conversions).

mod dispatch;
mod errors;
mod events;
mod http;
mod login;
mod manager;
mod source;
mod store;
mod testing;
mod token;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_native")]
fn native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<manager::Manager>()?;
    module.add_class::<manager::AsyncCall>()?;
    module.add_class::<login::LoginRequest>()?;
    module.add_class::<login::DeviceLogin>()?;
    module.add_class::<testing::ManualClock>()?;
    module.add_function(wrap_pyfunction!(errors::_register_errors, module)?)?;
    module.add_function(wrap_pyfunction!(dispatch::flush_events, module)?)?;
    module.add_function(wrap_pyfunction!(dispatch::_shutdown, module)?)?;
    module.add_function(wrap_pyfunction!(http::is_token_rejected, module)?)?;
    module.add_function(wrap_pyfunction!(errors::error_kinds, module)?)?;
    module.add(
        "MAX_JUDGED_BODY_BYTES",
        tokenlease::http::MAX_INSPECTED_ERROR_BODY_BYTES,
    )?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
