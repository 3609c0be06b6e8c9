//! `tokenlease::session::SessionLogin::parse_login` on arbitrary login responses, for
//! three fixed specs built once.
//!
//! Input layout: 1 byte picks the spec; then header lines `name: value` up to the first
//! empty line (invalid names or values are skipped); the rest is the body.
//!
//! Properties: no panic; an error is a `Protocol` error whose message is one of the
//! finitely many the spec allows (so it can never echo the token, the body or a header);
//! a success carries exactly the token found where the spec says, the send prefix as
//! token type, and a lifetime no longer than the spec's documented bounds.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenlease::session::{SessionLogin, SessionSpec, ValueLocation};
use tokenlease::{ErrorKind, Lifetime, SecretString};

const LOGIN_URL: &str = "http://127.0.0.1:1/login";

/// (spec JSON, sliding, upper bound of the lifetime / idle timeout in seconds)
const SPECS: [(&str, bool, u64); 3] = [
    // Zuora-like (as in core/src/session.rs tests): sliding, idle timeout from a header,
    // absolute RFC 3339 deadline in the body.
    (
        r#"{
        "login": {"url": "http://127.0.0.1:1/login", "json": {"user": "{{username}}", "pass": "{{password}}"}},
        "token": {"json_pointer": "/session/id"},
        "expires_in": {"header": "X-Token-Expires-In"},
        "lifetime_s": 900,
        "sliding": true,
        "absolute_deadline": {"json_pointer": "/session/absolute_expires_at"},
        "send": {"header": "Authorization", "prefix": "ZSession "},
        "expired": {"statuses": [401], "body_contains": ["Token Expired", "INVALID_SESSION"]}
    }"#,
        true,
        900,
    ),
    // Token in a header, lifetime from its JWT exp, absolute timeout.
    (
        r#"{
        "login": {"url": "http://127.0.0.1:1/login", "form": {"u": "{{username}}", "p": "{{password}}"}},
        "token": {"header": "X-Session-Token"},
        "expires_in_from_jwt": true,
        "absolute_timeout_s": 3600,
        "send": {"header": "X-Session-Token"}
    }"#,
        false,
        3600,
    ),
    // Lifetime in the body, a documented lifetime, an absolute deadline in a header.
    (
        r#"{
        "login": {"url": "http://127.0.0.1:1/login", "json": {"u": "{{username}}"}},
        "token": {"json_pointer": "/token"},
        "expires_in": {"json_pointer": "/expires_in"},
        "lifetime_s": 600,
        "absolute_deadline": {"header": "X-Session-Deadline"},
        "send": {"header": "Authorization", "prefix": "Bearer "}
    }"#,
        false,
        600,
    ),
];

struct Fixture {
    login: SessionLogin,
    spec: SessionSpec,
    sliding: bool,
    bound: Duration,
    messages: Vec<String>,
}

fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        SPECS
            .iter()
            .map(|&(json, sliding, bound)| {
                let spec: SessionSpec = serde_json::from_str(json).unwrap();
                let credentials: BTreeMap<String, SecretString> = [
                    ("username".to_owned(), SecretString::from("alice")),
                    ("password".to_owned(), SecretString::from("pw-secret")),
                ]
                .into_iter()
                .collect();
                let login = SessionLogin::new(spec.clone(), credentials).unwrap();
                let mut messages = vec![
                    format!("no token where the spec says ({:?})", spec.token),
                    "lifetime must be positive".to_owned(),
                    "the token is not a JWT with exp".to_owned(),
                ];
                if let Some(location) = &spec.expires_in {
                    messages.push(format!("no lifetime at {location:?}"));
                    messages.push(format!("lifetime at {location:?} is not a number"));
                }
                if let Some(location) = &spec.absolute_deadline {
                    messages.push(format!("no absolute deadline at {location:?}"));
                    messages.push(format!("absolute deadline at {location:?} is not RFC 3339"));
                }
                Fixture {
                    login,
                    spec,
                    sliding,
                    bound: Duration::from_secs(bound),
                    messages,
                }
            })
            .collect()
    })
}

fn url() -> &'static url::Url {
    static URL: OnceLock<url::Url> = OnceLock::new();
    URL.get_or_init(|| url::Url::parse(LOGIN_URL).unwrap())
}

/// The token where the spec says, extracted independently of the code under test.
fn expected_token(location: &ValueLocation, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    match location {
        ValueLocation::Header(name) => headers
            .get(name.as_str())?
            .to_str()
            .ok()
            .map(|v| v.trim().to_owned()),
        ValueLocation::JsonPointer(pointer) => {
            match serde_json::from_slice::<Value>(body)
                .ok()?
                .pointer(pointer)?
            {
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            }
        }
    }
    .filter(|token| !token.is_empty())
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let fixture = &fixtures()[usize::from(pick) % SPECS.len()];
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&rest[..0], rest),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }

    let token = expected_token(&fixture.spec.token, &headers, body);
    match fixture.login.parse_login(url(), &headers, body) {
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
            let message = err.message();
            let rest = message
                .strip_prefix(&format!("session login at {LOGIN_URL}: "))
                .unwrap_or_else(|| panic!("unexpected message {message:?}"));
            assert!(
                fixture.messages.iter().any(|m| m == rest),
                "unexpected message {message:?}"
            );
        }
        Ok(fetched) => {
            let token = token.expect("a login without a token succeeded");
            assert_eq!(fetched.value.expose(), token);
            assert_eq!(fetched.token_type, fixture.spec.send.prefix.trim());
            assert!(fetched.refresh_token.is_none() && fetched.scopes.is_empty());
            if fixture.sliding {
                let idle = fetched
                    .idle_timeout
                    .expect("sliding session without idle timeout");
                assert!(!idle.is_zero() || fixture.spec.expires_in.is_none());
                assert!(idle <= fixture.bound, "idle timeout {idle:?}");
            } else {
                assert_eq!(fetched.idle_timeout, None);
                match fetched.lifetime {
                    Lifetime::ExpiresIn(lifetime) => {
                        assert!(lifetime <= fixture.bound, "lifetime {lifetime:?}")
                    }
                    other => panic!("lifetime {other:?}"),
                }
            }
            let mut other = fetched.clone();
            other.value = SecretString::new("other-value");
            assert_eq!(
                format!("{fetched:?}"),
                format!("{other:?}"),
                "Debug shows the token"
            );
        }
    }
});
