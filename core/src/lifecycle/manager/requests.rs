//! The request-side decisions every binding's HTTP integration needs, made in core from the
//! manager's configuration: which header carries the token (a bearer `Authorization`, a
//! session's own header), and what a response means (the token rejected, per the config's
//! `expired` rules, or the token used). Bindings pass status, headers and a bounded body
//! prefix, and retry once when told the token was rejected; nothing else.

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;

use super::Manager;
use crate::error::Result;
use crate::http::authorize::{Authorizer, BearerAuthorizer};
use crate::http::MAX_INSPECTED_ERROR_BODY_BYTES;
use crate::secret::SecretString;

/// Response headers looked at, at most (the rest are ignored).
pub const MAX_JUDGED_HEADERS: usize = 256;

/// What a response to a request made with a token means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// The token was accepted (or the failure is not about it); for a sliding session the
    /// use was recorded.
    Accepted,
    /// The token was rejected (expired, revoked, a session that ended): the manager has
    /// discarded it. Get a token again and retry the request once.
    Rejected,
}

/// The first [`MAX_JUDGED_HEADERS`] well-formed headers.
fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter().take(MAX_JUDGED_HEADERS) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

impl Manager {
    /// How this manager's tokens travel and their rejections are recognised (bearer
    /// tokens unless the configuration says otherwise).
    pub fn authorizer(&self) -> Arc<dyn Authorizer> {
        self.shared
            .authorizer
            .clone()
            .unwrap_or_else(|| Arc::new(BearerAuthorizer))
    }

    /// The header (name, value) that carries a token with this value and type on an API
    /// request; `None` when it travels only in the body ([`Manager::authorize_body`]). The
    /// value contains the token: it is a [`SecretString`].
    pub fn request_header(
        &self,
        value: &SecretString,
        token_type: &str,
    ) -> Result<Option<(String, SecretString)>> {
        let Some((name, value)) = self.authorizer().header(value, token_type)? else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map(|text| SecretString::new(text.to_owned()))
            .unwrap_or_default();
        Ok(Some((name.as_str().to_owned(), value)))
    }

    /// For a configuration that carries the token in request bodies (`send.body`, a SOAP
    /// `SessionHeader`): `body` with the placeholder replaced by the XML-escaped token.
    /// `None` when the token does not travel in bodies (send `body` as it is).
    pub fn authorize_body(&self, value: &SecretString, body: &str) -> Option<SecretString> {
        let authorizer = self.authorizer();
        let placeholder = authorizer.body_placeholder()?;
        let rendered = crate::http::authorize::place_token_in_body(body, placeholder, value);
        Some(SecretString::new(rendered.as_str().to_owned()))
    }

    /// The DPoP proof (RFC 9449) for an API request with a token bound to this manager's
    /// key (`token_type` `DPoP`): send it in the `DPoP` header next to
    /// [`Manager::request_header`]'s. `None` for other tokens.
    pub fn dpop_proof(
        &self,
        method: &str,
        url: &str,
        value: &SecretString,
        token_type: &str,
    ) -> Result<Option<SecretString>> {
        let Some(key) = self.shared.source.dpop_key() else {
            return Ok(None);
        };
        if !token_type.eq_ignore_ascii_case("dpop") {
            return Ok(None);
        }
        let url = url::Url::parse(url).map_err(|_| {
            crate::Error::new(crate::ErrorKind::Usage, "dpop_proof: not an absolute URL")
        })?;
        key.proof(method, &url, Some(value)).map(Some)
    }

    /// The TLS settings of the source (a client certificate for mutual TLS), for API
    /// clients that must present the same certificate as the token requests did.
    pub fn source_tls_options(&self) -> Option<crate::http::TlsOptions> {
        self.shared.source.tls_options().cloned()
    }

    /// After an API request made with a token of `token_type` to `url` was answered with
    /// `status` and `headers`: keeps the `DPoP-Nonce` the answer carried, whatever its status
    /// (the next proofs use it), and says whether to send the same request once more with a
    /// new proof — only for a DPoP-bound token whose 401 brought a new nonce (RFC 9449 §9).
    /// One place decides this for the authorized client and every binding's HTTP helper.
    /// Whether the token itself was rejected is [`Manager::judge_response`]'s question,
    /// asked of the response that follows.
    pub fn dpop_resend(
        &self,
        token_type: &str,
        url: &url::Url,
        status: u16,
        headers: &HeaderMap,
    ) -> bool {
        let fresh = self.remember_dpop_nonce(url, headers);
        fresh && status == 401 && token_type.eq_ignore_ascii_case("dpop")
    }

    /// [`Manager::dpop_resend`] for bindings that hold a URL and header pairs (malformed
    /// ones are skipped; a URL that does not parse keeps nothing and resends nothing).
    pub fn dpop_resend_with_pairs(
        &self,
        token_type: &str,
        url: &str,
        status: u16,
        headers: &[(&str, &str)],
    ) -> bool {
        url::Url::parse(url)
            .is_ok_and(|url| self.dpop_resend(token_type, &url, status, &header_map(headers)))
    }

    /// Keeps the `DPoP-Nonce` a response from `url` carried; `true` when it is new. (To
    /// decide whether to send a request again, use [`Manager::dpop_resend`].)
    pub fn remember_dpop_nonce(&self, url: &url::Url, headers: &HeaderMap) -> bool {
        self.shared
            .source
            .dpop_key()
            .is_some_and(|key| key.remember_nonce(url, headers))
    }

    /// [`Manager::remember_dpop_nonce`] for bindings that hold a URL and header pairs
    /// (malformed ones are skipped).
    pub fn observe_dpop_nonce(&self, url: &str, headers: &[(&str, &str)]) -> bool {
        url::Url::parse(url).is_ok_and(|url| self.remember_dpop_nonce(&url, &header_map(headers)))
    }

    /// Whether a response with this status needs (a prefix of) its body read before
    /// [`Manager::judge_response`] can tell whether it rejects the token. Successful
    /// responses never do.
    pub fn needs_response_body(&self, status: u16) -> bool {
        StatusCode::from_u16(status)
            .is_ok_and(|status| !status.is_success() && self.authorizer().may_be_rejection(status))
    }

    /// Judges the response to a request made with the token of `generation`: a rejection
    /// (per the configuration's rules) discards exactly that token, so the next `token()`
    /// brings a new one and the caller retries once; an accepted response records the use
    /// of a sliding session. `body_prefix` beyond
    /// [`MAX_INSPECTED_ERROR_BODY_BYTES`] and headers beyond [`MAX_JUDGED_HEADERS`] are
    /// ignored; malformed headers are skipped.
    pub fn judge_response(
        &self,
        generation: u64,
        status: u16,
        headers: &[(&str, &str)],
        body_prefix: &[u8],
    ) -> ResponseVerdict {
        let Ok(status) = StatusCode::from_u16(status) else {
            return ResponseVerdict::Accepted;
        };
        let rejected = !status.is_success() && {
            let authorizer = self.authorizer();
            authorizer.may_be_rejection(status) && {
                let map = header_map(headers);
                let body = &body_prefix[..body_prefix.len().min(MAX_INSPECTED_ERROR_BODY_BYTES)];
                authorizer.is_rejection(status, &map, body)
            }
        };
        if rejected {
            self.invalidate_generation(generation);
            return ResponseVerdict::Rejected;
        }
        if let Some(token) = self.shared.current.load_full() {
            if token.generation == generation {
                let remaining = self.authorizer().reported_lifetime(&header_map(headers));
                self.report_use_with(&token, remaining);
            }
        }
        ResponseVerdict::Accepted
    }

    /// [`Manager::report_use`], with the remaining lifetime the server reported on the
    /// response, if any.
    pub(crate) fn report_use_with(
        &self,
        token: &crate::Token,
        remaining: Option<std::time::Duration>,
    ) {
        match remaining {
            Some(remaining) if token.idle.is_some() => {
                token.mark_used_with_remaining(self.shared.clock.now(), remaining);
                self.shared.timer_wakeup.notify_one();
            }
            _ => self.report_use(token),
        }
    }

    /// Asks the server about the current session (vSphere's `GET /api/session`: whose it
    /// is, whether it is alive): the response body. `Configuration` when the source has no
    /// such request; a rejection of the session is `TokenRejected` (the token is then
    /// discarded, like [`Manager::judge_response`] does).
    pub async fn session_info(&self) -> Result<String> {
        let token = self.token().await?.into_arc();
        let shared = self.shared.clone();
        let call_token = crate::Token::clone(&token);
        let answer = super::AbortOnDrop(crate::runtime::spawn(async move {
            shared
                .gated_source_call("session info", move |source| {
                    Box::pin(async move { source.session_info(&call_token).await })
                })
                .await
        }))
        .await;
        match answer {
            Ok(Some(body)) => {
                self.report_use(&token);
                Ok(body)
            }
            Ok(None) => Err(crate::Error::new(
                crate::ErrorKind::Configuration,
                "this manager's source has no session info request (session.info)",
            )),
            Err(err) => {
                if err.kind() == crate::ErrorKind::TokenRejected {
                    self.invalidate(&token);
                }
                Err(err)
            }
        }
    }

    /// Blocking form of [`Manager::session_info`].
    pub fn session_info_blocking(&self) -> Result<String> {
        self.block_on(self.session_info())
    }
}
