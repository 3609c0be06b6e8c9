//! Core's HTTP decisions, for the `requests`/`httpx` adapters: the argument conversions of
//! `Manager.request_header`, `authorize_body`, `judge_response` and `remember_dpop_nonce`
//! (the methods themselves are in `manager`), and the bearer-only `is_token_rejected`.

use std::borrow::Cow;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyString};
use tokenlease::{ErrorKind, SecretString};

use crate::errors::to_pyerr;

/// Core's decision whether a resource server's answer rejects the token (401 with a Bearer
/// `invalid_token` challenge, or a bare Bearer 401).
#[pyfunction]
#[pyo3(signature = (status, www_authenticate=None))]
pub(crate) fn is_token_rejected(status: u16, www_authenticate: Option<&str>) -> bool {
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

/// The value and type of a `TokenInfo` (the caller checked its class).
pub(crate) fn token_parts(token: &Bound<'_, PyAny>) -> PyResult<(SecretString, String)> {
    let value: String = token.getattr("value")?.extract()?;
    let token_type: String = token.getattr("token_type")?.extract()?;
    Ok((SecretString::new(value), token_type))
}

/// A request body (`str`, `bytes` or `bytearray`) as text for `authorize_body`; a body that
/// is not UTF-8 cannot carry a token (`UsageError`).
pub(crate) fn body_text<'a>(
    body: &'a Bound<'_, PyAny>,
    bytes: &'a mut Option<PyBackedBytes>,
) -> PyResult<Cow<'a, str>> {
    if let Ok(text) = body.cast::<PyString>() {
        return text.to_cow();
    }
    let Ok(backed) = body.extract::<PyBackedBytes>() else {
        return Err(PyTypeError::new_err(
            "authorize_body() takes the request body as str, bytes or bytearray",
        ));
    };
    let backed = bytes.insert(backed);
    std::str::from_utf8(backed)
        .map(Cow::Borrowed)
        .map_err(|err| {
            to_pyerr(&tokenlease::Error::new(
                ErrorKind::Usage,
                format!(
                    "this configuration places the token in the request body, but the body is not \
                 UTF-8 text (byte {})",
                    err.valid_up_to()
                ),
            ))
        })
}

/// The rendered body as `bytes` (it contains the token).
pub(crate) fn body_bytes<'py>(py: Python<'py>, rendered: &SecretString) -> Bound<'py, PyBytes> {
    PyBytes::new(py, rendered.expose().as_bytes())
}

/// Response headers for `judge_response` and `remember_dpop_nonce`: a mapping (its `items()`) or an iterable of
/// `(name, value)` pairs; only the first [`tokenlease::MAX_JUDGED_HEADERS`] are read (core
/// looks at no more).
pub(crate) fn header_pairs(
    headers: Option<&Bound<'_, PyAny>>,
    function: &str,
) -> PyResult<Vec<(String, String)>> {
    let Some(headers) = headers else {
        return Ok(Vec::new());
    };
    let items = if headers.hasattr("items")? {
        headers.call_method0("items")?
    } else {
        headers.clone()
    };
    let mut pairs = Vec::new();
    for item in items.try_iter()?.take(tokenlease::MAX_JUDGED_HEADERS) {
        let (name, value): (String, String) = item?.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{function}() takes headers as (name, value) str pairs"
            ))
        })?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Header pairs as a header map; malformed names and values are skipped (as core's
/// `judge_response` does).
pub(crate) fn header_map(pairs: &[(String, String)]) -> reqwest::header::HeaderMap {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}
