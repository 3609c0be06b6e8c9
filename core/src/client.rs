//! An HTTP client that attaches the managed token, reports use for sliding sessions, and
//! on "token rejected" invalidates exactly that token, waits for the one refresh and
//! retries once when the request body can be replayed (feature `http`).

use std::fmt;
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;

use crate::error::{Error, ErrorKind, Result};
use crate::http::{
    endpoint_name, endpoint_url, http_client, is_token_rejected, read_body_prefix, transport_error,
    MAX_INSPECTED_ERROR_BODY_BYTES,
};
use crate::manager::Manager;
use crate::session::{ExpiredSpec, SendSpec, SessionLogin};
use crate::token::Token;

/// How a token is attached to a request and how a rejection of it is recognised.
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// Adds the token to the request headers.
    fn authorize(&self, token: &Token, headers: &mut HeaderMap) -> Result<()>;
    /// Whether a response with this status needs its body read to be classified. Asked
    /// for error statuses only: a successful response is always accepted, its body left
    /// unread for the application.
    fn may_be_rejection(&self, status: StatusCode) -> bool;
    /// Whether the response means the token was rejected (expired, revoked, unknown).
    /// `body` is at most the first [`MAX_INSPECTED_ERROR_BODY_BYTES`] of the body.
    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool;
}

/// OAuth2 bearer tokens (RFC 6750): `Authorization: Bearer <token>`; a 401 with
/// `error="invalid_token"` (or a bare Bearer challenge) is a rejection.
#[derive(Debug, Clone, Copy, Default)]
pub struct BearerAuthorizer;

impl Authorizer for BearerAuthorizer {
    fn authorize(&self, token: &Token, headers: &mut HeaderMap) -> Result<()> {
        let scheme =
            if token.token_type().eq_ignore_ascii_case("bearer") || token.token_type().is_empty() {
                "Bearer"
            } else {
                token.token_type()
            };
        let mut value = HeaderValue::from_str(&format!("{scheme} {}", token.value().expose()))
            .map_err(|_| {
                Error::new(ErrorKind::Protocol, "the token is not a valid header value")
            })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
        Ok(())
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
        let mut value =
            HeaderValue::from_str(&format!("{}{}", self.prefix, token.value().expose())).map_err(
                |_| Error::new(ErrorKind::Protocol, "the token is not a valid header value"),
            )?;
        value.set_sensitive(true);
        Ok((self.header.clone(), value))
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
    fn authorize(&self, token: &Token, headers: &mut HeaderMap) -> Result<()> {
        let (name, value) = self.header_for(token)?;
        headers.insert(name, value);
        Ok(())
    }

    fn may_be_rejection(&self, status: StatusCode) -> bool {
        !status.is_success()
    }

    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        self.is_expired(status, headers, body)
    }
}

impl Authorizer for SessionLogin {
    fn authorize(&self, token: &Token, headers: &mut HeaderMap) -> Result<()> {
        self.authorizer().authorize(token, headers)
    }

    fn may_be_rejection(&self, status: StatusCode) -> bool {
        self.authorizer().may_be_rejection(status)
    }

    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        self.authorizer().is_rejection(status, headers, body)
    }
}

/// Sends requests with the managed token. Redirects are not followed, so credentials
/// never reach another origin; HTTPS is required except for loopback.
#[derive(Clone)]
pub struct AuthorizedClient {
    manager: Manager,
    authorizer: Arc<dyn Authorizer>,
    http: reqwest::Client,
}

impl fmt::Debug for AuthorizedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizedClient")
            .field("manager", &self.manager)
            .field("authorizer", &self.authorizer)
            .finish()
    }
}

/// Marks (in [`reqwest::Response::extensions`]) an error response whose body
/// [`AuthorizedClient`] cut to the first [`MAX_INSPECTED_ERROR_BODY_BYTES`] it read to
/// classify it: the server sent more (possibly without end) and the rest was not read.
/// Error bodies that fit, and every successful response, reach the caller unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorBodyTruncated {
    /// The number of bytes kept (the bound).
    pub kept: usize,
}

/// What happened to one request, for callers that want to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempts {
    /// Sent once.
    Once,
    /// The token was rejected; sent again with a new token.
    RetriedAfterRejection,
    /// The token was rejected and the body could not be replayed; not retried.
    RejectedNotReplayable,
}

enum Classified {
    Accepted(reqwest::Response),
    Rejected(reqwest::Response),
}

impl AuthorizedClient {
    /// A client for `manager`'s tokens, attached the way `authorizer` says.
    pub fn new(manager: Manager, authorizer: Arc<dyn Authorizer>) -> Result<Self> {
        Ok(Self {
            manager,
            authorizer,
            http: http_client()?,
        })
    }

    /// The manager behind the client.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// Starts a request (send it with [`AuthorizedClient::execute`]).
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends `request` with the current token; on a rejection, invalidates that token and
    /// retries once with the refreshed one if the body is replayable.
    ///
    /// A successful response is returned as it came, body unread. An error response the
    /// authorizer wants to inspect has its body read, at most the first
    /// [`MAX_INSPECTED_ERROR_BODY_BYTES`]; the caller gets that body back, whole when it
    /// fit, otherwise cut at the bound and marked with [`ErrorBodyTruncated`].
    pub async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response> {
        self.execute_counted(request)
            .await
            .map(|(response, _)| response)
    }

    /// [`AuthorizedClient::execute`], also saying whether the request was retried.
    pub async fn execute_counted(
        &self,
        request: reqwest::Request,
    ) -> Result<(reqwest::Response, Attempts)> {
        endpoint_url("request url", request.url().as_str())?;
        let replay = request.try_clone();
        let token = self.manager.token().await?.into_arc();
        match self.send(request, &token).await? {
            Classified::Accepted(response) => {
                self.manager.report_use(&token);
                Ok((response, Attempts::Once))
            }
            Classified::Rejected(response) => {
                self.manager.invalidate(&token);
                let Some(replay) = replay else {
                    return Ok((response, Attempts::RejectedNotReplayable));
                };
                let token = self.manager.token().await?.into_arc();
                let response = match self.send(replay, &token).await? {
                    Classified::Accepted(response) => {
                        self.manager.report_use(&token);
                        response
                    }
                    Classified::Rejected(response) => response,
                };
                Ok((response, Attempts::RetriedAfterRejection))
            }
        }
    }

    async fn send(&self, mut request: reqwest::Request, token: &Token) -> Result<Classified> {
        self.authorizer.authorize(token, request.headers_mut())?;
        let url = request.url().clone();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|err| transport_error(&url, &err))?;
        let status = response.status();
        if status.is_success() || !self.authorizer.may_be_rejection(status) {
            return Ok(Classified::Accepted(response));
        }
        // The body decides (e.g. "Token Expired"): read a bounded prefix of it and keep
        // what was read for the caller.
        let mut response = response;
        let (mut body, complete) = read_body_prefix(
            &mut response,
            &endpoint_name(&url),
            MAX_INSPECTED_ERROR_BODY_BYTES,
        )
        .await?;
        let version = response.version();
        let headers = response.headers().clone();
        let rejected = self.authorizer.is_rejection(status, &headers, &body);
        let mut rebuilt = http::Response::new(std::mem::take(&mut *body));
        *rebuilt.status_mut() = status;
        *rebuilt.version_mut() = version;
        *rebuilt.headers_mut() = headers;
        if !complete {
            rebuilt.extensions_mut().insert(ErrorBodyTruncated {
                kept: MAX_INSPECTED_ERROR_BODY_BYTES,
            });
        }
        drop(response);
        let response = reqwest::Response::from(rebuilt);
        Ok(if rejected {
            Classified::Rejected(response)
        } else {
            Classified::Accepted(response)
        })
    }
}
