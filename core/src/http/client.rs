//! An HTTP client that attaches the managed token, reports use for sliding sessions, and
//! on "token rejected" invalidates exactly that token, waits for the one refresh and
//! retries once when the request body can be replayed (feature `http`).

use std::fmt;
use std::sync::Arc;

use crate::error::Result;
pub use crate::http::authorize::{Authorizer, BearerAuthorizer, HeaderAuthorizer};
use crate::http::{
    endpoint_name, endpoint_url, http_client, read_body_prefix, transport_error,
    MAX_INSPECTED_ERROR_BODY_BYTES,
};
use crate::lifecycle::manager::Manager;
use crate::lifecycle::token::Token;

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
        // Certificate-bound tokens (mutual TLS) go to the API with the same certificate.
        let http = match manager.source_tls_options() {
            Some(tls) => crate::http::tls_http_client(&tls)?,
            None => http_client()?,
        };
        Ok(Self {
            manager,
            authorizer,
            http,
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
                self.report_use(&token, &response);
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
                        self.report_use(&token, &response);
                        response
                    }
                    Classified::Rejected(response) => response,
                };
                Ok((response, Attempts::RetriedAfterRejection))
            }
        }
    }

    /// A successful use: a sliding session's idle deadline restarts, or moves to what the
    /// response reports (`reported_lifetime`).
    fn report_use(&self, token: &Token, response: &reqwest::Response) {
        let remaining = self.authorizer.reported_lifetime(response.headers());
        self.manager.report_use_with(token, remaining);
    }

    fn attach_dpop_proof(&self, request: &mut reqwest::Request, token: &Token) -> Result<()> {
        let proof = self.manager.dpop_proof(
            request.method().as_str(),
            request.url().as_str(),
            token.value(),
            token.token_type(),
        )?;
        if let Some(proof) = proof {
            let mut value =
                reqwest::header::HeaderValue::from_str(proof.expose()).map_err(|_| {
                    crate::Error::new(
                        crate::ErrorKind::Internal,
                        "a DPoP proof is not a header value",
                    )
                })?;
            value.set_sensitive(true);
            request.headers_mut().insert("DPoP", value);
        }
        Ok(())
    }

    async fn send(&self, mut request: reqwest::Request, token: &Token) -> Result<Classified> {
        self.authorizer.authorize(token, request.headers_mut())?;
        if let Some(placeholder) = self.authorizer.body_placeholder() {
            let body = request
                .body()
                .and_then(reqwest::Body::as_bytes)
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    crate::Error::new(
                        crate::ErrorKind::Usage,
                        "the token travels in the request body (send.body): give a UTF-8 body \
                         in memory that holds the placeholder",
                    )
                })?;
            let rendered =
                crate::http::authorize::place_token_in_body(body, placeholder, token.value());
            *request.body_mut() = Some(rendered.as_bytes().to_vec().into());
        }
        let url = request.url().clone();
        // DPoP-bound tokens carry a proof per request; core keeps every nonce a response
        // brings and says when a request is worth sending once more with a new proof.
        let dpop_retry = request.try_clone();
        self.attach_dpop_proof(&mut request, token)?;
        let mut response = self
            .http
            .execute(request)
            .await
            .map_err(|err| transport_error(&url, &err))?;
        if self.manager.dpop_resend(
            token.token_type(),
            &url,
            response.status().as_u16(),
            response.headers(),
        ) {
            if let Some(mut retry) = dpop_retry {
                self.attach_dpop_proof(&mut retry, token)?;
                response = self
                    .http
                    .execute(retry)
                    .await
                    .map_err(|err| transport_error(&url, &err))?;
            }
        }
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
