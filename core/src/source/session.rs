//! Declarative HTTP session login for APIs that are not OAuth2 (feature `http`).
//!
//! A login request built from configured credentials returns a session token; the spec
//! says where the token is (JSON pointer or header), how long it lives (a field, a header
//! such as `X-Token-Expires-In`, a JWT `exp`, or a documented minimum lifetime), whether
//! that lifetime slides with use (idle timeout) and what absolute timeout caps it, how
//! the token is sent (`Authorization: Bearer x`, `vmware-api-session-id: x`,
//! `Authorization: ZSession x`), how to keep it alive and log out, and which responses
//! mean "session expired".
//!
//! Request templates may use `{{name}}` for a configured credential and `{{token}}` for
//! the session token; values are substituted, never logged. A value substituted into a
//! URL is percent-encoded (it can never change the host or add a path segment or query
//! parameter). Error messages, events and `Debug` output show a URL as its *template*
//! (placeholders left as `{{name}}`) without user name, password, query or fragment:
//! see [`redacted_url`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use serde::Deserialize;

use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::http::authorize::{push_xml_escaped, Authorizer, HeaderAuthorizer};
pub use crate::http::authorize::{ExpiredSpec, SendSpec};
use crate::http::{
    endpoint_name, endpoint_url, form_body, http_client, jwt_expiry, read_body, retry_after,
    server_date, transport_error_at, zeroize_json, MAX_BODY_BYTES,
};
use crate::lifecycle::token::{FetchedToken, Lifetime, Token};
use crate::secret::SecretString;
use crate::source::Source;

/// Where a value is found in a response.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ValueLocation {
    /// A JSON pointer (RFC 6901) into the JSON body, e.g. `/session/id` (`""`: the whole
    /// body, e.g. vSphere's bare JSON string).
    JsonPointer(String),
    /// A response header.
    Header(String),
    /// A cookie the response sets (`Set-Cookie: NAME=value; ...`), by name.
    Cookie(String),
    /// An element of an XML body by its path of local names, namespaces ignored, e.g.
    /// `loginResponse/result/Session` (matched at any depth).
    XmlPath(String),
}

/// Credentials sent as HTTP basic authentication (templated, e.g. `{{username}}`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSpec {
    /// User name template.
    pub username: String,
    /// Password template.
    pub password: String,
}

impl fmt::Debug for BasicAuthSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BasicAuthSpec([template])")
    }
}

/// How a login failure is classified: a status (and optionally a body match) gives an
/// error kind. Checked before the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRule {
    /// Statuses this rule applies to (empty: any non-success status).
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// When non-empty, the body must contain one of these.
    #[serde(default)]
    pub body_contains: Vec<String>,
    /// The kind: `invalid_credentials`, `invalid_grant`, `transient`, `rate_limited`,
    /// `configuration` or `protocol`.
    pub kind: String,
}

impl FailureRule {
    fn matches(&self, status: StatusCode, body: &[u8]) -> bool {
        if !self.statuses.is_empty() && !self.statuses.contains(&status.as_u16()) {
            return false;
        }
        let text = String::from_utf8_lossy(body);
        self.body_contains.is_empty()
            || self
                .body_contains
                .iter()
                .any(|needle| text.contains(needle.as_str()))
    }
}

fn failure_kind(name: &str) -> Option<ErrorKind> {
    Some(match name {
        "invalid_credentials" => ErrorKind::InvalidCredentials,
        "invalid_grant" => ErrorKind::InvalidGrant,
        "transient" => ErrorKind::Transient,
        "rate_limited" => ErrorKind::RateLimited,
        "configuration" => ErrorKind::Configuration,
        "protocol" => ErrorKind::Protocol,
        _ => return None,
    })
}

/// An HTTP request template.
///
/// `Debug` shows the method, the [`redacted_url`], header and form field names and
/// whether there is a JSON body, never a header, form or JSON value (they may hold literal
/// keys).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// HTTP method (default `POST`).
    #[serde(default = "default_method")]
    pub method: String,
    /// URL (HTTPS unless loopback).
    pub url: String,
    /// Extra headers (templated).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body (string values templated).
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// A form body (values templated).
    #[serde(default)]
    pub form: Option<BTreeMap<String, String>>,
    /// An XML body (a SOAP envelope): substituted values are XML-escaped. Sent as
    /// `text/xml; charset=utf-8` unless `headers` names a `Content-Type`.
    #[serde(default)]
    pub xml: Option<String>,
    /// HTTP basic authentication (vSphere's `POST /api/session`).
    #[serde(default)]
    pub basic_auth: Option<BasicAuthSpec>,
    /// Send the session token with this request the way `send` says (keep-alive, logout).
    #[serde(default)]
    pub authenticated: bool,
}

fn default_method() -> String {
    "POST".to_owned()
}

impl fmt::Debug for RequestSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSpec")
            .field("method", &self.method)
            .field("url", &redacted_url(&self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("json", &self.json.as_ref().map(|_| "[template]"))
            .field("xml", &self.xml.as_ref().map(|_| "[template]"))
            .field("basic_auth", &self.basic_auth.is_some())
            .field(
                "form",
                &self
                    .form
                    .as_ref()
                    .map(|form| form.keys().collect::<Vec<_>>()),
            )
            .field("authenticated", &self.authenticated)
            .finish()
    }
}

impl RequestSpec {
    /// The request's URL as error messages and `Debug` show it ([`redacted_url`]).
    pub fn redacted_url(&self) -> String {
        redacted_url(&self.url)
    }
}

/// A URL template as error messages, events and `Debug` output show it: scheme, host,
/// port and path *of the template* (placeholders stay `{{name}}`, never a rendered
/// credential or token), without user name, password, query or fragment (a query or a
/// userinfo may hold a literal key or password). A template that is not a URL is shown as
/// `[not a valid URL]`.
pub fn redacted_url(template: &str) -> String {
    let Ok(url) = url::Url::parse(template) else {
        return "[not a valid URL]".to_owned();
    };
    // The parser percent-encodes `{`, `}` and spaces in a path; show placeholders as
    // they were written.
    let shown = endpoint_name(&url)
        .replace("%7B%7B", "{{")
        .replace("%7D%7D", "}}");
    let mut out = String::with_capacity(shown.len());
    let mut rest = shown.as_str();
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&rest[start..start + end].replace("%20", " "));
        rest = &rest[start + end..];
    }
    out.push_str(rest);
    out
}

/// `template` without the password of its userinfo (`https://user:pw@host/x` →
/// `https://user@host/x`); anything else is kept as written, so keys derived from URLs
/// without a password do not change.
fn without_password(template: &str) -> String {
    let has_password = url::Url::parse(template).is_ok_and(|url| url.password().is_some());
    if !has_password {
        return template.to_owned();
    }
    let cut = (|| {
        let authority_start = template.find("://")? + 3;
        let authority_len = template[authority_start..]
            .find(['/', '?', '#', '\\'])
            .unwrap_or(template.len() - authority_start);
        let authority = &template[authority_start..authority_start + authority_len];
        let at = authority.rfind('@')?;
        let colon = authority[..at].find(':')?;
        Some(format!(
            "{}{}",
            &template[..authority_start + colon],
            &template[authority_start + at..]
        ))
    })();
    match cut {
        Some(cut) if url::Url::parse(&cut).is_ok_and(|url| url.password().is_none()) => cut,
        _ => redacted_url(template),
    }
}

/// The declarative description of a session API.
///
/// `Debug` shows request templates as [`RequestSpec`]'s `Debug` does (no credentials, no
/// URL passwords, no header or body values).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// The login request.
    pub login: RequestSpec,
    /// Where the session token is in the login response.
    pub token: ValueLocation,
    /// Where the lifetime in seconds is (`expires_in` field, `X-Token-Expires-In` header).
    #[serde(default)]
    pub expires_in: Option<ValueLocation>,
    /// Read the lifetime from the token's JWT `exp` (against the server's `Date`).
    #[serde(default)]
    pub expires_in_from_jwt: bool,
    /// A lifetime the API documents (e.g. "at least 15 minutes"); the shortest known
    /// lifetime wins.
    #[serde(default)]
    pub lifetime_s: Option<u64>,
    /// The lifetime is an idle timeout that every use restarts (sliding session).
    #[serde(default)]
    pub sliding: bool,
    /// Absolute timeout from login, seconds.
    #[serde(default)]
    pub absolute_timeout_s: Option<u64>,
    /// Where an absolute deadline (RFC 3339, server clock) is in the login response.
    #[serde(default)]
    pub absolute_deadline: Option<ValueLocation>,
    /// How the token is sent.
    pub send: SendSpec,
    /// A keep-alive request that restarts the idle timeout.
    #[serde(default)]
    pub keep_alive: Option<RequestSpec>,
    /// A logout request (used by `Manager::revoke`).
    #[serde(default)]
    pub logout: Option<RequestSpec>,
    /// Which responses mean the session expired.
    #[serde(default)]
    pub expired: ExpiredSpec,
    /// How login failures are classified, before the defaults (a 401/403/4xx is
    /// `invalid_credentials`; a SOAP `LoginFault`, even with HTTP 500, too; other 5xx are
    /// `transient`).
    #[serde(default)]
    pub login_failures: Vec<FailureRule>,
    /// Other values of the login response kept with the session (not secrets), e.g. Zuora's
    /// `ServerUrl`: `{"server_url": {"xml_path": "loginResponse/result/ServerUrl"}}`.
    /// Read them with `Token::attribute`.
    #[serde(default)]
    pub values: BTreeMap<String, ValueLocation>,
    /// A request that says whose session this is and whether it is alive (vSphere's
    /// `GET /api/session`), for `Manager::session_info`.
    #[serde(default)]
    pub info: Option<RequestSpec>,
    /// A header of API responses with the session's remaining (idle) lifetime in seconds,
    /// e.g. `X-Token-Expires-In`: an accepted response that carries it moves the session's
    /// idle deadline to match (through `Manager::judge_response` and the authorized client).
    #[serde(default)]
    pub reported_lifetime: Option<String>,
}

impl SessionSpec {
    /// The store key a session source gets unless one is configured: `server:` and the
    /// login URL template, without the password of its userinfo (URLs without one give
    /// the same key as before).
    pub fn default_store_key(&self) -> String {
        format!("server:{}", without_password(&self.login.url))
    }
}

/// A [`Source`] that logs in to a session API.
#[derive(Clone)]
pub struct SessionLogin {
    http: reqwest::Client,
    spec: SessionSpec,
    credentials: BTreeMap<String, SecretString>,
    /// Credentials that are tokens of other managers (a SAML token from an identity
    /// provider): read at every login, fetched again when a login is refused.
    credential_sources: BTreeMap<String, crate::Manager>,
    authorizer: HeaderAuthorizer,
}

impl fmt::Debug for SessionLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLogin")
            .field("login_url", &self.spec.login.redacted_url())
            .field(
                "keep_alive_url",
                &self.spec.keep_alive.as_ref().map(RequestSpec::redacted_url),
            )
            .field(
                "logout_url",
                &self.spec.logout.as_ref().map(RequestSpec::redacted_url),
            )
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .field(
                "credential_sources",
                &self.credential_sources.keys().collect::<Vec<_>>(),
            )
            .field("send", &self.spec.send.header)
            .finish()
    }
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Configuration, message)
}

impl SessionLogin {
    /// Checks the spec (URLs, header names, templates) and builds the source.
    pub fn new(spec: SessionSpec, credentials: BTreeMap<String, SecretString>) -> Result<Self> {
        Self::with_credential_sources(spec, credentials, BTreeMap::new())
    }

    /// As [`SessionLogin::new`], with credentials that are the tokens of other managers
    /// (`{{name}}` in templates): each login uses their current token, and a refused login
    /// is tried once more with new ones (vSphere's login with a SAML token from an identity
    /// provider, re-fetched when the session must be re-created).
    pub fn with_credential_sources(
        spec: SessionSpec,
        credentials: BTreeMap<String, SecretString>,
        credential_sources: BTreeMap<String, crate::Manager>,
    ) -> Result<Self> {
        let mut authorizer = HeaderAuthorizer::new(&spec.send, spec.expired.clone())
            .map_err(|err| config_error(format!("session.{}", err.message())))?;
        if let Some(header) = &spec.reported_lifetime {
            authorizer = authorizer
                .with_reported_lifetime(header)
                .map_err(|err| config_error(format!("session.{}", err.message())))?;
        }
        let requests = [
            ("login", Some(&spec.login)),
            ("keep_alive", spec.keep_alive.as_ref()),
            ("logout", spec.logout.as_ref()),
            ("info", spec.info.as_ref()),
        ];
        for (name, request) in requests {
            let Some(request) = request else { continue };
            endpoint_url(&format!("session.{name}.url"), &request.url)?;
            reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|_| {
                config_error(format!(
                    "session.{name}.method: {:?} is not an HTTP method",
                    request.method
                ))
            })?;
            let bodies = [
                request.json.is_some(),
                request.form.is_some(),
                request.xml.is_some(),
            ];
            if bodies.iter().filter(|given| **given).count() > 1 {
                return Err(config_error(format!(
                    "session.{name}: give one body (json, form or xml), not several"
                )));
            }
            for placeholder in placeholders_of(request) {
                if placeholder != "token"
                    && !credentials.contains_key(&placeholder)
                    && !credential_sources.contains_key(&placeholder)
                {
                    return Err(config_error(format!(
                        "session.{name}: template uses {{{{{placeholder}}}}} but no credential {placeholder:?} is configured"
                    )));
                }
                if placeholder == "token" && name == "login" {
                    return Err(config_error(
                        "session.login: {{token}} is not available before login".to_owned(),
                    ));
                }
            }
        }
        if let Some(ValueLocation::JsonPointer(pointer)) = &spec.expires_in {
            check_pointer("session.expires_in", pointer)?;
        }
        if let ValueLocation::JsonPointer(pointer) = &spec.token {
            check_pointer("session.token", pointer)?;
        }
        for (name, location) in &spec.values {
            if let ValueLocation::JsonPointer(pointer) = location {
                check_pointer(&format!("session.values.{name}"), pointer)?;
            }
        }
        for (index, rule) in spec.login_failures.iter().enumerate() {
            if failure_kind(&rule.kind).is_none() {
                return Err(config_error(format!(
                    "session.login_failures[{index}].kind: {:?} is not one of invalid_credentials, \
                     invalid_grant, transient, rate_limited, configuration, protocol",
                    rule.kind
                )));
            }
        }
        if spec.expires_in.is_none()
            && !spec.expires_in_from_jwt
            && spec.lifetime_s.is_none()
            && spec.absolute_timeout_s.is_none()
            && spec.absolute_deadline.is_none()
        {
            return Err(config_error(
                "session: say how long a session lives (expires_in, expires_in_from_jwt, lifetime_s, absolute_timeout_s or absolute_deadline)".to_owned(),
            ));
        }
        Ok(Self {
            http: http_client()?,
            spec,
            credentials,
            credential_sources,
            authorizer,
        })
    }

    /// One login, with the credential sources' current tokens.
    async fn login_once(&self) -> Result<FetchedToken> {
        let (status, headers, body, shown) = if self.credential_sources.is_empty() {
            self.send("login", &self.spec.login, None).await?
        } else {
            let mut with_tokens = self.clone();
            for (name, manager) in &self.credential_sources {
                let token = manager.token().await.map_err(|err| {
                    Error::new(
                        err.kind(),
                        format!(
                            "session credential {name:?} from its source: {}",
                            err.message()
                        ),
                    )
                })?;
                with_tokens
                    .credentials
                    .insert(name.clone(), token.value().clone());
            }
            with_tokens.send("login", &self.spec.login, None).await?
        };
        if !status.is_success() {
            return Err(self.failure("login", &shown, status, &headers, &body));
        }
        self.parse_login_body(&headers, &body)
    }

    /// How the session token is attached and its expiry recognised.
    pub fn authorizer(&self) -> &HeaderAuthorizer {
        &self.authorizer
    }

    /// The header that carries the token, with its value (`None`: it travels in bodies).
    pub fn authorization(&self, token: &Token) -> Result<Option<(HeaderName, HeaderValue)>> {
        self.authorizer.header_for(token)
    }

    /// Whether a response means the session expired (see [`ExpiredSpec`]).
    pub fn is_session_expired(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        self.authorizer.is_expired(status, headers, body)
    }

    /// Walks `template`, handing literal text and substituted values to `emit` (`true` for
    /// a value). Unknown placeholders and a lone `{{` stay literal.
    fn substitute<'a>(
        &'a self,
        template: &'a str,
        token: Option<&'a Token>,
        mut emit: impl FnMut(&'a str, bool),
    ) {
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            emit(&rest[..start], false);
            let after = &rest[start + 2..];
            match after.find("}}") {
                Some(end) => {
                    let name = after[..end].trim();
                    match (name, token) {
                        ("token", Some(token)) => emit(token.value().expose(), true),
                        _ => match self.credentials.get(name) {
                            Some(secret) => emit(secret.expose(), true),
                            None => emit(&rest[start..start + 2 + end + 2], false),
                        },
                    }
                    rest = &after[end + 2..];
                }
                None => {
                    emit(&rest[start..], false);
                    rest = "";
                }
            }
        }
        emit(rest, false);
    }

    /// `template` with its placeholders substituted, in a buffer sized up front (so it
    /// never reallocates) and wiped when dropped. With `for_url`, substituted values are
    /// percent-encoded (everything but RFC 3986 unreserved characters), so a value can
    /// never change a URL's host, path segments or query parameters.
    fn render_with(
        &self,
        template: &str,
        token: Option<&Token>,
        escape: Escape,
    ) -> Zeroizing<String> {
        let mut capacity = 0;
        self.substitute(template, token, |text, value| {
            capacity += match (value, escape) {
                (true, Escape::Url) => 3 * text.len(),
                (true, Escape::Xml) => 6 * text.len(),
                _ => text.len(),
            };
        });
        let mut out = Zeroizing::new(String::with_capacity(capacity));
        self.substitute(template, token, |text, value| {
            if value && escape == Escape::Xml {
                push_xml_escaped(&mut out, text);
            } else if value && escape == Escape::Url {
                for byte in text.bytes() {
                    if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                        out.push(char::from(byte));
                    } else {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(char::from(HEX[usize::from(byte >> 4)]));
                        out.push(char::from(HEX[usize::from(byte & 0xf)]));
                    }
                }
            } else {
                out.push_str(text);
            }
        });
        out
    }

    fn render(&self, template: &str, token: Option<&Token>) -> Zeroizing<String> {
        self.render_with(template, token, Escape::Plain)
    }

    fn render_json(&self, value: &serde_json::Value, token: Option<&Token>) -> serde_json::Value {
        match value {
            serde_json::Value::String(text) => {
                serde_json::Value::String(std::mem::take(&mut *self.render(text, token)))
            }
            serde_json::Value::Array(items) => items
                .iter()
                .map(|item| self.render_json(item, token))
                .collect(),
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| (k.clone(), self.render_json(v, token)))
                .collect(),
            other => other.clone(),
        }
    }

    /// Sends one templated request and reads its answer (at most [`MAX_BODY_BYTES`]).
    /// Returns the status, headers, body (wiped when dropped) and the endpoint as messages
    /// show it ([`redacted_url`] of the template: never a rendered credential or token).
    async fn send(
        &self,
        what: &str,
        request: &RequestSpec,
        token: Option<&Token>,
    ) -> Result<(StatusCode, HeaderMap, Zeroizing<Vec<u8>>, String)> {
        let shown = request.redacted_url();
        let url = endpoint_url(
            &format!("session.{what}.url"),
            &self.render_with(&request.url, token, Escape::Url),
        )?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| config_error(format!("session.{what}.method is invalid")))?;
        let mut builder = self.http.request(method, url);
        for (name, value) in &request.headers {
            let mut value = HeaderValue::from_str(&self.render(value, token)).map_err(|_| {
                config_error(format!(
                    "session.{what}.headers.{name}: not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            builder = builder.header(name.as_str(), value);
        }
        if request.authenticated {
            if let Some(token) = token {
                if let Some((name, value)) = self.authorization(token)? {
                    builder = builder.header(name, value);
                }
            }
        }
        if let Some(basic) = &request.basic_auth {
            let user = self.render(&basic.username, token);
            let password = self.render(&basic.password, token);
            if user.contains(':') {
                return Err(config_error(format!(
                    "session.{what}.basic_auth: a user name cannot contain ':' (RFC 7617)"
                )));
            }
            builder = builder.header(
                reqwest::header::AUTHORIZATION,
                basic_credentials(&user, &password)?,
            );
        }
        // Bodies are serialised into buffers wiped on drop; reqwest gets a copy.
        if let Some(json) = &request.json {
            let mut rendered = self.render_json(json, token);
            let written = json_body(&rendered);
            zeroize_json(&mut rendered);
            let body =
                written.map_err(|_| config_error(format!("session.{what}.json is invalid")))?;
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        } else if let Some(xml) = &request.xml {
            let body = self.render_with(xml, token, Escape::Xml);
            if !request
                .headers
                .keys()
                .any(|name| name.eq_ignore_ascii_case("content-type"))
            {
                builder = builder.header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8");
            }
            builder = builder.body(body.as_bytes().to_vec());
        } else if let Some(form) = &request.form {
            let rendered: Vec<(&str, Zeroizing<String>)> = form
                .iter()
                .map(|(k, v)| (k.as_str(), self.render(v, token)))
                .collect();
            let pairs: Vec<(&str, &str)> = rendered.iter().map(|(k, v)| (*k, v.as_str())).collect();
            builder = builder
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form_body(&pairs).as_bytes().to_vec());
        }
        let response = builder
            .send()
            .await
            .map_err(|err| transport_error_at(&shown, &err))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_body(response, &shown, MAX_BODY_BYTES).await?;
        Ok((status, headers, body, shown))
    }

    fn failure(
        &self,
        what: &str,
        endpoint: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Error {
        let rule = (what == "login")
            .then(|| {
                self.spec
                    .login_failures
                    .iter()
                    .find(|rule| rule.matches(status, body))
            })
            .flatten();
        let kind = match status.as_u16() {
            _ if rule.is_some() => rule
                .and_then(|rule| failure_kind(&rule.kind))
                .unwrap_or(ErrorKind::Protocol),
            // SOAP 1.1 answers every fault with 500; a login fault is a wrong password.
            500 if what == "login" && is_soap_login_fault(body) => ErrorKind::InvalidCredentials,
            429 => ErrorKind::RateLimited,
            500..=599 if !self.is_session_expired(status, headers, body) => ErrorKind::Transient,
            401 | 403 if what == "login" => ErrorKind::InvalidCredentials,
            _ if what != "login" && self.is_session_expired(status, headers, body) => {
                ErrorKind::TokenRejected
            }
            400..=499 => {
                if what == "login" {
                    ErrorKind::InvalidCredentials
                } else {
                    ErrorKind::Protocol
                }
            }
            _ => ErrorKind::Protocol,
        };
        let retry_after = retry_after(headers);
        Error::new(
            kind,
            format!("session {what} at {endpoint} answered {}", status.as_u16()),
        )
        .with_retry_after(retry_after)
    }

    fn extract(
        &self,
        location: &ValueLocation,
        headers: &HeaderMap,
        body: &ParsedBody<'_>,
    ) -> Option<String> {
        match location {
            ValueLocation::Header(name) => headers
                .get(name.as_str())?
                .to_str()
                .ok()
                .map(|v| v.trim().to_owned()),
            ValueLocation::Cookie(name) => cookie_value(headers, name),
            ValueLocation::JsonPointer(pointer) => match body.json.as_ref()?.pointer(pointer)? {
                serde_json::Value::String(text) => Some(text.clone()),
                serde_json::Value::Number(number) => Some(number.to_string()),
                _ => None,
            },
            ValueLocation::XmlPath(path) => xml_text(body.xml.as_ref()?, path),
        }
    }

    /// Parses a login response into a token (public for fuzzing and tests).
    ///
    /// Messages name the login endpoint by the spec's template ([`redacted_url`]), not by
    /// `_url`, the URL the request went to: that one may carry a rendered credential.
    pub fn parse_login(
        &self,
        _url: &url::Url,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<FetchedToken> {
        self.parse_login_body(headers, body)
    }

    fn parse_login_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<FetchedToken> {
        let wants_xml = std::iter::once(&self.spec.token)
            .chain(&self.spec.expires_in)
            .chain(&self.spec.absolute_deadline)
            .chain(self.spec.values.values())
            .any(|location| matches!(location, ValueLocation::XmlPath(_)));
        let text = std::str::from_utf8(body).ok();
        let xml = if wants_xml {
            text.and_then(|text| roxmltree::Document::parse(text).ok())
        } else {
            None
        };
        let mut parsed = ParsedBody {
            json: serde_json::from_slice(body).ok(),
            xml,
        };
        let outcome = self.parse_login_parsed(headers, &parsed);
        // The parsed body holds the session token (and whatever else the server sent).
        if let Some(json) = &mut parsed.json {
            zeroize_json(json);
        }
        outcome
    }

    fn parse_login_parsed(
        &self,
        headers: &HeaderMap,
        json: &ParsedBody<'_>,
    ) -> Result<FetchedToken> {
        let endpoint = self.spec.login.redacted_url();
        let value = self
            .extract(&self.spec.token, headers, json)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "session login at {endpoint}: no token where the spec says ({:?})",
                        self.spec.token
                    ),
                )
            })?;
        let server_now = server_date(headers);
        let mut candidates: Vec<Duration> = Vec::new();
        if let Some(location) = &self.spec.expires_in {
            let text = self.extract(location, headers, json).ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("session login at {endpoint}: no lifetime at {location:?}"),
                )
            })?;
            let seconds: f64 = text.trim().parse().map_err(|_| {
                Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "session login at {endpoint}: lifetime at {location:?} is not a number"
                    ),
                )
            })?;
            let lifetime = Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|lifetime| !lifetime.is_zero() && seconds < 1e10)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!("session login at {endpoint}: lifetime must be positive"),
                    )
                })?;
            candidates.push(lifetime);
        }
        if self.spec.expires_in_from_jwt {
            let exp = jwt_expiry(&value).ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("session login at {endpoint}: the token is not a JWT with exp"),
                )
            })?;
            candidates.push(remaining_on_server_clock(exp, server_now));
        }
        if let Some(seconds) = self.spec.lifetime_s {
            candidates.push(Duration::from_secs(seconds));
        }
        let mut absolute: Vec<Duration> = Vec::new();
        if let Some(seconds) = self.spec.absolute_timeout_s {
            absolute.push(Duration::from_secs(seconds));
        }
        if let Some(location) = &self.spec.absolute_deadline {
            let text = self.extract(location, headers, json).ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("session login at {endpoint}: no absolute deadline at {location:?}"),
                )
            })?;
            let deadline = parse_rfc3339(&text).ok_or_else(|| {
                Error::new(ErrorKind::Protocol, format!("session login at {endpoint}: absolute deadline at {location:?} is not RFC 3339"))
            })?;
            absolute.push(remaining_on_server_clock(deadline, server_now));
        }
        let shortest = candidates.iter().copied().min();
        let absolute = absolute.into_iter().min();
        let mut fetched = FetchedToken::bearer(value, Duration::ZERO);
        fetched.token_type = self.spec.send.prefix.trim().to_owned();
        for (name, location) in &self.spec.values {
            let value = self.extract(location, headers, json).ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("session login at {endpoint}: no {name} at {location:?}"),
                )
            })?;
            fetched.attributes.insert(name.clone(), value);
        }
        match (self.spec.sliding, shortest, absolute) {
            (true, Some(idle), absolute) => {
                fetched.idle_timeout = Some(idle);
                fetched.lifetime = absolute.map_or(Lifetime::Unknown, Lifetime::ExpiresIn);
            }
            (_, Some(lifetime), Some(absolute)) => {
                fetched.lifetime = Lifetime::ExpiresIn(lifetime.min(absolute))
            }
            (_, Some(lifetime), None) | (_, None, Some(lifetime)) => {
                fetched.lifetime = Lifetime::ExpiresIn(lifetime)
            }
            (_, None, None) => fetched.lifetime = Lifetime::Unknown,
        }
        Ok(fetched)
    }
}

/// How substituted values are escaped where they land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// As they are (JSON strings are escaped by the serialiser, headers are checked).
    Plain,
    /// Percent-encoded: a value can never change a URL's host, path or query.
    Url,
    /// XML-escaped: a value can never add an element or attribute.
    Xml,
}

/// A login response body, parsed the ways the spec's locations need.
struct ParsedBody<'a> {
    json: Option<serde_json::Value>,
    xml: Option<roxmltree::Document<'a>>,
}

/// The text of the element at `path` (local names separated by `/`, namespaces ignored,
/// matched at any depth): the first element whose own name and nearest ancestors' names
/// are the path's, read bottom-up.
fn xml_text(document: &roxmltree::Document<'_>, path: &str) -> Option<String> {
    let names: Vec<&str> = path.split('/').filter(|name| !name.is_empty()).collect();
    let (last, parents) = names.split_last()?;
    document
        .descendants()
        .filter(|node| node.is_element() && node.tag_name().name() == *last)
        .find(|node| {
            let mut ancestor = node.parent_element();
            parents.iter().rev().all(|name| {
                let matched = ancestor.is_some_and(|parent| parent.tag_name().name() == *name);
                ancestor = ancestor.and_then(|parent| parent.parent_element());
                matched
            })
        })
        .map(|node| {
            node.descendants()
                .filter(|child| child.is_text())
                .filter_map(|child| child.text())
                .collect::<String>()
                .trim()
                .to_owned()
        })
}

/// Whether a body is a SOAP fault about the login (Zuora's `LoginFault`, or a fault whose
/// code says the credentials are wrong).
fn is_soap_login_fault(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let Ok(document) = roxmltree::Document::parse(text) else {
        return false;
    };
    let fault = document
        .descendants()
        .any(|node| node.is_element() && node.tag_name().name() == "Fault");
    fault
        && document.descendants().any(|node| {
            node.is_element()
                && matches!(
                    node.tag_name().name(),
                    "LoginFault" | "InvalidLoginFault" | "InvalidLogin"
                )
        })
}

/// `Basic base64(user:password)` (RFC 7617: no encoding of the parts), marked sensitive,
/// built in buffers wiped on drop.
fn basic_credentials(user: &str, password: &str) -> Result<HeaderValue> {
    use base64::Engine as _;
    let mut pair = Zeroizing::new(String::with_capacity(user.len() + password.len() + 1));
    pair.push_str(user);
    pair.push(':');
    pair.push_str(password);
    let mut header = Zeroizing::new(String::from("Basic "));
    base64::engine::general_purpose::STANDARD.encode_string(pair.as_bytes(), &mut header);
    let mut value = HeaderValue::from_str(&header).map_err(|_| {
        config_error("basic_auth: the credentials are not a valid header".to_owned())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The value of the cookie `name` a response sets (the first `Set-Cookie` for it).
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|line| line.split(';').next()?.split_once('='))
        .find(|(cookie, _)| cookie.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
}

/// `value` serialised into a buffer of exactly the right size (measured first, so it never
/// reallocates and leaves no unwiped copy behind), wiped when dropped.
fn json_body(value: &serde_json::Value) -> serde_json::Result<Zeroizing<Vec<u8>>> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value)?;
    let mut body = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *body, value)?;
    Ok(body)
}

/// Remaining lifetime of a server-clock deadline, measured against the server's own
/// `Date` so client clock skew doesn't matter (one second off for `Date`'s resolution).
fn remaining_on_server_clock(deadline: SystemTime, server_now: Option<SystemTime>) -> Duration {
    match server_now {
        Some(now) => deadline
            .duration_since(now)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(1)),
        None => deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    }
}

fn check_pointer(field: &str, pointer: &str) -> Result<()> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(config_error(format!(
            "{field}: a JSON pointer starts with '/' (got {pointer:?})"
        )))
    }
}

fn placeholders_of(request: &RequestSpec) -> Vec<String> {
    fn scan(text: &str, out: &mut Vec<String>) {
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else { break };
            out.push(after[..end].trim().to_owned());
            rest = &after[end + 2..];
        }
    }
    fn scan_json(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(text) => scan(text, out),
            serde_json::Value::Array(items) => items.iter().for_each(|item| scan_json(item, out)),
            serde_json::Value::Object(map) => map.values().for_each(|value| scan_json(value, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    scan(&request.url, &mut out);
    request
        .headers
        .values()
        .for_each(|value| scan(value, &mut out));
    request
        .form
        .iter()
        .flat_map(|form| form.values())
        .for_each(|value| scan(value, &mut out));
    if let Some(xml) = &request.xml {
        scan(xml, &mut out);
    }
    if let Some(basic) = &request.basic_auth {
        scan(&basic.username, &mut out);
        scan(&basic.password, &mut out);
    }
    if let Some(json) = &request.json {
        scan_json(json, &mut out);
    }
    out
}

/// Formats a time as RFC 3339 in UTC with whole seconds (`2026-12-01T20:00:00Z`), the
/// inverse of [`parse_rfc3339`] for such values (Kubernetes `expirationTimestamp`, JSON
/// answers of the command and the agent).
pub fn format_rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil from days (Howard Hinnant's algorithm), the inverse of the one below.
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Parses an RFC 3339 timestamp (`2026-11-23T10:00:00Z`, with optional fraction and offset).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    /// A fixed-width field of ASCII digits (no sign, no spaces), so nothing can overflow.
    fn digits(text: &str, width: usize) -> Option<i64> {
        if text.len() != width || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }
    let text = text.trim();
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut date_parts = date.splitn(3, '-');
    let year = digits(date_parts.next()?, 4)?;
    let month = digits(date_parts.next()?, 2)?;
    let day = digits(date_parts.next()?, 2)?;
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0i64)
    } else {
        let split = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(split);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (hours, minutes) = offset[1..].split_once(':')?;
        let (hours, minutes) = (digits(hours, 2)?, digits(minutes, 2)?);
        if hours > 23 || minutes > 59 {
            return None;
        }
        (clock, sign * (hours * 3600 + minutes * 60))
    };
    let mut clock_parts = clock.splitn(3, ':');
    let hour = digits(clock_parts.next()?, 2)?;
    let minute = digits(clock_parts.next()?, 2)?;
    let second_text = clock_parts.next()?;
    let (whole, fraction) = second_text.split_once('.').unwrap_or((second_text, ""));
    let second = digits(whole, 2)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = fraction.chars().take(9).collect();
        format!("{digits:0<9}").parse().ok()?
    };
    // Days from civil (Howard Hinnant's algorithm); a 4-digit year keeps every term small.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    let seconds = u64::try_from(seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos))
}

#[async_trait]
impl Source for SessionLogin {
    async fn fetch(&self) -> Result<FetchedToken> {
        match self.login_once().await {
            // A login credential from another source was refused (expired or revoked
            // there): fetch it again and log in once more.
            Err(err)
                if err.kind() == ErrorKind::InvalidCredentials
                    && !self.credential_sources.is_empty() =>
            {
                for manager in self.credential_sources.values() {
                    if let Some(token) = manager.cached() {
                        manager.invalidate(&token);
                    }
                }
                self.login_once().await
            }
            other => other,
        }
    }

    async fn revoke(&self, token: &Token) -> Result<()> {
        let Some(logout) = &self.spec.logout else {
            return Ok(());
        };
        let (status, headers, body, shown) = self.send("logout", logout, Some(token)).await?;
        // An already expired session is logged out as far as we are concerned.
        if status.is_success() || self.is_session_expired(status, &headers, &body) {
            Ok(())
        } else {
            Err(self.failure("logout", &shown, status, &headers, &body))
        }
    }

    async fn session_info(&self, token: &Token) -> Result<Option<String>> {
        let Some(info) = &self.spec.info else {
            return Ok(None);
        };
        let (status, headers, body, shown) = self.send("info", info, Some(token)).await?;
        if !status.is_success() {
            return Err(self.failure("info", &shown, status, &headers, &body));
        }
        Ok(Some(String::from_utf8_lossy(&body).into_owned()))
    }

    async fn keep_alive(&self, token: &Token) -> Result<Option<Lifetime>> {
        let Some(keep_alive) = &self.spec.keep_alive else {
            return Ok(None);
        };
        let (status, headers, body, shown) =
            self.send("keep_alive", keep_alive, Some(token)).await?;
        if status.is_success() {
            Ok(None)
        } else {
            Err(self.failure("keep_alive", &shown, status, &headers, &body))
        }
    }

    fn supports_keep_alive(&self) -> bool {
        self.spec.keep_alive.is_some()
    }
}

impl Authorizer for SessionLogin {
    fn header(
        &self,
        value: &SecretString,
        token_type: &str,
    ) -> Result<Option<(HeaderName, HeaderValue)>> {
        self.authorizer().header(value, token_type)
    }

    fn body_placeholder(&self) -> Option<&str> {
        self.authorizer().body_placeholder()
    }

    fn may_be_rejection(&self, status: StatusCode) -> bool {
        self.authorizer().may_be_rejection(status)
    }

    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        self.authorizer().is_rejection(status, headers, body)
    }

    fn reported_lifetime(&self, headers: &HeaderMap) -> Option<Duration> {
        self.authorizer().reported_lifetime(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> SessionSpec {
        serde_json::from_str(json).unwrap()
    }

    fn zuora_like() -> SessionLogin {
        let spec = spec(
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
        );
        let credentials = [
            ("username".to_owned(), SecretString::from("alice")),
            ("password".to_owned(), SecretString::from("pw-secret")),
        ];
        SessionLogin::new(spec, credentials.into_iter().collect()).unwrap()
    }

    #[test]
    fn a_session_set_as_a_cookie_is_read_by_name_and_sent_back_as_a_cookie() {
        let login = SessionLogin::new(
            spec(
                r#"{"login": {"url": "http://127.0.0.1:1/login"},
                    "token": {"cookie": "ZSession"}, "lifetime_s": 900,
                    "send": {"cookie": "ZSession"}}"#,
            ),
            BTreeMap::new(),
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.append("set-cookie", HeaderValue::from_static("other=1; Path=/"));
        headers.append(
            "set-cookie",
            HeaderValue::from_static("ZSession=abc123; Path=/; Secure; HttpOnly"),
        );
        let fetched = login.parse_login_body(&headers, b"").unwrap();
        assert_eq!(fetched.value.expose(), "abc123");
        let (name, value) = login
            .header(&fetched.value, &fetched.token_type)
            .unwrap()
            .unwrap();
        assert_eq!(name, reqwest::header::COOKIE);
        assert_eq!(value.to_str().unwrap(), "ZSession=abc123");
        assert!(value.is_sensitive());
        // No such cookie: a protocol error naming where it looked.
        let err = login.parse_login_body(&HeaderMap::new(), b"").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn xml_values_are_found_by_local_names_and_substituted_values_are_escaped() {
        let login = SessionLogin::new(
            spec(
                r#"{"login": {"url": "http://127.0.0.1:1/soap", "xml": "<a><u>{{username}}</u></a>"},
                    "token": {"xml_path": "result/Session"},
                    "values": {"server_url": {"xml_path": "ServerUrl"}},
                    "lifetime_s": 900, "send": {"body": "{{session}}"}}"#,
            ),
            [("username".to_owned(), SecretString::from("a<b>&\"c'"))].into(),
        )
        .unwrap();
        assert_eq!(
            login
                .render_with("<u>{{username}}</u>", None, Escape::Xml)
                .as_str(),
            "<u>a&lt;b&gt;&amp;&quot;c&apos;</u>"
        );
        let body = br#"<e:Envelope xmlns:e="urn:e" xmlns:n="urn:n"><e:Body><n:r><n:Session>decoy</n:Session></n:r>
            <n:result><n:Session> s-1 </n:Session><n:ServerUrl>https://x/a</n:ServerUrl></n:result></e:Body></e:Envelope>"#;
        let fetched = login.parse_login_body(&HeaderMap::new(), body).unwrap();
        assert_eq!(
            fetched.value.expose(),
            "s-1",
            "the element under result, not the decoy"
        );
        assert_eq!(fetched.attributes["server_url"], "https://x/a");
        assert!(
            login.header(&fetched.value, "").unwrap().is_none(),
            "body only"
        );
        assert_eq!(login.body_placeholder(), Some("{{session}}"));
        // Not XML at all: a protocol error, not a panic.
        let err = login
            .parse_login_body(&HeaderMap::new(), b"<unclosed")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn a_soap_login_fault_is_invalid_credentials_and_rules_come_first() {
        let fault = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>fns:INVALID_VALUE</faultcode><detail><fns:LoginFault xmlns:fns="http://fault.api.zuora.com/"/></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let plain = zuora_like();
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        assert_eq!(
            plain
                .failure("login", "x", status, &HeaderMap::new(), fault)
                .kind(),
            ErrorKind::InvalidCredentials
        );
        assert_eq!(
            plain
                .failure("login", "x", status, &HeaderMap::new(), b"oops")
                .kind(),
            ErrorKind::Transient
        );
        let mut spec = plain.spec.clone();
        spec.login_failures = vec![FailureRule {
            statuses: vec![503],
            body_contains: vec!["LOCKED".to_owned()],
            kind: "invalid_grant".to_owned(),
        }];
        let ruled = SessionLogin::new(spec.clone(), plain.credentials.clone()).unwrap();
        assert_eq!(
            ruled
                .failure(
                    "login",
                    "x",
                    StatusCode::SERVICE_UNAVAILABLE,
                    &HeaderMap::new(),
                    b"LOCKED"
                )
                .kind(),
            ErrorKind::InvalidGrant
        );
        spec.login_failures[0].kind = "nonsense".to_owned();
        let err = SessionLogin::new(spec, plain.credentials.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.to_string().contains("login_failures[0].kind"), "{err}");
    }

    #[test]
    fn templates_substitute_credentials_and_token() {
        let login = zuora_like();
        assert_eq!(
            login
                .render("u={{username}}&p={{ password }}", None)
                .as_str(),
            "u=alice&p=pw-secret"
        );
        assert_eq!(
            login.render("{{unknown}} {{", None).as_str(),
            "{{unknown}} {{"
        );
        let json = login.render_json(&serde_json::json!({"a": ["{{username}}", 1]}), None);
        assert_eq!(json, serde_json::json!({"a": ["alice", 1]}));
        assert!(!format!("{login:?}").contains("pw-secret"));
    }

    #[test]
    fn login_response_gives_idle_and_absolute_lifetimes_on_the_server_clock() {
        let login = zuora_like();
        let mut headers = HeaderMap::new();
        headers.insert("x-token-expires-in", "600".parse().unwrap());
        headers.insert(
            reqwest::header::DATE,
            "Mon, 23 Nov 2026 10:00:00 GMT".parse().unwrap(),
        );
        let body =
            br#"{"session": {"id": "sess-1", "absolute_expires_at": "2026-11-23T11:00:00Z"}}"#;
        let url = url::Url::parse("http://127.0.0.1:1/login").unwrap();
        let fetched = login.parse_login(&url, &headers, body).unwrap();
        assert_eq!(fetched.value.expose(), "sess-1");
        // The header (600 s) is shorter than the documented minimum (900 s): it wins.
        assert_eq!(fetched.idle_timeout, Some(Duration::from_secs(600)));
        // One hour to the absolute deadline by the server's own clock, minus Date's 1 s.
        assert_eq!(
            fetched.lifetime,
            Lifetime::ExpiresIn(Duration::from_secs(3599))
        );
        assert_eq!(fetched.token_type, "ZSession");
    }

    #[test]
    fn expiry_responses_are_recognised_by_status_and_body() {
        let login = zuora_like();
        let headers = HeaderMap::new();
        assert!(login.is_session_expired(
            StatusCode::UNAUTHORIZED,
            &headers,
            br#"{"message":"Token Expired"}"#
        ));
        assert!(!login.is_session_expired(
            StatusCode::UNAUTHORIZED,
            &headers,
            br#"{"message":"no permission"}"#
        ));
        assert!(login.is_session_expired(
            StatusCode::INTERNAL_SERVER_ERROR,
            &headers,
            b"<fault>INVALID_SESSION</fault>"
        ));
        assert!(!login.is_session_expired(StatusCode::OK, &headers, b"Token Expired is a phrase"));
    }

    #[test]
    fn malformed_login_responses_are_protocol_errors() {
        let login = zuora_like();
        let url = url::Url::parse("http://127.0.0.1:1/login").unwrap();
        let mut headers = HeaderMap::new();
        for body in [
            &b"not json"[..],
            br#"{"session": {}}"#,
            br#"{"session": {"id": 5}}"#,
        ] {
            let err = login.parse_login(&url, &headers, body).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Protocol);
        }
        headers.insert("x-token-expires-in", "soon".parse().unwrap());
        let err = login
            .parse_login(
                &url,
                &headers,
                br#"{"session": {"id": "s", "absolute_expires_at": "2026-11-23T11:00:00Z"}}"#,
            )
            .unwrap_err();
        assert!(err.message().contains("not a number"));
    }

    #[test]
    fn urls_are_shown_from_the_template_without_userinfo_query_or_fragment() {
        assert_eq!(
            redacted_url(
                "http://alice:pw-secret@127.0.0.1:1/login/{{password}}?p={{password}}&k=lit#frag"
            ),
            "http://127.0.0.1:1/login/{{password}}"
        );
        assert_eq!(
            redacted_url("https://api.example/a/{{ token }}/b"),
            "https://api.example/a/{{ token }}/b"
        );
        assert_eq!(redacted_url("not a url pw-secret"), "[not a valid URL]");
    }

    #[test]
    fn the_default_store_key_has_no_url_password() {
        let key = |url: &str| {
            spec(&format!(
                r#"{{"login": {{"url": "{url}"}}, "token": {{"header": "X"}}, "lifetime_s": 60, "send": {{"header": "X"}}}}"#
            ))
            .default_store_key()
        };
        assert_eq!(
            key("http://alice:pw-secret@127.0.0.1:1/login"),
            "server:http://alice@127.0.0.1:1/login"
        );
        assert_eq!(
            key("http://alice:pw@secret@127.0.0.1:1/login?x=1"),
            "server:http://alice@127.0.0.1:1/login?x=1"
        );
        // Without a password the key is the template as written (as before).
        assert_eq!(
            key("http://127.0.0.1:1/login/{{user}}?tenant=t"),
            "server:http://127.0.0.1:1/login/{{user}}?tenant=t"
        );
    }

    #[test]
    fn values_rendered_into_a_url_are_percent_encoded_and_cannot_move_the_host() {
        let spec = spec(
            r#"{"login": {"url": "http://u:{{password}}@127.0.0.1:1/l/{{password}}?p={{password}}"},
                "token": {"header": "X"}, "lifetime_s": 60, "send": {"header": "X"}}"#,
        );
        let credentials = [(
            "password".to_owned(),
            SecretString::from("p@evil:1/w?x#y z"),
        )];
        let login = SessionLogin::new(spec, credentials.into_iter().collect()).unwrap();
        let rendered = login.render_with(&login.spec.login.url, None, Escape::Url);
        let url = url::Url::parse(&rendered).unwrap();
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        assert_eq!(url.port(), Some(1));
        assert_eq!(url.password(), Some("p%40evil%3A1%2Fw%3Fx%23y%20z"));
        assert_eq!(url.path(), "/l/p%40evil%3A1%2Fw%3Fx%23y%20z");
        assert_eq!(url.query_pairs().next().unwrap().1, "p@evil:1/w?x#y z");
    }

    #[test]
    fn debug_shows_no_credential_url_password_or_template_value() {
        let spec = spec(
            r#"{"login": {"url": "http://alice:url-secret@127.0.0.1:1/l/{{password}}?key=query-secret",
                          "headers": {"X-Api-Key": "header-secret"},
                          "json": {"user": "{{username}}", "static": "json-secret"}},
                "token": {"header": "X"}, "lifetime_s": 60, "send": {"header": "X"},
                "logout": {"url": "http://127.0.0.1:1/out/{{token}}", "form": {"k": "form-secret"}}}"#,
        );
        let credentials = [
            ("username".to_owned(), SecretString::from("alice")),
            ("password".to_owned(), SecretString::from("pw-secret")),
        ];
        let login = SessionLogin::new(spec.clone(), credentials.into_iter().collect()).unwrap();
        for shown in [format!("{spec:?}"), format!("{login:?}")] {
            for secret in [
                "url-secret",
                "query-secret",
                "header-secret",
                "json-secret",
                "form-secret",
                "pw-secret",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        assert!(format!("{spec:?}").contains("http://127.0.0.1:1/l/{{password}}"));
        assert!(format!("{login:?}").contains("http://127.0.0.1:1/out/{{token}}"));
    }

    #[test]
    fn spec_errors_name_the_field() {
        let base = r#"{"login": {"url": "http://127.0.0.1:1/l", "json": {"u": "{{user}}"}}, "token": {"header": "X"}, "lifetime_s": 60, "send": {"header": "X"}}"#;
        let err = SessionLogin::new(spec(base), BTreeMap::new()).unwrap_err();
        assert!(err.message().contains("{{user}}"), "{err}");
        let no_lifetime = r#"{"login": {"url": "http://127.0.0.1:1/l"}, "token": {"header": "X"}, "send": {"header": "X"}}"#;
        assert!(SessionLogin::new(spec(no_lifetime), BTreeMap::new())
            .unwrap_err()
            .message()
            .contains("how long"));
        let remote = r#"{"login": {"url": "http://api.example/l"}, "token": {"header": "X"}, "lifetime_s": 5, "send": {"header": "X"}}"#;
        assert!(SessionLogin::new(spec(remote), BTreeMap::new())
            .unwrap_err()
            .message()
            .contains("HTTPS"));
    }

    #[test]
    fn rfc3339_formats_what_it_parses() {
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(format_rfc3339(leap), "2000-02-29T01:02:03Z");
        assert_eq!(
            format_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
        for seconds in [
            0u64,
            951_782_400,
            1_796_157_475,
            4_102_444_799,
            253_402_300_799,
        ] {
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
            assert_eq!(
                parse_rfc3339(&format_rfc3339(time)),
                Some(time),
                "{seconds}"
            );
        }
    }

    #[test]
    fn rfc3339_parses() {
        let t = parse_rfc3339("2026-11-23T11:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_795_431_600
        );
        let offset = parse_rfc3339("2026-11-23T12:00:00.5+01:00").unwrap();
        assert_eq!(
            offset.duration_since(t).unwrap(),
            Duration::from_millis(500)
        );
        for bad in [
            "2026-11-23T10:00:00+9999999999999999:00",
            "2026-11-23T10:00:00+00:999999999999999999",
            "2026-11-23T-999999999999999999:00:00Z",
            "2026-11-23T00:-999999999999999999:00Z",
            "9223372036854775807-11-23T10:00:00Z",
            "100000000000000-01-01T00:00:00Z",
            "2026-11-64t13:-011111111111111111::::1111111111:::::::::::::::1111101",
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-23",
            "2026-11-23T25:00:00Z",
            "x-y-zT1:2:3Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
