//! `tokenlease::http::parse_token_response` on arbitrary bodies (RFC 6749 §5.1).
//!
//! Properties: no panic; an error is a `Protocol` error whose message is one of the fixed
//! templates (so it can never echo the body, the token, or the endpoint's credentials or
//! query); a success round-trips the body's fields; the JWT cross-check never lengthens a
//! lifetime and never yields a zero one.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenlease::http::{cross_check_jwt_expiry, parse_token_response};
use tokenlease::{ErrorKind, Lifetime, SecretString};

/// What `endpoint_name` shows of `URL`: no userinfo, query or fragment.
const SHOWN: &str = "https://idp.example/oauth/token";

fn url() -> &'static url::Url {
    static URL: OnceLock<url::Url> = OnceLock::new();
    URL.get_or_init(|| {
        url::Url::parse("https://fuzz-user:fuzz-pass@idp.example/oauth/token?tenant=fuzz-q#frag")
            .unwrap()
    })
}

const FIXED: [&str; 3] = [
    "empty access_token",
    "expires_in must be a positive number of seconds",
    "expires_in must be a number",
];

/// `token response is not valid JSON with an access_token (line N column M)`.
fn is_json_error(rest: &str) -> bool {
    let Some(inner) = rest
        .strip_prefix("token response is not valid JSON with an access_token (line ")
        .and_then(|r| r.strip_suffix(')'))
    else {
        return false;
    };
    let Some((line, column)) = inner.split_once(" column ") else {
        return false;
    };
    line.parse::<u64>().is_ok() && column.parse::<u64>().is_ok()
}

/// A field of the response by name (object) or by position (serde also accepts a
/// sequence for a struct: access_token, token_type, expires_in, refresh_token, scope).
fn field<'a>(json: &'a Value, name: &str, index: usize) -> Option<&'a Value> {
    match json {
        Value::Object(map) => map.get(name),
        Value::Array(items) => items.get(index),
        _ => None,
    }
}

fuzz_target!(|body: &[u8]| {
    // serde_json skips ignored (unknown) fields without validating their UTF-8, so the
    // oracle reads the body lossily; known fields must be valid UTF-8 in both.
    let json: Option<Value> = serde_json::from_str(&String::from_utf8_lossy(body)).ok();
    let token = json
        .as_ref()
        .and_then(|json| field(json, "access_token", 0))
        .and_then(Value::as_str);
    match parse_token_response(url(), body) {
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
            let message = err.message();
            let rest = message
                .strip_prefix(SHOWN)
                .and_then(|r| r.strip_prefix(": "))
                .unwrap_or_else(|| panic!("message does not start with the endpoint: {message:?}"));
            assert!(
                FIXED.contains(&rest) || is_json_error(rest),
                "unexpected message {message:?}"
            );
            let shown = err.to_string();
            for secret in ["fuzz-user", "fuzz-pass", "fuzz-q", "frag"] {
                assert!(
                    !shown.contains(secret),
                    "{shown:?} shows the URL's {secret}"
                );
            }
            if let Some(token) = token.filter(|t| t.len() >= 12) {
                assert!(!shown.contains(token), "error {shown:?} contains the token");
            }
        }
        Ok(fetched) => {
            let json = json
                .as_ref()
                .expect("a successful parse of a body serde_json::Value rejects");
            let token = token.expect("a successful parse without a string access_token");
            assert!(!token.is_empty());
            assert_eq!(fetched.value.expose(), token);
            let token_type = field(json, "token_type", 1).and_then(Value::as_str);
            assert_eq!(fetched.token_type, token_type.unwrap_or("Bearer"));
            let scopes: Vec<&str> = field(json, "scope", 4)
                .and_then(Value::as_str)
                .map(|s| s.split_whitespace().collect())
                .unwrap_or_default();
            assert_eq!(fetched.scopes, scopes);
            let refresh = field(json, "refresh_token", 3)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty());
            assert_eq!(fetched.refresh_token.as_ref().map(|t| t.expose()), refresh);
            let expected = match field(json, "expires_in", 2) {
                None | Some(Value::Null) => Lifetime::Unknown,
                Some(Value::Number(n)) => {
                    Lifetime::ExpiresIn(Duration::from_secs_f64(n.as_f64().unwrap()))
                }
                Some(Value::String(s)) => {
                    Lifetime::ExpiresIn(Duration::from_secs(s.trim().parse().unwrap()))
                }
                Some(other) => panic!("accepted expires_in {other:?}"),
            };
            assert_eq!(fetched.lifetime, expected);
            assert!(fetched.sent_at.is_none() && fetched.idle_timeout.is_none());

            // Debug never depends on the secret values.
            let mut other = fetched.clone();
            other.value = SecretString::new("other-value");
            other.refresh_token = other
                .refresh_token
                .map(|_| SecretString::new("other-refresh"));
            assert_eq!(
                format!("{fetched:?}"),
                format!("{other:?}"),
                "Debug shows a secret"
            );

            // JWT cross-check against a fixed server clock.
            let before = fetched.lifetime;
            let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            let checked = cross_check_jwt_expiry(fetched, Some(now));
            match (before, checked.lifetime) {
                (_, Lifetime::ExpiresIn(after)) if after.is_zero() => {
                    panic!("zero lifetime after the JWT cross-check")
                }
                (Lifetime::ExpiresIn(before), Lifetime::ExpiresIn(after)) => {
                    assert!(
                        after <= before,
                        "cross-check lengthened {before:?} to {after:?}"
                    )
                }
                (Lifetime::Unknown, Lifetime::Unknown | Lifetime::ExpiresIn(_)) => {}
                (before, after) => panic!("cross-check turned {before:?} into {after:?}"),
            }
        }
    }
});
