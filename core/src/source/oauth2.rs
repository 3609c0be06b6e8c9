//! OAuth2 (RFC 6749) token source: client credentials, password, RFC 8693 token
//! exchange, refresh with rotation, RFC 7009 revocation, optional discovery.
//!
//! # Discovery
//!
//! [`OAuth2Source::discover`] finds the token and revocation endpoints from the issuer's
//! metadata. [`DiscoveryMode::Auto`] (the default) reads
//! `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4: appended
//! to the issuer *including its path*) and, when that answers a 4xx, the RFC 8414 §3 form
//! `https://host/.well-known/oauth-authorization-server/<issuer path>`. The document's
//! `issuer` must be the configured issuer (§4.3 / RFC 8414 §3.3; a terminating `/` aside),
//! else discovery fails with a `Configuration` error naming both values.
//!
//! Documents are cached per issuer in a [`DiscoveryCache`] shared by every source of the
//! process ([`DiscoveryCache::shared`], one hour), fetched once however many sources or
//! callers need them at the same time. When the token or revocation endpoint starts
//! failing as if it had moved (404/410, or the connection is refused), the document is
//! fetched again once and, if it names another endpoint, the request is sent there (a
//! request that never reached a server, so this is safe for a refresh token too). An
//! expired document that cannot be fetched again keeps being used.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::clock::{system_clock, Clock, MonoTime};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{
    basic_auth_header, cross_check_jwt_expiry, discovery_issuer, endpoint_name, endpoint_url,
    form_body, http_client, oauth_authorization_server_url, oauth_error_code,
    oauth_error_description, openid_configuration_url, parse_token_response, quoted_server_value,
    read_body, read_body_prefix, same_issuer, server_date, token_endpoint_error, transport_error,
    MAX_BODY_BYTES, MAX_INSPECTED_ERROR_BODY_BYTES,
};
use crate::lifecycle::token::{FetchedToken, Token};
use crate::secret::SecretString;
use crate::source::assertion::{
    client_assertion, SigningKey, CLIENT_ASSERTION_TYPE, JWT_BEARER_GRANT,
};
use crate::source::authorization::{AuthorizationCode, AuthorizationRequest, InteractiveLogin};
use crate::source::device::{
    judge_poll_error, DeviceAuthorization, PollAnswer, MAX_POLL_INTERVAL, SLOW_DOWN_STEP,
};
use crate::source::dpop::DpopKey;
use crate::source::Source;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`, the RFC's recommendation).
    #[default]
    Basic,
    /// Form fields (`client_secret_post`).
    Post,
    /// A JWT signed with the client's private key (`private_key_jwt`, RFC 7523 §2.2); set
    /// with [`OAuth2Source::private_key_jwt`].
    PrivateKeyJwt,
    /// A JWT signed (HS256) with the client secret (`client_secret_jwt`).
    ClientSecretJwt,
    /// A JWT the platform issued, read from a file before every request (Azure workload
    /// identity's federated credential); set with [`OAuth2Source::client_assertion_file`].
    AssertionFile,
    /// Mutual TLS (RFC 8705 `tls_client_auth` / `self_signed_tls_client_auth`): the client
    /// certificate authenticates; set with [`OAuth2Source::tls`].
    TlsClientAuth,
}

/// A token given as it is, or read from a file before every use: a workload's platform
/// token (a Kubernetes projected service account token, a CI job's OIDC token) that the
/// platform rewrites on disk. A JWT past its `exp` is never sent.
#[derive(Clone)]
pub enum SubjectToken {
    /// The token itself.
    Value(SecretString),
    /// A file holding it, re-read every time (at most 64 KiB, surrounding whitespace
    /// trimmed). Not permission-checked: platforms write these world-readable.
    File(std::path::PathBuf),
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectToken::Value(_) => f.write_str("Value([redacted])"),
            SubjectToken::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl From<SecretString> for SubjectToken {
    fn from(value: SecretString) -> Self {
        SubjectToken::Value(value)
    }
}

/// The largest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

impl SubjectToken {
    /// The token now: the value, or the file's current content. A file that cannot be read
    /// or holds an expired JWT is a transient error (the platform rewrites it).
    pub fn current(&self) -> Result<SecretString> {
        let path = match self {
            SubjectToken::Value(value) => return Ok(value.clone()),
            SubjectToken::File(path) => path,
        };
        use std::io::Read;
        let shown = path.display();
        let mut text = zeroize::Zeroizing::new(String::new());
        std::fs::File::open(path)
            .and_then(|file| {
                file.take(MAX_TOKEN_FILE_BYTES + 1)
                    .read_to_string(&mut text)
            })
            .map_err(|err| {
                Error::new(
                    ErrorKind::Transient,
                    format!("cannot read the token file {shown}: {}", err.kind()),
                )
            })?;
        if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(Error::new(
                ErrorKind::Configuration,
                format!("the token file {shown} is larger than 64 KiB"),
            ));
        }
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::new(
                ErrorKind::Transient,
                format!("the token file {shown} is empty"),
            ));
        }
        if let Some(exp) = crate::http::jwt_expiry(token) {
            if exp <= std::time::SystemTime::now() {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!(
                        "the token in {shown} has expired; waiting for the platform to write a new one"
                    ),
                ));
            }
        }
        Ok(SecretString::new(token.to_owned()))
    }
}

/// The `aud` of client assertions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AssertionAudience {
    /// The token endpoint's URL (RFC 7523; the default).
    #[default]
    TokenEndpoint,
    /// The issuer (discovered sources; fixed endpoints fall back to the token endpoint).
    Issuer,
    /// This exact value.
    Custom(String),
}

/// The primary grant used to obtain a token (refresh tokens are used when issued).
#[derive(Clone)]
pub enum Grant {
    /// `client_credentials` (RFC 6749 §4.4).
    ClientCredentials,
    /// `password` (RFC 6749 §4.3; legacy "password" auth type).
    Password {
        /// Resource owner's user name.
        username: String,
        /// Resource owner's password.
        password: SecretString,
    },
    /// A user's interactive login: the tokens come from the login result handed to
    /// [`crate::Manager::login`] (or from the store after a restart) and are refreshed with
    /// the refresh token. There is no other way to a token: when the refresh token is dead,
    /// callers get [`ErrorKind::LoginRequired`].
    UserLogin,
    /// RFC 7523 §2.1 JWT-bearer grant: an assertion signed with `key` (a Google service
    /// account's key), made fresh for every request.
    JwtBearer {
        /// The assertion's claims.
        assertion: crate::source::assertion::BearerAssertion,
        /// The signing key.
        key: Arc<SigningKey>,
    },
    /// RFC 8693 token exchange: a subject token (e.g. a SAML assertion, or a workload's
    /// platform token from a file) for a new token.
    TokenExchange {
        /// The subject token, or the file it is read from before every exchange.
        subject_token: SubjectToken,
        /// Its type, e.g. `urn:ietf:params:oauth:token-type:saml2`.
        subject_token_type: String,
        /// The requested token type, if any.
        requested_token_type: Option<String>,
    },
}

impl Grant {
    fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::Password { .. } => "password",
            Grant::UserLogin => "user_login",
            Grant::JwtBearer { .. } => JWT_BEARER_GRANT,
            Grant::TokenExchange { .. } => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::ClientCredentials => f.write_str("ClientCredentials"),
            Grant::UserLogin => f.write_str("UserLogin"),
            Grant::JwtBearer { assertion, key } => f
                .debug_struct("JwtBearer")
                .field("issuer", &assertion.issuer)
                .field("key", key)
                .finish(),
            Grant::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"[redacted]")
                .finish(),
            Grant::TokenExchange {
                subject_token_type, ..
            } => f
                .debug_struct("TokenExchange")
                .field("subject_token", &"[redacted]")
                .field("subject_token_type", subject_token_type)
                .finish(),
        }
    }
}

/// Which well-known metadata document(s) discovery reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DiscoveryMode {
    /// `<issuer>/.well-known/openid-configuration`, and when that answers a 4xx (other
    /// than 408/429), `https://host/.well-known/oauth-authorization-server/<path>`.
    #[default]
    Auto,
    /// Only `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4).
    OpenIdConnect,
    /// Only `https://host/.well-known/oauth-authorization-server/<path>` (RFC 8414 §3).
    OAuthAuthorizationServer,
}

/// The endpoints of one authorization server, fixed or discovered.
#[derive(Debug, Clone)]
struct EndpointUrls {
    token: url::Url,
    revocation: Option<url::Url>,
    authorization: Option<url::Url>,
    device_authorization: Option<url::Url>,
}

/// The endpoints one discovery document named.
#[derive(Debug)]
struct Discovered {
    urls: EndpointUrls,
    fetched_at: MonoTime,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Discovered>>>>;

/// Discovery documents by issuer, each kept for a bounded time.
///
/// One instance ([`DiscoveryCache::shared`]) serves every [`OAuth2Source`] of the process
/// unless a source is given its own ([`OAuth2Source::discovery_cache`], e.g. with a manual
/// clock in tests). Concurrent lookups of one issuer make one request. Only the endpoints
/// are kept (no token, no secret).
pub struct DiscoveryCache {
    clock: Arc<dyn Clock>,
    max_age: Duration,
    // A B-tree, not a hash map: its nodes are referenced from their start, so the
    // process-wide cache reads as reachable (not "possibly lost") to leak checkers.
    slots: parking_lot::Mutex<BTreeMap<String, Slot>>,
}

impl fmt::Debug for DiscoveryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryCache")
            .field("max_age", &self.max_age)
            .field("issuers", &self.slots.lock().len())
            .finish()
    }
}

impl DiscoveryCache {
    /// How long the shared cache keeps a document: one hour.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

    /// Beyond this many issuers, documents past their age are dropped from the cache.
    const MAX_ISSUERS: usize = 256;

    /// A cache whose documents are fetched again once older than `max_age` on `clock`.
    pub fn new(clock: Arc<dyn Clock>, max_age: Duration) -> Self {
        Self {
            clock,
            max_age,
            slots: Default::default(),
        }
    }

    /// The process-wide cache (system clock, [`DiscoveryCache::DEFAULT_MAX_AGE`]).
    pub fn shared() -> Arc<Self> {
        static SHARED: OnceLock<Arc<DiscoveryCache>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(Self::new(system_clock(), Self::DEFAULT_MAX_AGE)))
            .clone()
    }

    /// How long a document is kept.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Forgets every document (the next use of each issuer fetches it again).
    pub fn clear(&self) {
        self.slots.lock().clear();
    }

    fn is_fresh(&self, document: &Discovered) -> bool {
        self.clock
            .now()
            .saturating_duration_since(document.fetched_at)
            < self.max_age
    }

    fn slot(&self, key: &str) -> Slot {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        if slots.len() >= Self::MAX_ISSUERS {
            // Keep the map bounded: drop idle slots without a fresh document.
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(document) => document.as_deref().is_some_and(|d| self.is_fresh(d)),
                Err(_) => true,
            });
        }
        slots.entry(key.to_owned()).or_default().clone()
    }
}

#[derive(Clone)]
enum Endpoints {
    Fixed(Box<EndpointUrls>),
    /// Found through discovery at `issuer` on first use (see the module docs).
    Discover {
        issuer: url::Url,
        mode: DiscoveryMode,
        cache: Arc<DiscoveryCache>,
    },
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoints::Fixed(urls) => f
                .debug_struct("Fixed")
                .field("token", &endpoint_name(&urls.token))
                .field("revocation", &urls.revocation.as_ref().map(endpoint_name))
                .finish(),
            Endpoints::Discover { issuer, mode, .. } => f
                .debug_struct("Discover")
                .field("issuer", &endpoint_name(issuer))
                .field("mode", mode)
                .finish(),
        }
    }
}

/// The endpoints a request goes to, and the document they came from (if discovered).
struct Resolved {
    urls: EndpointUrls,
    document: Option<Arc<Discovered>>,
}

#[derive(Clone, Copy)]
enum Endpoint {
    Token,
    Revocation,
    DeviceAuthorization,
}

impl Endpoint {
    fn pick(self, resolved: &Resolved) -> Option<&url::Url> {
        match self {
            Endpoint::Token => Some(&resolved.urls.token),
            Endpoint::Revocation => resolved.urls.revocation.as_ref(),
            Endpoint::DeviceAuthorization => resolved.urls.device_authorization.as_ref(),
        }
    }
}

/// The OAuth2 source with the client-credentials grant (the common case).
pub type ClientCredentials = OAuth2Source;

/// An OAuth2 token source.
#[derive(Clone)]
pub struct OAuth2Source {
    http: reqwest::Client,
    endpoints: Endpoints,
    client_id: String,
    client_secret: Option<SecretString>,
    auth: ClientAuth,
    grant: Grant,
    scopes: Vec<String>,
    audience: Option<String>,
    resource: Option<String>,
    extra_params: Vec<(String, String)>,
    authorization_params: Vec<(String, String)>,
    assertion_key: Option<Arc<SigningKey>>,
    assertion_audience: AssertionAudience,
    assertion_file: Option<SubjectToken>,
    dpop: Option<Arc<DpopKey>>,
    /// Mutual TLS: the client whose connections present the certificate (also used by the
    /// authorized client, so certificate-bound tokens reach the API from the same key).
    tls: Option<crate::http::TlsOptions>,
}

impl fmt::Debug for OAuth2Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Source")
            .field("endpoints", &self.endpoints)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("grant", &self.grant)
            .field("scopes", &self.scopes)
            .field("auth", &self.auth)
            .finish()
    }
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    token_endpoint: String,
    #[serde(default)]
    revocation_endpoint: Option<String>,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
}

impl OAuth2Source {
    /// A client-credentials source for `client_id`/`client_secret` at `token_url`.
    pub fn new(
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
    ) -> Result<Self> {
        Ok(Self {
            http: http_client()?,
            endpoints: Endpoints::Fixed(Box::new(EndpointUrls {
                token: endpoint_url("token_url", token_url)?,
                revocation: None,
                authorization: None,
                device_authorization: None,
            })),
            client_id: client_id.into(),
            client_secret: Some(client_secret.into()),
            auth: ClientAuth::default(),
            grant: Grant::ClientCredentials,
            scopes: Vec::new(),
            audience: None,
            resource: None,
            extra_params: Vec::new(),
            authorization_params: Vec::new(),
            assertion_key: None,
            assertion_audience: AssertionAudience::TokenEndpoint,
            assertion_file: None,
            dpop: None,
            tls: None,
        })
    }

    /// Endpoints found through discovery at `issuer` on first use (see the module docs):
    /// OpenID Connect Discovery, falling back to RFC 8414 metadata, the document's issuer
    /// checked, cached in [`DiscoveryCache::shared`].
    pub fn discover(
        issuer: &str,
        client_id: impl Into<String>,
        client_secret: Option<SecretString>,
    ) -> Result<Self> {
        let issuer = discovery_issuer(issuer)?;
        let mut source = Self::new(issuer.as_str(), client_id, "")?;
        source.client_secret = client_secret;
        source.endpoints = Endpoints::Discover {
            issuer,
            mode: DiscoveryMode::Auto,
            cache: DiscoveryCache::shared(),
        };
        Ok(source)
    }

    /// Which metadata document(s) discovery reads (default [`DiscoveryMode::Auto`]).
    /// Ignored for fixed endpoints.
    pub fn discovery_mode(mut self, mode: DiscoveryMode) -> Self {
        if let Endpoints::Discover { mode: current, .. } = &mut self.endpoints {
            *current = mode;
        }
        self
    }

    /// The cache discovery documents are kept in (default [`DiscoveryCache::shared`]).
    /// Ignored for fixed endpoints.
    pub fn discovery_cache(mut self, cache: Arc<DiscoveryCache>) -> Self {
        if let Endpoints::Discover { cache: current, .. } = &mut self.endpoints {
            *current = cache;
        }
        self
    }

    /// A public client (no secret; `client_id` is sent in the form).
    pub fn without_client_secret(mut self) -> Self {
        self.client_secret = None;
        self
    }

    /// The primary grant (default: client credentials).
    pub fn grant(mut self, grant: Grant) -> Self {
        self.grant = grant;
        self
    }

    /// Requested scopes.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Client authentication method.
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Authenticates with a JWT signed by `key` (`private_key_jwt`, RFC 7523 §2.2): a fresh
    /// `jti` and a one-minute `exp` per request.
    pub fn private_key_jwt(mut self, key: SigningKey) -> Self {
        self.auth = ClientAuth::PrivateKeyJwt;
        self.assertion_key = Some(Arc::new(key));
        self
    }

    /// Authenticates with a JWT the platform writes to `path` (Azure workload identity's
    /// `AZURE_FEDERATED_TOKEN_FILE`), read again before every request.
    pub fn client_assertion_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.auth = ClientAuth::AssertionFile;
        self.assertion_file = Some(SubjectToken::File(path.into()));
        self
    }

    /// TLS settings for every connection of this source: a client certificate (mutual TLS,
    /// RFC 8705: with one, the certificate authenticates the client, `tls_client_auth` or
    /// `self_signed_tls_client_auth`, and tokens may be bound to it) and extra trusted roots.
    pub fn tls(mut self, tls: crate::http::TlsOptions) -> Result<Self> {
        self.http = crate::http::tls_http_client(&tls)?;
        if tls.identity_pem.is_some() {
            self.auth = ClientAuth::TlsClientAuth;
        }
        self.tls = Some(tls);
        Ok(self)
    }

    /// Binds tokens to a fresh per-source key with DPoP (RFC 9449): a proof on every token
    /// request, and ([`crate::Manager::dpop_proof`], the authorized client) on every API
    /// request with a bound token. Server nonces are followed.
    pub fn dpop(mut self) -> Result<Self> {
        self.dpop = Some(Arc::new(DpopKey::generate()?));
        Ok(self)
    }

    /// The `aud` of client assertions (default: the token endpoint).
    pub fn assertion_audience(mut self, audience: AssertionAudience) -> Self {
        self.assertion_audience = audience;
        self
    }

    /// `audience` parameter (RFC 8693 and many IdPs).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// `resource` parameter (RFC 8707).
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Extra form parameters sent with every token request.
    pub fn extra_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_params.push((name.into(), value.into()));
        self
    }

    /// The authorization endpoint for interactive logins
    /// ([`OAuth2Source::authorization_request`]); discovery finds it by itself.
    pub fn authorization_url(self, url: &str) -> Result<Self> {
        self.fixed_endpoint("authorization_url", url, |urls| &mut urls.authorization)
    }

    /// An extra parameter of authorization requests (e.g. `prompt=consent`,
    /// `login_hint`). The protocol's own parameters cannot be overridden.
    pub fn authorization_param(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.authorization_params.push((name.into(), value.into()));
        self
    }

    /// Starts an interactive login (authorization code with PKCE, RFC 7636 S256): the URL
    /// to open in a browser, with a fresh `state`, `nonce` (when `openid` is asked for) and
    /// code challenge. `redirect_uri` must be registered for the client (a loopback one
    /// from [`crate::source::authorization::LoopbackRedirect`] for desktop apps and CLIs).
    pub async fn authorization_request(&self, redirect_uri: &str) -> Result<AuthorizationRequest> {
        let resolved = self.resolve(None).await?;
        let endpoint = resolved.urls.authorization.ok_or_else(|| {
            Error::new(
                ErrorKind::Configuration,
                "no authorization endpoint: configure authorization_url or use an issuer \
                 whose discovery document names one",
            )
        })?;
        AuthorizationRequest::new(
            endpoint,
            &self.client_id,
            redirect_uri,
            &self.scopes,
            &self.authorization_params,
        )
    }

    /// Redeems the code a login returned ([`AuthorizationRequest::code_from_redirect`])
    /// with its PKCE verifier: the access token and, when the server issues one, the
    /// refresh token. A code is redeemed once.
    pub async fn exchange_code(
        &self,
        request: &AuthorizationRequest,
        code: &AuthorizationCode,
    ) -> Result<FetchedToken> {
        let form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", request.redirect_uri()),
            ("code_verifier", request.pkce().verifier().expose()),
        ];
        self.token_request_with(form, false).await
    }

    /// The device authorization endpoint (RFC 8628) for device logins
    /// ([`OAuth2Source::start_device_authorization`]); discovery finds it by itself.
    pub fn device_authorization_url(self, url: &str) -> Result<Self> {
        self.fixed_endpoint("device_authorization_url", url, |urls| {
            &mut urls.device_authorization
        })
    }

    /// Starts a device login (RFC 8628 §3.1): the user code and verification URI to show.
    pub async fn start_device_authorization(&self) -> Result<DeviceAuthorization> {
        let scope = self.scopes.join(" ");
        let mut form = Vec::new();
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        let Some((url, mut response)) = self.post_to(Endpoint::DeviceAuthorization, &form).await?
        else {
            return Err(Error::new(
                ErrorKind::Configuration,
                "no device authorization endpoint: configure device_authorization_url or use an \
                 issuer whose discovery document names one",
            ));
        };
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let (body, _complete) = read_body_prefix(
                &mut response,
                &endpoint_name(&url),
                MAX_INSPECTED_ERROR_BODY_BYTES,
            )
            .await?;
            return Err(token_endpoint_error(&url, status, &headers, &body));
        }
        let body = read_body(response, &endpoint_name(&url), MAX_BODY_BYTES).await?;
        DeviceAuthorization::from_response(&endpoint_name(&url), &body)
    }

    /// Polls the token endpoint for a device login (RFC 8628 §3.4) until the user approved
    /// it: every `interval`, 5 s slower after each `slow_down`. Ends with
    /// [`ErrorKind::Cancelled`] when the user denied it or [`DeviceAuthorization::cancel`]
    /// was called, [`ErrorKind::LoginRequired`] when the code expired first. Transient
    /// failures (5xx, timeouts, connection errors) are polled through until the code expires.
    pub async fn poll_device_authorization(
        &self,
        device: &DeviceAuthorization,
    ) -> Result<FetchedToken> {
        let mut interval = device.interval();
        loop {
            if tokio::time::Instant::now() + interval >= device.deadline() {
                return Err(Error::new(
                    ErrorKind::LoginRequired,
                    "the device code expired before the user approved it; start a new login",
                ));
            }
            device.pause(interval).await?;
            let form = vec![
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", device.device_code().expose()),
            ];
            let Some((url, mut response)) =
                self.post_to(Endpoint::Token, &form).await.or_else(|err| {
                    if err.kind().is_transient() {
                        Ok(None)
                    } else {
                        Err(err)
                    }
                })?
            else {
                continue;
            };
            let status = response.status();
            if status.is_success() {
                return self.token_answer(&url, response).await;
            }
            let headers = response.headers().clone();
            let (body, _complete) = read_body_prefix(
                &mut response,
                &endpoint_name(&url),
                MAX_INSPECTED_ERROR_BODY_BYTES,
            )
            .await?;
            let code = oauth_error_code(&body);
            let description = oauth_error_description(&body);
            match judge_poll_error(code.as_deref(), description.as_deref()) {
                Some(Ok(PollAnswer::Pending)) => {}
                Some(Ok(PollAnswer::SlowDown)) => {
                    interval = (interval + SLOW_DOWN_STEP).min(MAX_POLL_INTERVAL);
                }
                Some(Err(err)) => return Err(err),
                None => {
                    let err = token_endpoint_error(&url, status, &headers, &body);
                    if err.kind().is_transient() {
                        // Like slow_down: the server is struggling; ask less often.
                        interval = (interval + SLOW_DOWN_STEP).min(MAX_POLL_INTERVAL);
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// RFC 7009 revocation endpoint, used by `Manager::revoke`.
    pub fn revocation_url(self, url: &str) -> Result<Self> {
        self.fixed_endpoint("revocation_url", url, |urls| &mut urls.revocation)
    }

    /// Sets an optional endpoint of a source with fixed endpoints (discovery names them).
    fn fixed_endpoint(
        mut self,
        field: &str,
        url: &str,
        slot: impl FnOnce(&mut EndpointUrls) -> &mut Option<url::Url>,
    ) -> Result<Self> {
        let url = endpoint_url(field, url)?;
        match &mut self.endpoints {
            Endpoints::Fixed(urls) => *slot(urls) = Some(url),
            Endpoints::Discover { .. } => {
                return Err(Error::new(
                    ErrorKind::Configuration,
                    format!("{field}: set by discovery; don't configure both"),
                ))
            }
        }
        Ok(self)
    }

    /// The endpoints to use: fixed, or from the cached discovery document. With `failed`
    /// (the document whose endpoint just failed as if moved), the document is fetched again
    /// unless another caller already replaced it.
    async fn resolve(&self, failed: Option<&Arc<Discovered>>) -> Result<Resolved> {
        let (issuer, mode, cache) = match &self.endpoints {
            Endpoints::Fixed(urls) => {
                return Ok(Resolved {
                    urls: EndpointUrls::clone(urls),
                    document: None,
                })
            }
            Endpoints::Discover {
                issuer,
                mode,
                cache,
            } => (issuer, *mode, cache),
        };
        let slot = cache.slot(&format!("{mode:?} {issuer}"));
        let mut current = slot.lock().await;
        let reusable = match (current.as_ref(), failed) {
            (Some(document), None) => cache.is_fresh(document).then(|| document.clone()),
            // Someone fetched it again since this caller's endpoint failed.
            (Some(document), Some(failed)) => {
                (!Arc::ptr_eq(document, failed)).then(|| document.clone())
            }
            (None, _) => None,
        };
        let document = match reusable {
            Some(document) => document,
            None => match self.fetch_discovery(issuer, mode, cache.clock.now()).await {
                Ok(document) => {
                    let document = Arc::new(document);
                    *current = Some(document.clone());
                    document
                }
                // An expired document whose refetch failed is still the best we know.
                Err(err) if failed.is_none() && current.is_some() => {
                    tracing::warn!(
                        issuer = %endpoint_name(issuer),
                        error = %err,
                        "discovery document could not be fetched again; using the previous one"
                    );
                    current.clone().expect("checked")
                }
                Err(err) => return Err(err),
            },
        };
        Ok(Resolved {
            urls: document.urls.clone(),
            document: Some(document),
        })
    }

    async fn fetch_discovery(
        &self,
        issuer: &url::Url,
        mode: DiscoveryMode,
        now: MonoTime,
    ) -> Result<Discovered> {
        let urls = match mode {
            DiscoveryMode::Auto => vec![
                openid_configuration_url(issuer),
                oauth_authorization_server_url(issuer),
            ],
            DiscoveryMode::OpenIdConnect => vec![openid_configuration_url(issuer)],
            DiscoveryMode::OAuthAuthorizationServer => {
                vec![oauth_authorization_server_url(issuer)]
            }
        };
        let mut refused = Vec::new();
        for url in urls {
            let response = self
                .http
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|err| transport_error(&url, &err))?;
            let status = response.status();
            if !status.is_success() {
                // Any other 4xx: this form is not served here; try the next one.
                if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
                    refused.push(format!(
                        "{} answered {}",
                        endpoint_name(&url),
                        status.as_u16()
                    ));
                    continue;
                }
                let kind = match status.as_u16() {
                    429 => ErrorKind::RateLimited,
                    408 => ErrorKind::Timeout,
                    _ if status.is_server_error() => ErrorKind::Transient,
                    _ => ErrorKind::Configuration,
                };
                return Err(Error::new(
                    kind,
                    format!(
                        "discovery: {} answered {}",
                        endpoint_name(&url),
                        status.as_u16()
                    ),
                )
                .with_retry_after(crate::http::retry_after(response.headers())));
            }
            let body = read_body(response, &endpoint_name(&url), MAX_BODY_BYTES).await?;
            let document: DiscoveryDocument = serde_json::from_slice(&body).map_err(|_| {
                Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "{}: not a discovery document with an issuer and a token_endpoint",
                        endpoint_name(&url)
                    ),
                )
            })?;
            if !same_issuer(issuer, &document.issuer) {
                return Err(Error::new(
                    ErrorKind::Configuration,
                    format!(
                        "issuer: configured as {:?} but its discovery document {} names the issuer {}; \
                         they must be identical (OpenID Connect Discovery 1.0 §4.3, RFC 8414 §3.3): \
                         configure the issuer exactly as the document names it",
                        endpoint_name(issuer).trim_end_matches('/'),
                        endpoint_name(&url),
                        quoted_server_value(&document.issuer)
                    ),
                ));
            }
            let optional = |field: &str, url: Option<&str>| {
                url.map(|url| endpoint_url(field, url)).transpose()
            };
            return Ok(Discovered {
                urls: EndpointUrls {
                    token: endpoint_url("discovery.token_endpoint", &document.token_endpoint)?,
                    revocation: optional(
                        "discovery.revocation_endpoint",
                        document.revocation_endpoint.as_deref(),
                    )?,
                    authorization: optional(
                        "discovery.authorization_endpoint",
                        document.authorization_endpoint.as_deref(),
                    )?,
                    device_authorization: optional(
                        "discovery.device_authorization_endpoint",
                        document.device_authorization_endpoint.as_deref(),
                    )?,
                },
                fetched_at: now,
            });
        }
        Err(Error::new(
            ErrorKind::Configuration,
            format!(
                "issuer {}: no discovery document ({}); check the issuer",
                endpoint_name(issuer).trim_end_matches('/'),
                refused.join(", ")
            ),
        ))
    }

    /// Posts `form` with the client's authentication. The form borrows the secrets (no
    /// copies); the encoded body is built in a buffer wiped on drop, and reqwest gets a copy
    /// of its bytes (that copy, like hyper's and rustls' buffers, is not ours to wipe).
    async fn post_form(
        &self,
        url: &url::Url,
        form: &[(&str, &str)],
        assertion: Option<&SecretString>,
        proof: Option<&SecretString>,
    ) -> std::result::Result<reqwest::Response, reqwest::Error> {
        let mut form = form.to_vec();
        let mut request = self.http.post(url.clone());
        if let Some(proof) = proof.and_then(|proof| {
            let mut value = reqwest::header::HeaderValue::from_str(proof.expose()).ok()?;
            value.set_sensitive(true);
            Some(value)
        }) {
            request = request.header("DPoP", proof);
        }
        if let Some(assertion) = assertion {
            form.push(("client_id", &self.client_id));
            form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
            form.push(("client_assertion", assertion.expose()));
        }
        match (&self.client_secret, self.auth) {
            (_, ClientAuth::TlsClientAuth) => form.push(("client_id", &self.client_id)),
            (
                _,
                ClientAuth::PrivateKeyJwt | ClientAuth::ClientSecretJwt | ClientAuth::AssertionFile,
            ) => {}
            (Some(secret), ClientAuth::Basic) => {
                // A header that cannot be built is reported like a failed request below.
                if let Ok(header) = basic_auth_header(&self.client_id, secret.expose()) {
                    request = request.header(reqwest::header::AUTHORIZATION, header);
                }
            }
            (Some(secret), ClientAuth::Post) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret.expose()));
            }
            // A JWT-bearer assertion names the client itself (Google wants nothing else).
            (None, _) if matches!(self.grant, Grant::JwtBearer { .. }) && assertion.is_none() => {}
            (None, _) => form.push(("client_id", &self.client_id)),
        }
        let body = form_body(&form);
        request
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.as_bytes().to_vec())
            .send()
            .await
    }

    /// The client assertion for a request to `url`, when the client authenticates with one.
    fn client_assertion_for(&self, url: &url::Url) -> Result<Option<SecretString>> {
        let key = match (self.auth, &self.assertion_key, &self.client_secret) {
            (ClientAuth::AssertionFile, ..) => {
                return self
                    .assertion_file
                    .as_ref()
                    .map(SubjectToken::current)
                    .transpose()
            }
            (ClientAuth::PrivateKeyJwt, Some(key), _) => Arc::clone(key),
            (ClientAuth::ClientSecretJwt, _, Some(secret)) => Arc::new(SigningKey::hmac(secret)),
            _ => return Ok(None),
        };
        let audience = match (&self.assertion_audience, &self.endpoints) {
            (AssertionAudience::Custom(audience), _) => audience.clone(),
            (AssertionAudience::Issuer, Endpoints::Discover { issuer, .. }) => {
                issuer.as_str().trim_end_matches('/').to_owned()
            }
            _ => url.as_str().to_owned(),
        };
        client_assertion(&key, &self.client_id, &audience).map(Some)
    }

    /// Posts `form` to the token or revocation endpoint (`None`: there is no revocation
    /// endpoint). When a discovered endpoint answers 404/410 or refuses the connection, the
    /// discovery document is fetched again once and, if it names another endpoint, the
    /// form is sent there instead (nothing reached a server, so the retry is safe).
    async fn post_to(
        &self,
        endpoint: Endpoint,
        form: &[(&str, &str)],
    ) -> Result<Option<(url::Url, reqwest::Response)>> {
        if let (Some(secret), ClientAuth::Basic) = (&self.client_secret, self.auth) {
            // Fail early (and with our error) when the credentials cannot be a header.
            basic_auth_header(&self.client_id, secret.expose())?;
        }
        let resolved = self.resolve(None).await?;
        let Some(url) = endpoint.pick(&resolved).cloned() else {
            return Ok(None);
        };
        let outcome = self.send_form(&url, form).await?;
        let moved = match &outcome {
            Ok(response) => matches!(response.status().as_u16(), 404 | 410),
            Err(err) => err.is_connect(),
        };
        if let (true, Some(document)) = (moved, &resolved.document) {
            match self.resolve(Some(document)).await {
                Ok(fresh) => {
                    if let Some(new_url) = endpoint.pick(&fresh).filter(|new| **new != url) {
                        tracing::info!(
                            from = %endpoint_name(&url),
                            to = %endpoint_name(new_url),
                            "endpoint moved: discovery names another one; sending there"
                        );
                        drop(outcome);
                        let response = self
                            .send_form(new_url, form)
                            .await?
                            .map_err(|err| transport_error(new_url, &err))?;
                        return Ok(Some((new_url.clone(), response)));
                    }
                }
                Err(err) => tracing::debug!(
                    error = %err,
                    "discovery could not be fetched again after an endpoint failed"
                ),
            }
        }
        match outcome {
            Ok(response) => Ok(Some((url, response))),
            Err(err) => Err(transport_error(&url, &err)),
        }
    }

    /// One POST with a fresh client assertion and DPoP proof; a refusal that brings a new
    /// DPoP nonce (`use_dpop_nonce`) is sent once more with it.
    /// The outer error is ours (an assertion file that cannot be read), the inner one the
    /// transport's.
    async fn send_form(
        &self,
        url: &url::Url,
        form: &[(&str, &str)],
    ) -> Result<std::result::Result<reqwest::Response, reqwest::Error>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let assertion = self.client_assertion_for(url)?;
            let proof = self
                .dpop
                .as_ref()
                .map(|key| key.proof("POST", url, None))
                .transpose()?;
            let response = match self
                .post_form(url, form, assertion.as_ref(), proof.as_ref())
                .await
            {
                Ok(response) => response,
                Err(err) => return Ok(Err(err)),
            };
            let fresh_nonce = self
                .dpop
                .as_ref()
                .is_some_and(|key| key.remember_nonce(url, response.headers()));
            let refused = matches!(response.status().as_u16(), 400 | 401);
            if !(fresh_nonce && refused && attempts == 1) {
                return Ok(Ok(response));
            }
        }
    }

    async fn token_request(&self, form: Vec<(&str, &str)>) -> Result<FetchedToken> {
        self.token_request_with(form, true).await
    }

    /// `with_scope`: send the source's scopes (a code exchange carries none: the scopes
    /// were granted with the code).
    async fn token_request_with(
        &self,
        form: Vec<(&str, &str)>,
        with_scope: bool,
    ) -> Result<FetchedToken> {
        let scope = self.scopes.join(" ");
        // Rebound so the form may also hold borrows of locals and `self`.
        let mut form = form;
        if with_scope && !self.scopes.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(audience) = &self.audience {
            form.push(("audience", audience));
        }
        if let Some(resource) = &self.resource {
            form.push(("resource", resource));
        }
        for (name, value) in &self.extra_params {
            form.push((name, value));
        }
        let Some((token_url, mut response)) = self.post_to(Endpoint::Token, &form).await? else {
            unreachable!("a token endpoint is always resolved");
        };
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            self.token_answer(&token_url, response).await
        } else {
            // An error is judged by its status and the start of its body (an OAuth2 error
            // object is small): a gateway's endless 503 page stays a transient error.
            let (body, _complete) = read_body_prefix(
                &mut response,
                &endpoint_name(&token_url),
                MAX_INSPECTED_ERROR_BODY_BYTES,
            )
            .await?;
            Err(token_endpoint_error(&token_url, status, &headers, &body))
        }
    }
}

impl OAuth2Source {
    /// Reads a successful token endpoint answer.
    async fn token_answer(
        &self,
        token_url: &url::Url,
        response: reqwest::Response,
    ) -> Result<FetchedToken> {
        let headers = response.headers().clone();
        let body = read_body(response, &endpoint_name(token_url), MAX_BODY_BYTES).await?;
        let fetched = parse_token_response(token_url, &body)?;
        Ok(cross_check_jwt_expiry(fetched, server_date(&headers)))
    }
}

#[async_trait]
impl InteractiveLogin for OAuth2Source {
    async fn authorization_request(&self, redirect_uri: &str) -> Result<AuthorizationRequest> {
        OAuth2Source::authorization_request(self, redirect_uri).await
    }

    async fn exchange_code(
        &self,
        request: &AuthorizationRequest,
        code: &AuthorizationCode,
    ) -> Result<FetchedToken> {
        OAuth2Source::exchange_code(self, request, code).await
    }

    async fn start_device_authorization(&self) -> Result<DeviceAuthorization> {
        OAuth2Source::start_device_authorization(self).await
    }

    async fn poll_device_authorization(
        &self,
        device: &DeviceAuthorization,
    ) -> Result<FetchedToken> {
        OAuth2Source::poll_device_authorization(self, device).await
    }
}

/// RFC 8628 §3.4.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[async_trait]
impl Source for OAuth2Source {
    async fn fetch(&self) -> Result<FetchedToken> {
        if let Grant::UserLogin = self.grant {
            return Err(Error::new(
                ErrorKind::LoginRequired,
                "the user must log in again: there is no usable refresh token",
            ));
        }
        let assertion;
        let subject;
        let mut form = vec![("grant_type", self.grant.name())];
        match &self.grant {
            Grant::ClientCredentials | Grant::UserLogin => {}
            Grant::JwtBearer {
                assertion: claims,
                key,
            } => {
                let token_url = self.resolve(None).await?.urls.token;
                assertion = claims.sign(key, token_url.as_str())?;
                form.push(("assertion", assertion.expose()));
                // Scopes named in the assertion (Google) are not sent again in the form.
                if claims.scope.is_some() {
                    return self.token_request_with(form, false).await;
                }
            }
            Grant::Password { username, password } => {
                form.push(("username", username));
                form.push(("password", password.expose()));
            }
            Grant::TokenExchange {
                subject_token,
                subject_token_type,
                requested_token_type,
            } => {
                subject = subject_token.current()?;
                form.push(("subject_token", subject.expose()));
                form.push(("subject_token_type", subject_token_type));
                if let Some(requested) = requested_token_type {
                    form.push(("requested_token_type", requested));
                }
            }
        }
        self.token_request(form).await
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<FetchedToken> {
        self.token_request(vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ])
        .await
    }

    fn interactive_login(&self) -> Option<&dyn InteractiveLogin> {
        Some(self)
    }

    fn dpop_key(&self) -> Option<&DpopKey> {
        self.dpop.as_deref()
    }

    fn tls_options(&self) -> Option<&crate::http::TlsOptions> {
        self.tls.as_ref()
    }

    async fn revoke(&self, token: &Token) -> Result<()> {
        let mut to_revoke = vec![(token.value(), "access_token")];
        if let Some(refresh) = token.refresh_token() {
            to_revoke.push((refresh, "refresh_token"));
        }
        for (value, hint) in to_revoke {
            let form = [("token", value.expose()), ("token_type_hint", hint)];
            let Some((url, response)) = self.post_to(Endpoint::Revocation, &form).await? else {
                return Ok(());
            };
            let status = response.status();
            if !status.is_success() {
                let headers = response.headers().clone();
                // The status already says it failed; the body only refines the kind. An
                // unreadable body is ignored, an oversized one is reported as such.
                let body = match read_body(response, &endpoint_name(&url), MAX_BODY_BYTES).await {
                    Ok(body) => body,
                    Err(err) if err.kind() == ErrorKind::Protocol => return Err(err),
                    Err(_) => Default::default(),
                };
                // RFC 7009 §2.2.1: the server does not revoke this type of token (e.g. a
                // server that revokes refresh tokens only). Nothing to do for this one; it
                // ends by itself.
                if status == reqwest::StatusCode::BAD_REQUEST
                    && oauth_error_code(&body).as_deref() == Some("unsupported_token_type")
                {
                    tracing::debug!(
                        endpoint = %endpoint_name(&url),
                        token_type = hint,
                        "the revocation endpoint does not revoke this token type"
                    );
                    continue;
                }
                return Err(token_endpoint_error(&url, status, &headers, &body));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Discovery, re-discovery and error mapping against a scripted loopback HTTP server
    //! (every answer chosen by the test; the live third-party servers are in
    //! core/tests/oidc_interop.rs).

    use std::sync::atomic::{AtomicU16, Ordering};

    use parking_lot::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::clock::ManualClock;
    use crate::Manager;

    struct Request {
        path: String,
        body: String,
    }

    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    }

    fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.into(),
        }
    }

    fn html(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "text/html".to_owned())],
            body: format!("<html><body><h1>{status}</h1>An error occurred.</body></html>"),
        }
    }

    fn token_reply() -> Reply {
        json(
            200,
            r#"{"access_token":"at-1","token_type":"Bearer","expires_in":600,"refresh_token":"rt-1"}"#,
        )
    }

    type Handler = Arc<dyn Fn(&Request, &str) -> Reply + Send + Sync>;

    /// A loopback HTTP/1.1 server answering each request with `handler(request, base)`,
    /// one request per connection; it records "METHOD /path" of each.
    struct Scripted {
        base: String,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Scripted {
        async fn start(handler: impl Fn(&Request, &str) -> Reply + Send + Sync + 'static) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let log = Arc::new(Mutex::new(Vec::new()));
            let handler: Handler = Arc::new(handler);
            let (task_log, task_base) = (log.clone(), base.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (handler, log, base) =
                        (handler.clone(), task_log.clone(), task_base.clone());
                    tokio::spawn(async move {
                        let _ = serve(stream, handler, log, base).await;
                    });
                }
            });
            Self { base, log }
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        fn requests(&self) -> Vec<String> {
            self.log.lock().clone()
        }

        fn count(&self, request: &str) -> usize {
            self.log.lock().iter().filter(|r| *r == request).count()
        }
    }

    async fn serve(
        mut stream: tokio::net::TcpStream,
        handler: Handler,
        log: Arc<Mutex<Vec<String>>>,
        base: String,
    ) -> std::io::Result<()> {
        let mut data = Vec::new();
        let mut buffer = [0u8; 4096];
        let head_end = loop {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                return Ok(());
            }
            data.extend_from_slice(&buffer[..read]);
            if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_string();
        let mut lines = head.lines();
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_owned();
        let path = first.next().unwrap_or_default().to_owned();
        let length: usize = lines
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0);
        while data.len() < head_end + length {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            data.extend_from_slice(&buffer[..read]);
        }
        let body = String::from_utf8_lossy(&data[head_end..]).to_string();
        log.lock().push(format!("{method} {path}"));
        let reply = handler(&Request { path, body }, &base);
        let mut response = format!(
            "HTTP/1.1 {} X\r\nconnection: close\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (name, value) in &reply.headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&reply.body);
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }

    fn document(issuer: &str, token: &str) -> Reply {
        json(
            200,
            format!(
                r#"{{"issuer":"{issuer}","token_endpoint":"{token}","revocation_endpoint":"{token}/revoke"}}"#
            ),
        )
    }

    fn private_cache() -> (Arc<ManualClock>, Arc<DiscoveryCache>) {
        let clock = Arc::new(ManualClock::new());
        let cache = Arc::new(DiscoveryCache::new(clock.clone(), Duration::from_secs(60)));
        (clock, cache)
    }

    fn source(issuer: &str, cache: &Arc<DiscoveryCache>) -> OAuth2Source {
        OAuth2Source::discover(issuer, "client", Some("secret".into()))
            .unwrap()
            .discovery_cache(cache.clone())
    }

    /// A path issuer whose server publishes OpenID Connect metadata under the issuer path.
    async fn oidc_server() -> Scripted {
        Scripted::start(|request, base| match request.path.as_str() {
            "/realms/tl/.well-known/openid-configuration" => document(
                &format!("{base}/realms/tl"),
                &format!("{base}/realms/tl/token"),
            ),
            "/realms/tl/token" => token_reply(),
            _ => json(404, r#"{"error":"not_found"}"#),
        })
        .await
    }

    #[tokio::test]
    async fn a_path_issuer_is_discovered_under_its_path() {
        let server = oidc_server().await;
        let (_, cache) = private_cache();
        // With and without a terminating slash (OIDC Discovery §4.1 removes it).
        for issuer in [server.url("/realms/tl"), server.url("/realms/tl/")] {
            let fetched = source(&issuer, &cache).fetch().await.unwrap();
            assert_eq!(fetched.value.expose(), "at-1");
            cache.clear();
        }
        assert_eq!(
            server.requests(),
            [
                "GET /realms/tl/.well-known/openid-configuration",
                "POST /realms/tl/token",
                "GET /realms/tl/.well-known/openid-configuration",
                "POST /realms/tl/token",
            ]
        );
    }

    #[tokio::test]
    async fn rfc_8414_metadata_is_read_when_there_is_no_openid_configuration() {
        let server = Scripted::start(|request, base| match request.path.as_str() {
            "/.well-known/oauth-authorization-server/tenant/v2" => {
                document(&format!("{base}/tenant/v2"), &format!("{base}/oauth/token"))
            }
            "/oauth/token" => token_reply(),
            _ => html(404),
        })
        .await;
        let (_, cache) = private_cache();
        let fetched = source(&server.url("/tenant/v2"), &cache)
            .fetch()
            .await
            .unwrap();
        assert_eq!(fetched.value.expose(), "at-1");
        assert_eq!(
            server.requests(),
            [
                "GET /tenant/v2/.well-known/openid-configuration",
                "GET /.well-known/oauth-authorization-server/tenant/v2",
                "POST /oauth/token",
            ]
        );

        // Only the OpenID Connect form: a configuration error naming what was tried.
        let err = source(&server.url("/tenant/v2"), &private_cache().1)
            .discovery_mode(DiscoveryMode::OpenIdConnect)
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
        assert!(
            err.message().contains(&format!(
                "{}/tenant/v2/.well-known/openid-configuration answered 404",
                server.base
            )),
            "{err}"
        );
        // Only the RFC 8414 form: one request for the document.
        let before = server.requests().len();
        source(&server.url("/tenant/v2"), &private_cache().1)
            .discovery_mode(DiscoveryMode::OAuthAuthorizationServer)
            .fetch()
            .await
            .unwrap();
        assert_eq!(
            server.requests()[before..],
            [
                "GET /.well-known/oauth-authorization-server/tenant/v2",
                "POST /oauth/token"
            ]
        );
    }

    #[tokio::test]
    async fn no_document_at_either_url_names_both() {
        let server = Scripted::start(|_, _| html(404)).await;
        let err = source(&server.url("/realms/x"), &private_cache().1)
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        let base = &server.base;
        assert_eq!(
            err.message(),
            format!(
                "issuer {base}/realms/x: no discovery document ({base}/realms/x/.well-known/openid-configuration \
                 answered 404, {base}/.well-known/oauth-authorization-server/realms/x answered 404); check the issuer"
            )
        );
        // A server error is no reason to try the other form.
        let failing = Scripted::start(|_, _| html(503)).await;
        let err = source(&failing.url("/realms/x"), &private_cache().1)
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(failing.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_document_naming_another_issuer_is_a_configuration_error_naming_both() {
        let server = Scripted::start(|request, base| match request.path.as_str() {
            "/realms/tl/.well-known/openid-configuration" => {
                document(&format!("{base}/realms/other"), &format!("{base}/token"))
            }
            _ => token_reply(),
        })
        .await;
        let err = source(&server.url("/realms/tl"), &private_cache().1)
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        let base = &server.base;
        assert_eq!(
            err.message(),
            format!(
                "issuer: configured as \"{base}/realms/tl\" but its discovery document \
                 {base}/realms/tl/.well-known/openid-configuration names the issuer \"{base}/realms/other\"; \
                 they must be identical (OpenID Connect Discovery 1.0 §4.3, RFC 8414 §3.3): configure the \
                 issuer exactly as the document names it"
            )
        );
        // No token request was made with endpoints from that document.
        assert_eq!(server.count("POST /token"), 0);
    }

    #[tokio::test]
    async fn localhost_and_127_0_0_1_are_different_issuers() {
        let server = oidc_server().await;
        let port = server.base.rsplit(':').next().unwrap().to_owned();
        let err = source(
            &format!("http://localhost:{port}/realms/tl"),
            &private_cache().1,
        )
        .fetch()
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("names the issuer"), "{err}");
    }

    #[tokio::test]
    async fn documents_are_cached_per_issuer_for_every_source_and_fetched_again_when_old() {
        let server = oidc_server().await;
        let (clock, cache) = private_cache();
        let issuer = server.url("/realms/tl");
        let doc = "GET /realms/tl/.well-known/openid-configuration";
        // Eight sources of one issuer at once: one document request.
        let fetches: Vec<_> = (0..8)
            .map(|_| {
                let source = source(&issuer, &cache);
                tokio::spawn(async move { source.fetch().await })
            })
            .collect();
        for fetch in fetches {
            fetch.await.unwrap().unwrap();
        }
        assert_eq!(server.count(doc), 1);
        assert_eq!(server.count("POST /realms/tl/token"), 8);
        // Within max_age: still cached.
        clock.advance(Duration::from_secs(59));
        source(&issuer, &cache).fetch().await.unwrap();
        assert_eq!(server.count(doc), 1);
        // Past it: fetched again, once.
        clock.advance(Duration::from_secs(2));
        source(&issuer, &cache).fetch().await.unwrap();
        source(&issuer, &cache).fetch().await.unwrap();
        assert_eq!(server.count(doc), 2);
        // Another cache (another process, in effect) fetches its own.
        source(&issuer, &private_cache().1).fetch().await.unwrap();
        assert_eq!(server.count(doc), 3);
    }

    #[tokio::test]
    async fn the_shared_cache_is_one_per_process_and_keeps_documents_an_hour() {
        assert!(Arc::ptr_eq(
            &DiscoveryCache::shared(),
            &DiscoveryCache::shared()
        ));
        assert_eq!(
            DiscoveryCache::shared().max_age(),
            Duration::from_secs(3600)
        );
        let server = oidc_server().await;
        let issuer = server.url("/realms/tl");
        OAuth2Source::discover(&issuer, "a", Some("s".into()))
            .unwrap()
            .fetch()
            .await
            .unwrap();
        OAuth2Source::discover(&issuer, "b", None)
            .unwrap()
            .fetch()
            .await
            .unwrap();
        assert_eq!(
            server.count("GET /realms/tl/.well-known/openid-configuration"),
            1
        );
    }

    #[tokio::test]
    async fn an_expired_document_that_cannot_be_fetched_again_is_still_used() {
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = down.clone();
        let server = Scripted::start(move |request, base| match request.path.as_str() {
            "/realms/tl/.well-known/openid-configuration" if flag.load(Ordering::SeqCst) => {
                html(503)
            }
            "/realms/tl/.well-known/openid-configuration" => document(
                &format!("{base}/realms/tl"),
                &format!("{base}/realms/tl/token"),
            ),
            _ => token_reply(),
        })
        .await;
        let (clock, cache) = private_cache();
        let source = source(&server.url("/realms/tl"), &cache);
        source.fetch().await.unwrap();
        down.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(3600));
        source.fetch().await.unwrap();
        assert_eq!(
            server.count("GET /realms/tl/.well-known/openid-configuration"),
            2
        );
        assert_eq!(server.count("POST /realms/tl/token"), 2);
    }

    /// The document names `/v{version}/token`; only the current version's endpoint exists.
    async fn moving_server() -> (Scripted, Arc<AtomicU16>) {
        let version = Arc::new(AtomicU16::new(1));
        let current = version.clone();
        let server = Scripted::start(move |request, base| {
            let v = current.load(Ordering::SeqCst);
            match request.path.as_str() {
                "/realms/tl/.well-known/openid-configuration" => {
                    document(&format!("{base}/realms/tl"), &format!("{base}/v{v}/token"))
                }
                path if path == format!("/v{v}/token") => token_reply(),
                path if path == format!("/v{v}/token/revoke") => json(200, "{}"),
                _ => html(404),
            }
        })
        .await;
        (server, version)
    }

    #[tokio::test]
    async fn a_token_endpoint_that_moved_is_found_again_through_discovery() {
        let (server, version) = moving_server().await;
        let (_, cache) = private_cache();
        let source = source(&server.url("/realms/tl"), &cache);
        source.fetch().await.unwrap();
        version.store(2, Ordering::SeqCst);
        // The refresh goes to /v1/token (404), discovery names /v2/token, sent there once.
        let refreshed = source.refresh(&"rt-1".into()).await.unwrap();
        assert_eq!(refreshed.value.expose(), "at-1");
        assert_eq!(
            server.requests(),
            [
                "GET /realms/tl/.well-known/openid-configuration",
                "POST /v1/token",
                "POST /v1/token",
                "GET /realms/tl/.well-known/openid-configuration",
                "POST /v2/token",
            ]
        );
        // Other sources of the issuer got the new document too.
        let other = self::source(&server.url("/realms/tl"), &cache);
        other.fetch().await.unwrap();
        assert_eq!(server.requests().last().unwrap(), "POST /v2/token");
        assert_eq!(
            server.count("GET /realms/tl/.well-known/openid-configuration"),
            2
        );
    }

    #[tokio::test]
    async fn a_missing_endpoint_discovery_still_names_is_a_configuration_error() {
        let server = Scripted::start(|request, base| match request.path.as_str() {
            "/realms/tl/.well-known/openid-configuration" => {
                document(&format!("{base}/realms/tl"), &format!("{base}/gone/token"))
            }
            _ => html(404),
        })
        .await;
        let err = source(&server.url("/realms/tl"), &private_cache().1)
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
        assert!(
            err.message()
                .ends_with("/gone/token answered 404: no such endpoint (check the URL)"),
            "{err}"
        );
        // One discovery again, no second token request to the same URL.
        assert_eq!(
            server.requests(),
            [
                "GET /realms/tl/.well-known/openid-configuration",
                "POST /gone/token",
                "GET /realms/tl/.well-known/openid-configuration",
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_where_discovery_now_points() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let moved = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = moved.clone();
        let server = Scripted::start(move |request, base| match request.path.as_str() {
            "/realms/tl/.well-known/openid-configuration" if flag.load(Ordering::SeqCst) => {
                document(&format!("{base}/realms/tl"), &format!("{base}/token"))
            }
            "/realms/tl/.well-known/openid-configuration" => document(
                &format!("{base}/realms/tl"),
                &format!("http://127.0.0.1:{closed}/token"),
            ),
            _ => token_reply(),
        })
        .await;
        let (_, cache) = private_cache();
        let source = source(&server.url("/realms/tl"), &cache);
        let err = source.fetch().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert!(
            err.message().ends_with("/token: connection failed"),
            "{err}"
        );
        moved.store(true, Ordering::SeqCst);
        source.fetch().await.unwrap();
        assert_eq!(
            server.requests(),
            [
                "GET /realms/tl/.well-known/openid-configuration",
                "GET /realms/tl/.well-known/openid-configuration",
                "GET /realms/tl/.well-known/openid-configuration",
                "POST /token",
            ]
        );
    }

    #[tokio::test]
    async fn a_revocation_endpoint_that_moved_is_found_again_and_unsupported_types_are_skipped() {
        let (server, version) = moving_server().await;
        let (_, cache) = private_cache();
        let manager = Manager::builder(source(&server.url("/realms/tl"), &cache)).build();
        manager.token().await.unwrap();
        version.store(2, Ordering::SeqCst);
        manager.revoke().await.unwrap();
        assert_eq!(server.count("POST /v1/token/revoke"), 1);
        assert_eq!(server.count("POST /v2/token/revoke"), 2);

        // A server that revokes refresh tokens only (RFC 7009 §2.2.1 unsupported_token_type
        // for the access token, as mock-oauth2-server): revoke goes on with the refresh token.
        let server = Scripted::start(|request, _| {
            if request.path == "/revoke" && request.body.contains("token_type_hint=access_token") {
                json(400, r#"{"error":"unsupported_token_type"}"#)
            } else if request.path == "/revoke" {
                json(200, "ok")
            } else {
                token_reply()
            }
        })
        .await;
        let revoking_at = |server: &Scripted| {
            let source = OAuth2Source::new(&server.url("/token"), "client", "secret")
                .unwrap()
                .revocation_url(&server.url("/revoke"))
                .unwrap();
            Manager::builder(source).build()
        };
        let manager = revoking_at(&server);
        manager.token().await.unwrap();
        manager.revoke().await.unwrap();
        assert_eq!(server.count("POST /revoke"), 2);
        // Any other revocation error still fails the revoke.
        let refusing = Scripted::start(|request, _| {
            if request.path == "/revoke" {
                json(401, r#"{"error":"invalid_client"}"#)
            } else {
                token_reply()
            }
        })
        .await;
        let manager = revoking_at(&refusing);
        manager.token().await.unwrap();
        let err = manager.revoke().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");
    }

    #[tokio::test]
    async fn token_endpoint_answers_are_judged_by_status_first_then_by_code() {
        // (status, Retry-After, body, kind, retry_after seconds)
        type Case = (
            u16,
            Option<&'static str>,
            &'static str,
            ErrorKind,
            Option<u64>,
        );
        let cases: Vec<Case> = vec![
            (
                401,
                None,
                r#"{"error":"unauthorized_client","error_description":"Invalid client or Invalid client credentials"}"#,
                ErrorKind::InvalidCredentials,
                None,
            ),
            (
                401,
                None,
                r#"{"error":"invalid_grant"}"#,
                ErrorKind::InvalidCredentials,
                None,
            ),
            (
                401,
                None,
                r#"{"error":"invalid_client"}"#,
                ErrorKind::InvalidCredentials,
                None,
            ),
            (401, None, "", ErrorKind::InvalidCredentials, None),
            (
                401,
                None,
                "<html>Unauthorized</html>",
                ErrorKind::InvalidCredentials,
                None,
            ),
            (
                400,
                None,
                r#"{"error":"invalid_client"}"#,
                ErrorKind::InvalidCredentials,
                None,
            ),
            (
                400,
                None,
                r#"{"error":"invalid_grant"}"#,
                ErrorKind::InvalidGrant,
                None,
            ),
            (
                400,
                None,
                r#"{"error":"unauthorized_client"}"#,
                ErrorKind::Configuration,
                None,
            ),
            (
                400,
                None,
                r#"{"error":"invalid_scope"}"#,
                ErrorKind::Configuration,
                None,
            ),
            (
                400,
                None,
                r#"{"error":"invalid_target"}"#,
                ErrorKind::Configuration,
                None,
            ),
            (
                400,
                None,
                r#"{"error":"slow_down"}"#,
                ErrorKind::RateLimited,
                None,
            ),
            (
                400,
                None,
                r#"{"error":"temporarily_unavailable"}"#,
                ErrorKind::Transient,
                None,
            ),
            (
                400,
                None,
                r#"{"error":"something_else"}"#,
                ErrorKind::Protocol,
                None,
            ),
            (400, None, "", ErrorKind::Protocol, None),
            (
                400,
                None,
                "<html>Bad Request</html>",
                ErrorKind::Protocol,
                None,
            ),
            (
                403,
                None,
                r#"{"error":"invalid_client"}"#,
                ErrorKind::InvalidCredentials,
                None,
            ),
            (
                403,
                None,
                r#"{"error":"access_denied"}"#,
                ErrorKind::Configuration,
                None,
            ),
            (
                403,
                None,
                "<html>Forbidden by policy</html>",
                ErrorKind::Configuration,
                None,
            ),
            (403, None, "", ErrorKind::Configuration, None),
            (
                404,
                None,
                "<html>Not Found</html>",
                ErrorKind::Configuration,
                None,
            ),
            (405, None, "", ErrorKind::Configuration, None),
            (302, None, "", ErrorKind::Configuration, None),
            (408, None, "", ErrorKind::Timeout, None),
            (429, None, "", ErrorKind::RateLimited, None),
            (
                429,
                Some("7"),
                "<html>Too Many Requests</html>",
                ErrorKind::RateLimited,
                Some(7),
            ),
            (
                429,
                None,
                r#"{"error":"invalid_client"}"#,
                ErrorKind::RateLimited,
                None,
            ),
            (
                500,
                None,
                r#"{"error":"invalid_grant"}"#,
                ErrorKind::Transient,
                None,
            ),
            (
                502,
                None,
                "<html>Bad Gateway</html>",
                ErrorKind::Transient,
                None,
            ),
            (503, Some("3"), "", ErrorKind::Transient, Some(3)),
            (504, None, "", ErrorKind::Transient, None),
        ];
        for (status, retry_after, body, kind, seconds) in cases {
            let server = Scripted::start(move |_, _| Reply {
                status,
                headers: retry_after
                    .map(|value| vec![("retry-after", value.to_owned())])
                    .unwrap_or_default(),
                body: body.to_owned(),
            })
            .await;
            let err = OAuth2Source::new(&server.url("/token"), "client", "secret")
                .unwrap()
                .fetch()
                .await
                .unwrap_err();
            assert_eq!(err.kind(), kind, "{status} {body:?}: {err}");
            assert_eq!(
                err.retry_after(),
                seconds.map(Duration::from_secs),
                "{status} {body:?}"
            );
            assert!(
                err.message().contains(&format!("/token answered {status}")),
                "{err}"
            );
            assert!(!err.message().contains("Invalid client or"), "{err}");
        }
    }

    #[test]
    fn discovery_sources_show_the_issuer_without_credentials_or_secrets() {
        let source = OAuth2Source::discover(
            "https://idp.example/realms/tl",
            "client",
            Some("hunter2".into()),
        )
        .unwrap();
        let shown = format!("{source:?}");
        assert!(shown.contains("https://idp.example/realms/tl"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        for bad in [
            "https://idp.example/realms/tl?x=1",
            "https://idp.example/realms/tl#f",
            "https://user:pw@idp.example/realms/tl",
            "http://idp.example/realms/tl",
        ] {
            let err = OAuth2Source::discover(bad, "client", None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Configuration, "{bad}");
            assert!(!err.message().contains("pw@"), "{err}");
        }
    }
}
