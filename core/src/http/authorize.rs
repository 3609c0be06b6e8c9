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
    /// Header name, e.g. `Authorization` or `vmware-api-session-id` (or give `cookie`).
    #[serde(default)]
    pub header: String,
    /// Send the token as this cookie instead (`Cookie: NAME=token`), e.g. a session a
    /// web login set with `Set-Cookie`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Put the token into the request body where this placeholder stands (XML-escaped),
    /// e.g. `"{{session}}"` inside a SOAP `SessionHeader`; a retried request is rendered
    /// again with the new token. Alone or with a header or cookie.
    #[serde(default)]
    pub body: Option<String>,
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
    /// The header that carries a token with this value and type (marked sensitive);
    /// `None` when the token travels only in the body.
    fn header(
        &self,
        value: &SecretString,
        token_type: &str,
    ) -> Result<Option<(HeaderName, HeaderValue)>>;
    /// Adds the token to the request headers.
    fn authorize(&self, token: &Token, headers: &mut HeaderMap) -> Result<()> {
        if let Some((name, value)) = self.header(token.value(), token.token_type())? {
            headers.insert(name, value);
        }
        Ok(())
    }
    /// The placeholder request bodies carry for the token, when it travels in the body.
    fn body_placeholder(&self) -> Option<&str> {
        None
    }
    /// Whether a response with this status needs its body read to be classified. Asked
    /// for error statuses only: a successful response is always accepted, its body left
    /// unread for the application.
    fn may_be_rejection(&self, status: StatusCode) -> bool;
    /// Whether the response means the token was rejected (expired, revoked, unknown).
    /// `body` is at most the first [`MAX_INSPECTED_ERROR_BODY_BYTES`](crate::http::MAX_INSPECTED_ERROR_BODY_BYTES) of the body.
    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool;
    /// The remaining lifetime an accepted response reports for the token (a header such
    /// as `X-Token-Expires-In` on every API response); `None` by default.
    fn reported_lifetime(&self, headers: &HeaderMap) -> Option<std::time::Duration> {
        let _ = headers;
        None
    }
}

/// `body` with every `placeholder` replaced by the XML-escaped token (`&`, `<`, `>`, `"`,
/// `'`), in a buffer wiped on drop.
pub fn place_token_in_body(
    body: &str,
    placeholder: &str,
    value: &SecretString,
) -> zeroize::Zeroizing<String> {
    let mut escaped = zeroize::Zeroizing::new(String::with_capacity(value.expose().len()));
    push_xml_escaped(&mut escaped, value.expose());
    zeroize::Zeroizing::new(body.replace(placeholder, &escaped))
}

/// Appends `text` XML-escaped (`&`, `<`, `>`, `"`, `'`): a value can never add an element or
/// attribute.
pub(crate) fn push_xml_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
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
    fn header(
        &self,
        value: &SecretString,
        token_type: &str,
    ) -> Result<Option<(HeaderName, HeaderValue)>> {
        let scheme = if token_type.eq_ignore_ascii_case("bearer") || token_type.is_empty() {
            "Bearer"
        } else {
            token_type
        };
        Ok(Some((
            AUTHORIZATION,
            sensitive_value(&format!("{scheme} {}", value.expose()))?,
        )))
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
    /// `None`: the token travels only in the body.
    header: Option<HeaderName>,
    /// `Some(name)`: the value is `name=<prefix><token>` (a cookie).
    cookie: Option<String>,
    prefix: String,
    expired: ExpiredSpec,
    reported_lifetime: Option<HeaderName>,
    body_placeholder: Option<String>,
}

impl HeaderAuthorizer {
    /// From the `send` and `expired` parts of a spec.
    pub fn new(send: &SendSpec, expired: ExpiredSpec) -> Result<Self> {
        let config = |message: String| Error::new(ErrorKind::Configuration, message);
        let header = match (&send.cookie, send.header.is_empty()) {
            (Some(_), false) => {
                return Err(config(
                    "send: give either header or cookie, not both".to_owned(),
                ))
            }
            (None, true) if send.body.is_some() => None,
            (None, true) => {
                return Err(config(
                    "send: give a header, a cookie or a body placeholder".to_owned(),
                ))
            }
            (Some(cookie), true) => {
                let valid = !cookie.is_empty()
                    && cookie
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
                if !valid {
                    return Err(config(format!(
                        "send.cookie: {cookie:?} is not a cookie name"
                    )));
                }
                Some(reqwest::header::COOKIE)
            }
            (None, false) => {
                Some(HeaderName::from_bytes(send.header.as_bytes()).map_err(|_| {
                    config(format!(
                        "send.header: {:?} is not a header name",
                        send.header
                    ))
                })?)
            }
        };
        if send.body.as_deref().is_some_and(str::is_empty) {
            return Err(config("send.body: the placeholder is empty".to_owned()));
        }
        Ok(Self {
            header,
            cookie: send.cookie.clone(),
            prefix: send.prefix.clone(),
            expired,
            reported_lifetime: None,
            body_placeholder: send.body.clone(),
        })
    }

    /// Reads the remaining lifetime from this header of accepted API responses (seconds).
    pub fn with_reported_lifetime(mut self, header: &str) -> Result<Self> {
        self.reported_lifetime = Some(HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                format!("reported_lifetime: {header:?} is not a header name"),
            )
        })?);
        Ok(self)
    }

    /// The header carrying `token`, unless it travels only in the body.
    pub fn header_for(&self, token: &Token) -> Result<Option<(HeaderName, HeaderValue)>> {
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
    fn header(
        &self,
        value: &SecretString,
        _token_type: &str,
    ) -> Result<Option<(HeaderName, HeaderValue)>> {
        let Some(header) = &self.header else {
            return Ok(None);
        };
        let text = match &self.cookie {
            Some(cookie) => format!("{cookie}={}{}", self.prefix, value.expose()),
            None => format!("{}{}", self.prefix, value.expose()),
        };
        Ok(Some((header.clone(), sensitive_value(&text)?)))
    }

    fn body_placeholder(&self) -> Option<&str> {
        self.body_placeholder.as_deref()
    }

    fn reported_lifetime(&self, headers: &HeaderMap) -> Option<std::time::Duration> {
        let seconds: f64 = headers
            .get(self.reported_lifetime.as_ref()?)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        std::time::Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|lifetime| !lifetime.is_zero() && seconds < 1e10)
    }

    fn may_be_rejection(&self, status: StatusCode) -> bool {
        !status.is_success()
    }

    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        self.is_expired(status, headers, body)
    }
}
