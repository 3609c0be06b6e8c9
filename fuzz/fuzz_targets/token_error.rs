//! `tokenlease::http::token_endpoint_error` on arbitrary status / Retry-After / body.
//!
//! Input layout: 2 bytes status (mapped into 100..=999), 1 byte n, n bytes Retry-After
//! value, the rest is the body.
//!
//! Properties: no panic; the message is `<endpoint> answered <status>` optionally followed
//! by ` (<code>)` where the code is at most 64 printable ASCII characters (so an arbitrary
//! body, or the endpoint's credentials and query, never reach the message); Retry-After is
//! capped at one hour; the documented RFC 6749 §5.2 mapping holds.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use tokenlease::http::token_endpoint_error;
use tokenlease::ErrorKind;

const SHOWN: &str = "https://idp.example/oauth/token";

fn url() -> &'static url::Url {
    static URL: OnceLock<url::Url> = OnceLock::new();
    URL.get_or_init(|| {
        url::Url::parse("https://fuzz-user:fuzz-pass@idp.example/oauth/token?tenant=fuzz-q")
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 900;
    let status = StatusCode::from_u16(status).unwrap();
    let n = usize::from(data[2]).min(data.len() - 3);
    let (retry, body) = data[3..].split_at(n);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(retry) {
        headers.insert(http::header::RETRY_AFTER, value);
    }

    let err = token_endpoint_error(url(), status, &headers, body);
    let message = err.message();
    let head = format!("{SHOWN} answered {}", status.as_u16());
    let rest = message
        .strip_prefix(&head)
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    let code = if rest.is_empty() {
        None
    } else {
        let code = rest
            .strip_prefix(" (")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected message {message:?}"));
        // An empty `"error": ""` is shown as ` ()` (cosmetic, reported; not asserted).
        assert!(
            code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic()),
            "unfiltered code in {message:?}"
        );
        Some(code)
    };
    let shown = err.to_string();
    for secret in ["fuzz-user", "fuzz-pass", "fuzz-q"] {
        assert!(
            !shown.contains(secret) || code.is_some_and(|c| c.contains(secret)),
            "{shown:?} shows the URL's {secret}"
        );
    }

    if let Some(after) = err.retry_after() {
        assert!(after <= Duration::from_secs(3600), "{after:?}");
        let text = std::str::from_utf8(retry).unwrap().trim();
        let asked: u64 = text.parse().unwrap();
        assert_eq!(after, Duration::from_secs(asked.min(3600)));
    }

    let expected = match code {
        Some("invalid_client") => ErrorKind::InvalidCredentials,
        Some("invalid_grant") => ErrorKind::InvalidGrant,
        Some(
            "invalid_scope" | "invalid_request" | "unauthorized_client" | "unsupported_grant_type",
        ) => ErrorKind::Configuration,
        Some("temporarily_unavailable" | "server_error") => ErrorKind::Transient,
        Some("slow_down") => ErrorKind::RateLimited,
        _ if status == StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited,
        _ if status.is_server_error() => ErrorKind::Transient,
        _ if status == StatusCode::UNAUTHORIZED => ErrorKind::InvalidCredentials,
        _ => ErrorKind::Protocol,
    };
    assert_eq!(err.kind(), expected, "{message:?}");
});
