//! How a token travels on an API request and how a response that rejects it is
//! recognised: the one decision every caller of a protected API needs, whatever made the
//! token (OAuth2 bearer tokens, session ids in a header of the API's choosing).

use std::fmt;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::http::is_token_rejected;
use crate::lifecycle::token::Token;
use crate::secret::SecretString;

/// How the token is attached to API requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendSpec {
    /// Header name, e.g. `Authorization` or `vmware-api-session-id`.
    pub header: String,
    /// Prefix before the token, e.g. `"Bearer "` or `"ZSession "` (default none).
    #[serde(default)]
    pub prefix: String,
}

/// Which responses mean "the session expired or was rejected".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiredSpec {
    /// Statuses that can mean expiry (default `[401]`).
    #[serde(default = "default_expired_statuses")]
    pub statuses: Vec<u16>,
    /// When non-empty, a status match also needs the body to contain one of these
    /// (e.g. `"Token Expired"`, `"INVALID_SESSION"`); a body match alone also counts
    /// for APIs that report expiry with another status (SOAP faults with 500).
    #[serde(default)]
    pub body_contains: Vec<String>,
    /// A response header whose presence means expiry.
    #[serde(default)]
    pub header: Option<String>,
}

fn default_expired_statuses() -> Vec<u16> {
    vec![401]
}

impl Default for ExpiredSpec {
    fn default() -> Self {
        Self {
            statuses: default_expired_statuses(),
            body_contains: Vec::new(),
            header: None,
        }
    }
}

/// How a token is attached to a request and how a rejection of it is recognised.
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// The header that carries a token with this value and type (marked sensitive).
    fn header(&self, value: &SecretString, token_type: &str) -> Result<(HeaderName, HeaderValue)>;
    /// Adds the token to the request headers.
    fn authorize(&self, token: &Token, headers: &mut HeaderMap) -> Result<()> {
        let (name, value) = self.header(token.value(), token.token_type())?;
        headers.insert(name, value);
        Ok(())
    }
    /// Whether a response with this status needs its body read to be classified. Asked
    /// for error statuses only: a successful response is always accepted, its body left
    /// unread for the application.
    fn may_be_rejection(&self, status: StatusCode) -> bool;
    /// Whether the response means the token was rejected (expired, revoked, unknown).
    /// `body` is at most the first [`MAX_INSPECTED_ERROR_BODY_BYTES`](crate::http::MAX_INSPECTED_ERROR_BODY_BYTES) of the body.
    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool;
}

/// A header value that carries a secret: never printed by `http`'s Debug, never indexed.
fn sensitive_value(text: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(text)
        .map_err(|_| Error::new(ErrorKind::Protocol, "the token is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// OAuth2 bearer tokens (RFC 6750): `Authorization: Bearer <token>`; a 401 with
/// `error="invalid_token"` (or a bare Bearer challenge) is a rejection.
#[derive(Debug, Clone, Copy, Default)]
pub struct BearerAuthorizer;

impl Authorizer for BearerAuthorizer {
    fn header(&self, value: &SecretString, token_type: &str) -> Result<(HeaderName, HeaderValue)> {
        let scheme = if token_type.eq_ignore_ascii_case("bearer") || token_type.is_empty() {
            "Bearer"
        } else {
            token_type
        };
        Ok((
            AUTHORIZATION,
            sensitive_value(&format!("{scheme} {}", value.expose()))?,
        ))
    }

    fn may_be_rejection(&self, status: StatusCode) -> bool {
        status == StatusCode::UNAUTHORIZED
    }

    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, _body: &[u8]) -> bool {
        is_token_rejected(status, headers)
    }
}

/// A token in a configured header (`vmware-api-session-id: x`, `Authorization: ZSession
/// x`), with configured expiry responses.
#[derive(Debug, Clone)]
pub struct HeaderAuthorizer {
    header: HeaderName,
    prefix: String,
    expired: ExpiredSpec,
}

impl HeaderAuthorizer {
    /// From the `send` and `expired` parts of a spec.
    pub fn new(send: &SendSpec, expired: ExpiredSpec) -> Result<Self> {
        let header = HeaderName::from_bytes(send.header.as_bytes()).map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                format!("send.header: {:?} is not a header name", send.header),
            )
        })?;
        Ok(Self {
            header,
            prefix: send.prefix.clone(),
            expired,
        })
    }

    /// The header carrying `token`.
    pub fn header_for(&self, token: &Token) -> Result<(HeaderName, HeaderValue)> {
        self.header(token.value(), token.token_type())
    }

    /// Whether a response means the token expired (see [`ExpiredSpec`]).
    pub fn is_expired(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        let expired = &self.expired;
        if let Some(header) = &expired.header {
            if headers.contains_key(header.as_str()) {
                return true;
            }
        }
        let body_matches = || {
            let text = String::from_utf8_lossy(body);
            expired
                .body_contains
                .iter()
                .any(|needle| text.contains(needle.as_str()))
        };
        if expired.statuses.contains(&status.as_u16()) {
            return expired.body_contains.is_empty() || body_matches();
        }
        !status.is_success() && !expired.body_contains.is_empty() && body_matches()
    }
}

impl Authorizer for HeaderAuthorizer {
    fn header(&self, value: &SecretString, _token_type: &str) -> Result<(HeaderName, HeaderValue)> {
        Ok((
            self.header.clone(),
            sensitive_value(&format!("{}{}", self.prefix, value.expose()))?,
        ))
    }

    fn may_be_rejection(&self, status: StatusCode) -> bool {
        !status.is_success()
    }

    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        self.is_expired(status, headers, body)
    }
}
