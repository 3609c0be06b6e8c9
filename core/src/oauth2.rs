//! OAuth2 (RFC 6749) token source: client credentials, password, RFC 8693 token
//! exchange, refresh with rotation, RFC 7009 revocation, optional OIDC discovery.

use std::fmt;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind, Result};
use crate::http::{
    basic_auth_header, cross_check_jwt_expiry, endpoint_name, endpoint_url, form_body, http_client,
    parse_token_response, read_body, read_body_prefix, server_date, token_endpoint_error,
    transport_error, MAX_BODY_BYTES, MAX_INSPECTED_ERROR_BODY_BYTES,
};
use crate::secret::SecretString;
use crate::source::Source;
use crate::token::{FetchedToken, Token};

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`, the RFC's recommendation).
    #[default]
    Basic,
    /// Form fields (`client_secret_post`).
    Post,
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
    /// RFC 8693 token exchange: a subject token (e.g. a SAML assertion) for a new token.
    TokenExchange {
        /// The subject token.
        subject_token: SecretString,
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
            Grant::TokenExchange { .. } => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::ClientCredentials => f.write_str("ClientCredentials"),
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

#[derive(Debug, Clone)]
enum Endpoints {
    Fixed {
        token: url::Url,
        revocation: Option<url::Url>,
    },
    /// Resolved from `<issuer>/.well-known/openid-configuration` on first use.
    Discover {
        issuer: url::Url,
        resolved: std::sync::Arc<OnceCell<(url::Url, Option<url::Url>)>>,
    },
}

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
    token_endpoint: String,
    #[serde(default)]
    revocation_endpoint: Option<String>,
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
            endpoints: Endpoints::Fixed {
                token: endpoint_url("token_url", token_url)?,
                revocation: None,
            },
            client_id: client_id.into(),
            client_secret: Some(client_secret.into()),
            auth: ClientAuth::default(),
            grant: Grant::ClientCredentials,
            scopes: Vec::new(),
            audience: None,
            resource: None,
            extra_params: Vec::new(),
        })
    }

    /// Endpoints found through OIDC discovery at `issuer` (fetched on first use).
    pub fn discover(
        issuer: &str,
        client_id: impl Into<String>,
        client_secret: Option<SecretString>,
    ) -> Result<Self> {
        let mut source = Self::new(&format!("{}/", issuer.trim_end_matches('/')), client_id, "")?;
        source.client_secret = client_secret;
        source.endpoints = Endpoints::Discover {
            issuer: endpoint_url("issuer", issuer)?,
            resolved: Default::default(),
        };
        Ok(source)
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

    /// RFC 7009 revocation endpoint, used by `Manager::revoke`.
    pub fn revocation_url(mut self, url: &str) -> Result<Self> {
        let revocation_url = endpoint_url("revocation_url", url)?;
        match &mut self.endpoints {
            Endpoints::Fixed { revocation, .. } => *revocation = Some(revocation_url),
            Endpoints::Discover { .. } => {
                return Err(Error::new(
                    ErrorKind::Configuration,
                    "revocation_url: set by discovery; don't configure both",
                ))
            }
        }
        Ok(self)
    }

    async fn endpoints(&self) -> Result<(url::Url, Option<url::Url>)> {
        match &self.endpoints {
            Endpoints::Fixed { token, revocation } => Ok((token.clone(), revocation.clone())),
            Endpoints::Discover { issuer, resolved } => resolved
                .get_or_try_init(|| self.fetch_discovery(issuer))
                .await
                .cloned(),
        }
    }

    async fn fetch_discovery(&self, issuer: &url::Url) -> Result<(url::Url, Option<url::Url>)> {
        // OIDC Discovery §4: the document is at issuer + "/.well-known/openid-configuration",
        // also for an issuer with a path (`https://idp.example/realms/x`); a plain `join`
        // would replace the path's last segment.
        let mut base = issuer.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let url = base
            .join(".well-known/openid-configuration")
            .map_err(|err| Error::new(ErrorKind::Configuration, format!("issuer: {err}")))?;
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|err| transport_error(&url, &err))?;
        let status = response.status();
        let body = read_body(response, &endpoint_name(&url), MAX_BODY_BYTES).await?;
        if !status.is_success() {
            let kind = if status.is_server_error() {
                ErrorKind::Transient
            } else {
                ErrorKind::Configuration
            };
            return Err(Error::new(
                kind,
                format!("{} answered {}", endpoint_name(&url), status.as_u16()),
            ));
        }
        let document: DiscoveryDocument = serde_json::from_slice(&body).map_err(|_| {
            Error::new(
                ErrorKind::Protocol,
                format!(
                    "{}: not a discovery document with a token_endpoint",
                    endpoint_name(&url)
                ),
            )
        })?;
        let token = endpoint_url("discovery.token_endpoint", &document.token_endpoint)?;
        let revocation = document
            .revocation_endpoint
            .as_deref()
            .map(|url| endpoint_url("discovery.revocation_endpoint", url))
            .transpose()?;
        Ok((token, revocation))
    }

    /// Posts `form` with the client's authentication. The form borrows the secrets (no
    /// copies); the encoded body is built in a buffer wiped on drop, and reqwest gets a copy
    /// of its bytes (that copy, like hyper's and rustls' buffers, is not ours to wipe).
    async fn post_form(
        &self,
        url: &url::Url,
        form: Vec<(&str, &str)>,
    ) -> Result<reqwest::Response> {
        // Rebound so the form may also hold borrows of `self`.
        let mut form = form;
        let mut request = self.http.post(url.clone());
        match (&self.client_secret, self.auth) {
            (Some(secret), ClientAuth::Basic) => {
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    basic_auth_header(&self.client_id, secret.expose())?,
                );
            }
            (Some(secret), ClientAuth::Post) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret.expose()));
            }
            (None, _) => form.push(("client_id", &self.client_id)),
        }
        let body = form_body(&form);
        request
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(|err| transport_error(url, &err))
    }

    async fn token_request(&self, form: Vec<(&str, &str)>) -> Result<FetchedToken> {
        let (token_url, _) = self.endpoints().await?;
        let scope = self.scopes.join(" ");
        // Rebound so the form may also hold borrows of locals and `self`.
        let mut form = form;
        if !self.scopes.is_empty() {
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
        let mut response = self.post_form(&token_url, form).await?;
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            let body = read_body(response, &endpoint_name(&token_url), MAX_BODY_BYTES).await?;
            let fetched = parse_token_response(&token_url, &body)?;
            Ok(cross_check_jwt_expiry(fetched, server_date(&headers)))
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

#[async_trait]
impl Source for OAuth2Source {
    async fn fetch(&self) -> Result<FetchedToken> {
        let mut form = vec![("grant_type", self.grant.name())];
        match &self.grant {
            Grant::ClientCredentials => {}
            Grant::Password { username, password } => {
                form.push(("username", username));
                form.push(("password", password.expose()));
            }
            Grant::TokenExchange {
                subject_token,
                subject_token_type,
                requested_token_type,
            } => {
                form.push(("subject_token", subject_token.expose()));
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

    async fn revoke(&self, token: &Token) -> Result<()> {
        let (_, Some(url)) = self.endpoints().await? else {
            return Ok(());
        };
        let mut to_revoke = vec![(token.value(), "access_token")];
        if let Some(refresh) = token.refresh_token() {
            to_revoke.push((refresh, "refresh_token"));
        }
        for (value, hint) in to_revoke {
            let form = vec![("token", value.expose()), ("token_type_hint", hint)];
            let response = self.post_form(&url, form).await?;
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
                return Err(token_endpoint_error(&url, status, &headers, &body));
            }
        }
        Ok(())
    }
}
