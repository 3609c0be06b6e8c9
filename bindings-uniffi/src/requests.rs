//! Request authorization and response verdicts for Kotlin's and Swift's HTTP helpers: the
//! decisions are core's ([`tokenlease::Manager::request_header`],
//! [`tokenlease::Manager::judge_response`]); the helpers only carry headers and bytes.

use tokenlease::SecretString;

use crate::errors::BindingResult;
use crate::manager::NativeTokenManager;
use crate::token::TokenInfo;

/// A header that carries a token. `value` contains the token: a `SecretString`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RequestHeader {
    /// Header name (`Authorization`, `vmware-api-session-id`, ...).
    pub name: String,
    /// Header value (`Bearer …`, or the session id with the configured prefix).
    pub value: SecretString,
}

/// A response header, as the HTTP library returned it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ResponseHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

#[uniffi::export]
impl NativeTokenManager {
    /// The header that carries `token` on an API request, as this manager's configuration
    /// says (bearer `Authorization`, or a session's own header and prefix); null/nil when
    /// the token travels only in the body (`authorizeBody`).
    pub fn request_header(&self, token: TokenInfo) -> BindingResult<Option<RequestHeader>> {
        Ok(self
            .manager()
            .request_header(&token.value, &token.token_type)?
            .map(|(name, value)| RequestHeader { name, value }))
    }

    /// For a configuration that carries the token in request bodies (a SOAP
    /// `SessionHeader`): `body` with the placeholder replaced by the XML-escaped token;
    /// null/nil when the token does not travel in bodies (send `body` as it is).
    pub fn authorize_body(&self, token: TokenInfo, body: String) -> Option<SecretString> {
        self.manager().authorize_body(&token.value, &body)
    }

    /// Whether a response with `status` needs a prefix of its body (at most 64 KiB) for
    /// `judgeResponse`. Successful responses never do.
    pub fn needs_response_body(&self, status: u16) -> bool {
        self.manager().needs_response_body(status)
    }

    /// The DPoP proof (RFC 9449) for an API request with `token` when it is bound to this
    /// manager's key (token type `DPoP`): send it as the `DPoP` header next to
    /// `requestHeader`'s. null/nil for other tokens.
    pub fn dpop_proof(
        &self,
        token: TokenInfo,
        method: String,
        url: String,
    ) -> BindingResult<Option<SecretString>> {
        Ok(self
            .manager()
            .dpop_proof(&method, &url, &token.value, &token.token_type)?)
    }

    /// Core's answer after an API request made with `token` to `url` was answered with
    /// `status` and `headers` (as received): it keeps the response's `DPoP-Nonce`, whatever
    /// the status, and says whether to send the same request once more with a new proof (a
    /// DPoP-bound token's 401 that brought a new nonce). Ask it for every response to a
    /// request that carried a proof, before `judge_response`; resend at most once.
    pub fn dpop_resend(
        &self,
        token: TokenInfo,
        url: String,
        status: u16,
        headers: Vec<ResponseHeader>,
    ) -> bool {
        self.manager().dpop_resend_with_pairs(
            &token.token_type,
            &url,
            status,
            &header_pairs(&headers),
        )
    }

    /// Keeps the `DPoP-Nonce` a response from `url` carried (`headers` as received); true
    /// when it is new. (Whether to resend a request is `dpop_resend`'s answer.)
    pub fn remember_dpop_nonce(&self, url: String, headers: Vec<ResponseHeader>) -> bool {
        self.manager()
            .observe_dpop_nonce(&url, &header_pairs(&headers))
    }

    /// Asks the server about the current session (vSphere's `GET /api/session`: whose it
    /// is, whether it is alive): the response body. `Configuration` without a `session.info`
    /// request in the configuration.
    pub async fn session_info(&self) -> BindingResult<String> {
        Ok(self.manager().session_info().await?)
    }

    /// Judges the response to a request made with the token of `generation`: `true` when
    /// it rejects the token per the configuration's rules (the manager has discarded it:
    /// get a token again and retry once); `false` otherwise (a sliding session's use is
    /// recorded). Headers beyond 256 and body bytes beyond 64 KiB are ignored.
    pub fn judge_response(
        &self,
        generation: u64,
        status: u16,
        headers: Vec<ResponseHeader>,
        body_prefix: Vec<u8>,
    ) -> bool {
        self.manager()
            .judge_response(generation, status, &header_pairs(&headers), &body_prefix)
            == tokenlease::ResponseVerdict::Rejected
    }
}

fn header_pairs(headers: &[ResponseHeader]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|header| (header.name.as_str(), header.value.as_str()))
        .collect()
}
