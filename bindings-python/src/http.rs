//! Core's HTTP decisions, for the `requests`/`httpx` adapters.

use pyo3::prelude::*;

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
