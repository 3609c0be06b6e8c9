//! One configuration (JSON or TOML) describing source, policy and store: every binding
//! passes the same text, so a manager is configured identically in every language.
//!
//! ```json
//! {
//!   "key": "reports",
//!   "source": {
//!     "type": "oauth2",
//!     "token_url": "https://idp.example/oauth/token",
//!     "client_id": "reports",
//!     "client_secret": { "env": "REPORTS_CLIENT_SECRET" },
//!     "scopes": ["reports.read"],
//!     "client_auth": "basic",
//!     "revocation_url": "https://idp.example/oauth/revoke"
//!   },
//!   "policy": { "waiter_timeout_ms": 10000 },
//!   "store": { "type": "memory" }
//! }
//! ```
//!
//! Secrets are given inline, as `{"env": "NAME"}` or as `{"file": "/path"}` (trailing
//! newline removed). Unknown and missing fields are `Configuration` errors naming the
//! field; error messages never repeat a configured value.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::http::client::{AuthorizedClient, Authorizer, BearerAuthorizer, HeaderAuthorizer};
use crate::lifecycle::manager::{Manager, ManagerBuilder};
use crate::lifecycle::policy::Policy;
use crate::secret::SecretString;
use crate::source::oauth2::{ClientAuth, Grant, OAuth2Source};
use crate::source::session::SessionLogin;
use crate::source::Source;
use crate::store::{MemoryStore, Store};

/// The whole configuration of one manager.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// Store key (default: derived from the source, e.g. `client_id` and scopes).
    #[serde(default)]
    pub key: Option<String>,
    /// Where tokens come from.
    pub source: SourceConfig,
    /// Refresh and backoff policy; omitted fields keep their defaults.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Where tokens are persisted (default: memory).
    #[serde(default)]
    pub store: StoreConfig,
}

/// Token sources that can be configured declaratively.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// OAuth2 with any grant (client credentials by default), fixed endpoints or OIDC
    /// discovery, refresh tokens when issued, RFC 7009 revocation. `oauth2_client_credentials`
    /// is accepted as an older name of the same shape.
    #[serde(alias = "oauth2_client_credentials")]
    Oauth2(Box<OAuth2Config>),
    /// A Google service account from its key file as downloaded (`"type":
    /// "service_account"`): the JWT-bearer grant at its `token_uri`, signed with its key.
    ServiceAccount {
        /// The key file's JSON (usually `{"file": "/path/key.json"}`).
        key_file: SecretValue,
        /// OAuth scopes, e.g. `https://www.googleapis.com/auth/cloud-platform`.
        #[serde(default)]
        scopes: Vec<String>,
        /// A user to act for (domain-wide delegation): the assertion's `sub`.
        #[serde(default)]
        subject: Option<String>,
    },
    /// A declarative HTTP session login (see [`crate::source::session`]).
    SessionLogin {
        /// Credentials the request templates refer to as `{{name}}`.
        #[serde(default)]
        credentials: std::collections::BTreeMap<String, SecretValue>,
        /// Credentials that are the tokens of other sources (`{{name}}` too): a SAML or
        /// OAuth2 token from an identity provider, fetched again when a login is refused.
        #[serde(default)]
        credential_sources: std::collections::BTreeMap<String, Box<SourceConfig>>,
        /// The session API description.
        session: Box<crate::source::session::SessionSpec>,
    },
}

/// An `oauth2` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Token endpoint (or give `issuer` for discovery).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Issuer whose metadata names the endpoints (see `discovery`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Which metadata document `issuer` is discovered from: `auto` (default: OpenID
    /// Connect's `<issuer>/.well-known/openid-configuration`, then RFC 8414's
    /// `/.well-known/oauth-authorization-server/<path>`), `openid` or `oauth`.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Client id.
    pub client_id: String,
    /// Client secret (omit for public clients).
    #[serde(default)]
    pub client_secret: Option<SecretValue>,
    /// The primary grant (default: client credentials).
    #[serde(default)]
    pub grant: GrantConfig,
    /// Requested scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `basic` (default) or `post`.
    #[serde(default)]
    pub client_auth: ClientAuthConfig,
    /// Revocation endpoint (fixed endpoints only).
    #[serde(default)]
    pub revocation_url: Option<String>,
    /// Authorization endpoint for interactive logins (fixed endpoints only; discovery
    /// finds it).
    #[serde(default)]
    pub authorization_url: Option<String>,
    /// Device authorization endpoint, RFC 8628 (fixed endpoints only; discovery finds it).
    #[serde(default)]
    pub device_authorization_url: Option<String>,
    /// Bind tokens to a per-manager key with DPoP (RFC 9449).
    #[serde(default)]
    pub dpop: bool,
    /// CA certificates (PEM file) to trust besides the Mozilla roots, for a token endpoint
    /// (and API) behind a private CA.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Extra parameters of interactive login URLs (e.g. `prompt = "consent"`,
    /// `login_hint`).
    #[serde(default)]
    pub authorization_params: std::collections::BTreeMap<String, String>,
    /// `audience` parameter.
    #[serde(default)]
    pub audience: Option<String>,
    /// `resource` parameter.
    #[serde(default)]
    pub resource: Option<String>,
    /// Extra form parameters.
    #[serde(default)]
    pub extra_params: std::collections::BTreeMap<String, String>,
    /// Send the token in another header than `Authorization: Bearer` (e.g. an
    /// exchanged session token in `X-Session-Token`).
    #[serde(default)]
    pub send: Option<crate::source::session::SendSpec>,
    /// With `send`: which responses mean the token expired (default: 401).
    #[serde(default)]
    pub expired: Option<crate::source::session::ExpiredSpec>,
}

/// The primary grant of an `oauth2` source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GrantConfig {
    /// `client_credentials`.
    #[default]
    ClientCredentials,
    /// A user's interactive login, handed to the manager's `login` (refresh-token grant;
    /// `login_required` when the refresh token is dead).
    UserLogin,
    /// `password` (legacy auth type "password").
    Password {
        /// User name.
        username: String,
        /// Password.
        password: SecretValue,
    },
    /// RFC 7523 JWT-bearer grant: an assertion signed with `key`.
    JwtBearer {
        /// The signing key.
        #[serde(flatten)]
        key: Box<KeyConfig>,
        /// `iss` (default: the client id).
        #[serde(default)]
        issuer: Option<String>,
        /// `sub` (default: none).
        #[serde(default)]
        subject: Option<String>,
        /// Put `scopes` into the assertion's `scope` claim instead of the form (Google).
        #[serde(default)]
        scope_in_assertion: bool,
    },
    /// RFC 8693 token exchange (e.g. a SAML assertion for a session token).
    TokenExchange {
        /// The subject token (or give `subject_token_file`).
        #[serde(default)]
        subject_token: Option<SecretValue>,
        /// A file the subject token is read from before every exchange (a Kubernetes
        /// projected service account token, a CI OIDC token: the platform rewrites it).
        #[serde(default)]
        subject_token_file: Option<String>,
        /// Its type URI.
        subject_token_type: String,
        /// The requested token type URI.
        #[serde(default)]
        requested_token_type: Option<String>,
    },
}

/// Which discovery document an `issuer` is read from.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryConfig {
    /// OpenID Connect's form, then RFC 8414's when that is missing.
    #[default]
    Auto,
    /// Only `<issuer>/.well-known/openid-configuration`.
    Openid,
    /// Only `/.well-known/oauth-authorization-server/<issuer path>`.
    Oauth,
}

/// Client authentication method: `"basic"`, `"post"`, `"client_secret_jwt"`, or
/// `{"private_key_jwt": {...}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthConfig {
    /// `client_secret_basic`.
    #[default]
    Basic,
    /// `client_secret_post`.
    Post,
    /// `client_secret_jwt`: an HS256 assertion keyed with the client secret.
    ClientSecretJwt,
    /// `private_key_jwt`: an assertion signed with the client's private key.
    PrivateKeyJwt(Box<KeyConfig>),
    /// Mutual TLS (RFC 8705 `tls_client_auth` / `self_signed_tls_client_auth`): the client
    /// certificate (chain) and its PKCS#8 private key, PEM; the API calls of the
    /// authorized client present it too (certificate-bound tokens).
    TlsClientAuth(Box<CertificateConfig>),
    /// A platform-issued assertion read from this file before every request (Azure
    /// workload identity: `{"client_assertion_file": "/var/run/secrets/azure/tokens/azure-identity-token"}`).
    ClientAssertionFile(String),
}

/// A client certificate for mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate (chain): a PEM file's path, or the PEM itself. Public: not
    /// permission-checked.
    pub certificate: String,
    /// Its private key (PKCS#8), PEM.
    pub key: SecretValue,
}

/// A private key that signs assertions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The private key, PEM (inline, `{"env": ..}` or `{"file": ..}`).
    pub key: SecretValue,
    /// `RS256` (default), `PS256`, `ES256` or `EdDSA`.
    #[serde(default = "default_algorithm")]
    pub alg: String,
    /// The key id the server knows it by (`kid`).
    #[serde(default)]
    pub kid: Option<String>,
    /// The key's certificate, PEM, for `x5t#S256` (Entra ID certificate credentials).
    #[serde(default)]
    pub certificate: Option<SecretValue>,
    /// The assertion's `aud`: `token_endpoint` (default), `issuer`, or a literal value.
    #[serde(default)]
    pub audience: Option<String>,
}

fn default_algorithm() -> String {
    "RS256".to_owned()
}

impl KeyConfig {
    fn signing_key(&self, field: &str) -> Result<crate::source::assertion::SigningKey> {
        use crate::source::assertion::{SigningAlgorithm, SigningKey};
        let algorithm = SigningAlgorithm::from_name(&self.alg)
            .filter(|algorithm| *algorithm != SigningAlgorithm::Hs256)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Configuration,
                    format!(
                        "{field}.alg: {:?} is not RS256, PS256, ES256 or EdDSA",
                        self.alg
                    ),
                )
            })?;
        let pem = self.key.resolve(&format!("{field}.key"))?;
        let mut key = SigningKey::from_pem(algorithm, &pem, &format!("{field}.key"))?;
        if let Some(kid) = &self.kid {
            key = key.with_kid(kid.clone());
        }
        if let Some(certificate) = &self.certificate {
            let certificate = certificate.resolve(&format!("{field}.certificate"))?;
            key =
                key.with_certificate_pem(certificate.expose(), &format!("{field}.certificate"))?;
        }
        Ok(key)
    }
}

/// A secret given inline, from an environment variable, or from a file.
///
/// In a configuration: a string (the value itself), `{"env": "NAME"}` or
/// `{"file": "/path"}`. An object with both keys, neither, or any other key is a
/// `Configuration` error naming the field (never a silent choice).
#[derive(Clone)]
pub enum SecretValue {
    /// The value itself.
    Inline(SecretString),
    /// `{"env": "NAME"}`.
    Env {
        /// Variable name.
        env: String,
    },
    /// `{"file": "/path"}`: the file's text, trailing newline removed. The file must be a
    /// regular file of at most 64 KiB, not writable by group or others and, when this user
    /// owns it, not readable by them either (as ssh requires of a private key).
    File {
        /// File path.
        file: String,
    },
}

/// The start of every message about the shape of a secret object (kept by
/// [`config_error`]: it names the keys, never a value).
const SECRET_SHAPE: &str = "give `env` or `file`";
/// How the message about an empty secret object ends.
const SECRET_EMPTY: &str = " (or the secret itself as a string)";

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SecretValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret string, {\"env\": NAME} or {\"file\": PATH}")
            }

            fn visit_str<E: serde::de::Error>(
                self,
                value: &str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(SecretValue::Inline(SecretString::new(value)))
            }

            fn visit_string<E: serde::de::Error>(
                self,
                value: String,
            ) -> std::result::Result<Self::Value, E> {
                Ok(SecretValue::Inline(SecretString::new(value)))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                use serde::de::Error as _;
                const KEYS: &[&str] = &["env", "file"];
                let (mut env, mut file) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "env" => &mut env,
                        "file" => &mut file,
                        _ => return Err(A::Error::unknown_field(&key, KEYS)),
                    };
                    if slot.is_some() {
                        return Err(A::Error::duplicate_field(if key == "env" {
                            "env"
                        } else {
                            "file"
                        }));
                    }
                    *slot = Some(map.next_value::<String>()?);
                }
                match (env, file) {
                    (Some(env), None) => Ok(SecretValue::Env { env }),
                    (None, Some(file)) => Ok(SecretValue::File { file }),
                    (Some(_), Some(_)) => {
                        Err(A::Error::custom(format!("{SECRET_SHAPE}, not both")))
                    }
                    (None, None) => Err(A::Error::custom(format!("{SECRET_SHAPE}{SECRET_EMPTY}"))),
                }
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::Inline(_) => f.write_str("Inline([redacted])"),
            SecretValue::Env { env } => write!(f, "Env({env:?})"),
            SecretValue::File { file } => write!(f, "File({file:?})"),
        }
    }
}

impl SecretValue {
    /// Reads the secret; `field` names it in errors.
    pub fn resolve(&self, field: &str) -> Result<SecretString> {
        let value = match self {
            SecretValue::Inline(value) => value.clone(),
            SecretValue::Env { env } => {
                std::env::var(env).map(SecretString::new).map_err(|_| {
                    Error::new(
                        ErrorKind::Configuration,
                        format!("{field}: environment variable {env:?} is not set (or not UTF-8)"),
                    )
                })?
            }
            SecretValue::File { file } => {
                let text = read_secret_file(std::path::Path::new(file)).map_err(|detail| {
                    Error::new(ErrorKind::Configuration, format!("{field}: {detail}"))
                })?;
                SecretString::new(text.trim_end_matches(['\n', '\r']).to_owned())
            }
        };
        if value.is_empty() {
            return Err(Error::new(
                ErrorKind::Configuration,
                format!("{field}: is empty"),
            ));
        }
        Ok(value)
    }
}

/// A secret file's text (see [`SecretValue::File`]); the error is the detail.
#[cfg(unix)]
fn read_secret_file(
    path: &std::path::Path,
) -> std::result::Result<zeroize::Zeroizing<String>, String> {
    crate::store::file::read_secret_file(path)
}

/// A secret file's text, at most 64 KiB; the error is the detail.
#[cfg(not(unix))]
fn read_secret_file(
    path: &std::path::Path,
) -> std::result::Result<zeroize::Zeroizing<String>, String> {
    use std::io::Read;
    const CAP: usize = 64 * 1024;
    let shown = path.display();
    let cannot = |err: std::io::Error| format!("cannot read secret file {shown}: {}", err.kind());
    let file = std::fs::File::open(path).map_err(cannot)?;
    if !file.metadata().map_err(cannot)?.is_file() {
        return Err(format!("secret file {shown} is not a regular file"));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(CAP + 1));
    file.take(CAP as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() > CAP {
        return Err(format!("secret file {shown} is larger than {CAP} bytes"));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("secret file {shown} is not UTF-8 text"))?;
    Ok(zeroize::Zeroizing::new(text.to_owned()))
}

/// Policy overrides; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Advisory window as a fraction of the lifetime.
    pub advisory_fraction: Option<f64>,
    /// Advisory window lower clamp, seconds.
    pub advisory_min_s: Option<f64>,
    /// Advisory window upper clamp, seconds.
    pub advisory_max_s: Option<f64>,
    /// Mandatory window as a fraction of the lifetime.
    pub mandatory_fraction: Option<f64>,
    /// Mandatory window lower clamp, seconds.
    pub mandatory_min_s: Option<f64>,
    /// Mandatory window upper clamp, seconds.
    pub mandatory_max_s: Option<f64>,
    /// Jitter as a fraction of the advisory window.
    pub jitter_fraction: Option<f64>,
    /// First backoff delay, ms.
    pub backoff_base_ms: Option<u64>,
    /// Largest backoff delay, ms.
    pub backoff_cap_ms: Option<u64>,
    /// How long callers wait for a refresh, ms.
    pub waiter_timeout_ms: Option<u64>,
    /// Lifetime assumed when the server doesn't say, seconds.
    pub default_lifetime_s: Option<u64>,
    /// Upper bound on one source call, ms.
    pub source_timeout_ms: Option<u64>,
    /// Upper bound on one store call, ms.
    pub store_timeout_ms: Option<u64>,
    /// How long a cross-process refresh lease lasts without renewal, ms (renewed every
    /// third of it while its holder refreshes).
    pub lease_ttl_ms: Option<u64>,
    /// How long to wait for a sibling's lease, ms.
    pub lease_wait_ms: Option<u64>,
}

fn seconds(field: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        Error::new(
            ErrorKind::Configuration,
            format!("policy.{field}: must be a non-negative number of seconds"),
        )
    })
}

impl PolicyConfig {
    /// Applies the overrides to the defaults and checks the result.
    pub fn to_policy(&self) -> Result<Policy> {
        let defaults = Policy::default();
        let mut builder = Policy::builder();
        let (fraction, min, max) = defaults.advisory_parameters();
        builder = builder.advisory_window(
            self.advisory_fraction.unwrap_or(fraction),
            self.advisory_min_s
                .map(|v| seconds("advisory_min_s", v))
                .transpose()?
                .unwrap_or(min),
            self.advisory_max_s
                .map(|v| seconds("advisory_max_s", v))
                .transpose()?
                .unwrap_or(max),
        );
        let (fraction, min, max) = defaults.mandatory_parameters();
        builder = builder.mandatory_window(
            self.mandatory_fraction.unwrap_or(fraction),
            self.mandatory_min_s
                .map(|v| seconds("mandatory_min_s", v))
                .transpose()?
                .unwrap_or(min),
            self.mandatory_max_s
                .map(|v| seconds("mandatory_max_s", v))
                .transpose()?
                .unwrap_or(max),
        );
        if let Some(jitter) = self.jitter_fraction {
            builder = builder.jitter_fraction(jitter);
        }
        let (base, cap) = defaults.backoff_parameters();
        builder = builder.backoff(
            self.backoff_base_ms.map_or(base, Duration::from_millis),
            self.backoff_cap_ms.map_or(cap, Duration::from_millis),
        );
        if let Some(ms) = self.waiter_timeout_ms {
            builder = builder.waiter_timeout(Duration::from_millis(ms));
        }
        if let Some(s) = self.default_lifetime_s {
            builder = builder.default_lifetime(Duration::from_secs(s));
        }
        if let Some(ms) = self.source_timeout_ms {
            builder = builder.source_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.store_timeout_ms {
            builder = builder.store_timeout(Duration::from_millis(ms));
        }
        if self.lease_ttl_ms.is_some() || self.lease_wait_ms.is_some() {
            let defaults = Policy::default();
            builder = builder.lease(
                self.lease_ttl_ms
                    .map_or(defaults.lease_ttl(), Duration::from_millis),
                self.lease_wait_ms
                    .map_or(defaults.lease_wait(), Duration::from_millis),
            );
        }
        builder.build()
    }
}

/// Token stores that can be configured declaratively.
///
/// ```toml
/// [store]
/// type = "file"
/// dir = "/var/lib/reports/tokens"
/// encryption_key = { env = "REPORTS_TOKEN_KEY" }   # optional: base64 of 32 bytes
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// In-process memory (nothing survives a restart).
    #[default]
    Memory,
    /// A directory of records shared by restarts and sibling processes, with a lock-file
    /// lease ([`crate::FileStore`]). Without `encryption_key`, refresh tokens are not
    /// written to disk.
    #[cfg(unix)]
    File {
        /// The directory (created `0700` if missing).
        dir: String,
        /// Base64 of a 32-byte key (inline, `{"env": ..}` or `{"file": ..}`): records are
        /// then encrypted, and a wrong key or a plaintext record is an error.
        #[serde(default)]
        encryption_key: Option<SecretValue>,
    },
    /// Redis, shared by many hosts, with a fenced `SET NX PX` lease ([`crate::RedisStore`]).
    #[cfg(feature = "redis")]
    Redis {
        /// `redis://host:port[/db]`; a secret, since it may carry a password.
        url: SecretValue,
        /// Key prefix (default `tokenlease:`).
        #[serde(default)]
        prefix: Option<String>,
        /// As for `file`.
        #[serde(default)]
        encryption_key: Option<SecretValue>,
        /// PEM file of the CA that signed the server's certificate (`rediss://` with a
        /// private CA); without it the Mozilla (webpki) roots are trusted.
        #[serde(default)]
        ca_file: Option<String>,
    },
}

#[cfg(unix)]
fn encryption_key(value: Option<&SecretValue>) -> Result<Option<crate::EncryptionKey>> {
    value
        .map(|value| {
            let text = value.resolve("store.encryption_key")?;
            crate::EncryptionKey::from_base64(text.expose()).map_err(|err| {
                Error::new(ErrorKind::Configuration, format!("store.{}", err.message()))
            })
        })
        .transpose()
}

impl StoreConfig {
    /// Opens the store this configuration describes.
    pub fn open(&self) -> Result<Arc<dyn Store>> {
        Ok(match self {
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
            #[cfg(unix)]
            StoreConfig::File {
                dir,
                encryption_key: key,
            } => Arc::new(match encryption_key(key.as_ref())? {
                Some(key) => crate::FileStore::open_encrypted(dir, key)?,
                None => crate::FileStore::open(dir)?,
            }),
            #[cfg(feature = "redis")]
            StoreConfig::Redis {
                url,
                prefix,
                encryption_key: key,
                ca_file,
            } => {
                let url = url.resolve("store.url")?;
                let mut options = crate::store::redis::RedisOptions::new();
                if let Some(prefix) = prefix {
                    options = options.prefix(prefix.clone());
                }
                if let Some(key) = encryption_key(key.as_ref())? {
                    options = options.encryption_key(key);
                }
                if let Some(ca_file) = ca_file {
                    options = options.ca_file(ca_file);
                }
                Arc::new(crate::RedisStore::open_with_options(url.expose(), options)?)
            }
        })
    }
}

impl ManagerConfig {
    /// Parses JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let config = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = inner.to_string();
            let path = locate(text, true, &path, &message).unwrap_or(path);
            config_error(&path, &message, inner.is_data())
        })?;
        deserializer.end().map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                "config: trailing characters after the JSON document",
            )
        })?;
        Ok(config)
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let path = locate(text, false, &path, inner.message()).unwrap_or(path);
            config_error(&path, inner.message(), true)
        })
    }

    /// Parses JSON when the text starts with `{`, TOML otherwise.
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Self::from_toml(text)
        }
    }

    /// Builds the manager this configuration describes.
    pub fn build(&self) -> Result<Manager> {
        Ok(self.builder()?.build())
    }

    /// A builder holding everything the configuration says, for what a file cannot say
    /// (a clock of one's own, listeners).
    pub fn builder(&self) -> Result<ManagerBuilder> {
        let policy = self.policy.to_policy()?;
        let BuiltSource {
            source,
            default_key,
            authorizer,
        } = self.source.build()?;
        let store = self.store.open()?;
        Ok(Manager::builder_from_arc(source)
            .key(self.key.clone().unwrap_or(default_key))
            .policy(policy)
            .store(store)
            .authorizer(authorizer))
    }
}

/// What a [`SourceConfig`] builds.
#[derive(Debug, Clone)]
pub struct BuiltSource {
    /// The token source.
    pub source: Arc<dyn Source>,
    /// How tokens are attached to requests and rejections recognised.
    pub authorizer: Arc<dyn Authorizer>,
    /// The default store key: auth type, client and scopes.
    pub default_key: String,
}

impl SourceConfig {
    /// The source, how its tokens are attached to requests, and a default store key
    /// (auth type, client and scopes).
    pub fn build(&self) -> Result<BuiltSource> {
        let apply_auth = |source: OAuth2Source, auth: &ClientAuthConfig| -> Result<OAuth2Source> {
            Ok(match auth {
                ClientAuthConfig::Basic => source.client_auth(ClientAuth::Basic),
                ClientAuthConfig::Post => source.client_auth(ClientAuth::Post),
                ClientAuthConfig::ClientSecretJwt => {
                    source.client_auth(ClientAuth::ClientSecretJwt)
                }
                ClientAuthConfig::ClientAssertionFile(path) => source.client_assertion_file(path),
                // Set together with `ca_file` below (one TLS configuration).
                ClientAuthConfig::TlsClientAuth(_) => source,
                ClientAuthConfig::PrivateKeyJwt(key) => {
                    let field = "source.client_auth.private_key_jwt";
                    let source = source.private_key_jwt(key.signing_key(field)?);
                    match key.audience.as_deref() {
                        None | Some("token_endpoint") => source,
                        Some("issuer") => source
                            .assertion_audience(crate::source::oauth2::AssertionAudience::Issuer),
                        Some(other) => source.assertion_audience(
                            crate::source::oauth2::AssertionAudience::Custom(other.to_owned()),
                        ),
                    }
                }
            })
        };
        match self {
            SourceConfig::Oauth2(oauth2) => {
                let OAuth2Config {
                    token_url,
                    issuer,
                    discovery,
                    client_id,
                    client_secret,
                    grant,
                    scopes,
                    client_auth,
                    revocation_url,
                    authorization_url,
                    device_authorization_url,
                    authorization_params,
                    dpop,
                    ca_file,
                    audience,
                    resource,
                    extra_params,
                    send,
                    expired,
                } = &**oauth2;
                let secret = client_secret
                    .as_ref()
                    .map(|secret| secret.resolve("source.client_secret"))
                    .transpose()?;
                let mut source = match (token_url, issuer) {
                    (Some(token_url), None) => {
                        let source = OAuth2Source::new(
                            token_url,
                            client_id.clone(),
                            secret.clone().unwrap_or_default(),
                        )?;
                        if secret.is_none() {
                            source.without_client_secret()
                        } else {
                            source
                        }
                    }
                    (None, Some(issuer)) => {
                        OAuth2Source::discover(issuer, client_id.clone(), secret)?.discovery_mode(
                            match discovery {
                                DiscoveryConfig::Auto => crate::source::oauth2::DiscoveryMode::Auto,
                                DiscoveryConfig::Openid => {
                                    crate::source::oauth2::DiscoveryMode::OpenIdConnect
                                }
                                DiscoveryConfig::Oauth => {
                                    crate::source::oauth2::DiscoveryMode::OAuthAuthorizationServer
                                }
                            },
                        )
                    }
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Configuration,
                            "config.source: give exactly one of `token_url` and `issuer`",
                        ))
                    }
                };
                let (grant, auth_type) = match grant {
                    GrantConfig::ClientCredentials => {
                        (Grant::ClientCredentials, "client".to_owned())
                    }
                    GrantConfig::UserLogin => (Grant::UserLogin, "user".to_owned()),
                    GrantConfig::Password { username, password } => (
                        Grant::Password {
                            username: username.clone(),
                            password: password.resolve("source.grant.password")?,
                        },
                        format!("password:{username}"),
                    ),
                    GrantConfig::JwtBearer {
                        key,
                        issuer,
                        subject,
                        scope_in_assertion,
                    } => (
                        Grant::JwtBearer {
                            assertion: crate::source::assertion::BearerAssertion {
                                issuer: issuer.clone().unwrap_or_else(|| client_id.clone()),
                                subject: subject.clone(),
                                audience: key.audience.clone(),
                                scope: scope_in_assertion.then(|| scopes.join(" ")),
                                lifetime: std::time::Duration::from_secs(3600),
                            },
                            key: Arc::new(key.signing_key("source.grant")?),
                        },
                        "jwt_bearer".to_owned(),
                    ),
                    GrantConfig::TokenExchange {
                        subject_token,
                        subject_token_file,
                        subject_token_type,
                        requested_token_type,
                    } => (
                        Grant::TokenExchange {
                            subject_token: match (subject_token, subject_token_file) {
                                (Some(value), None) => crate::source::oauth2::SubjectToken::Value(
                                    value.resolve("source.grant.subject_token")?,
                                ),
                                (None, Some(path)) => {
                                    crate::source::oauth2::SubjectToken::File(path.into())
                                }
                                _ => {
                                    return Err(Error::new(
                                        ErrorKind::Configuration,
                                        "source.grant: give exactly one of subject_token and \
                                         subject_token_file",
                                    ))
                                }
                            },
                            subject_token_type: subject_token_type.clone(),
                            requested_token_type: requested_token_type.clone(),
                        },
                        "exchange".to_owned(),
                    ),
                };
                source = apply_auth(
                    source.grant(grant).scopes(scopes.iter().cloned()),
                    client_auth,
                )?;
                if let Some(url) = revocation_url {
                    source = source.revocation_url(url)?;
                }
                if let Some(url) = authorization_url {
                    source = source.authorization_url(url)?;
                }
                if let Some(url) = device_authorization_url {
                    source = source.device_authorization_url(url)?;
                }
                for (name, value) in authorization_params {
                    source = source.authorization_param(name.clone(), value.clone());
                }
                if *dpop {
                    source = source.dpop()?;
                }
                let identity_pem = match client_auth {
                    ClientAuthConfig::TlsClientAuth(certificate) => {
                        let field = "source.client_auth.tls_client_auth";
                        let chain = if certificate
                            .certificate
                            .trim_start()
                            .starts_with("-----BEGIN")
                        {
                            certificate.certificate.clone()
                        } else {
                            std::fs::read_to_string(&certificate.certificate).map_err(|err| {
                                Error::new(
                                    ErrorKind::Configuration,
                                    format!(
                                        "{field}.certificate: cannot read {}: {}",
                                        certificate.certificate,
                                        err.kind()
                                    ),
                                )
                            })?
                        };
                        let key = certificate.key.resolve(&format!("{field}.key"))?;
                        Some(SecretString::new(format!("{}\n{chain}\n", key.expose())))
                    }
                    _ => None,
                };
                let extra_roots_pem = ca_file
                    .as_ref()
                    .map(|path| {
                        std::fs::read_to_string(path).map_err(|err| {
                            Error::new(
                                ErrorKind::Configuration,
                                format!("source.ca_file: cannot read {path}: {}", err.kind()),
                            )
                        })
                    })
                    .transpose()?;
                if identity_pem.is_some() || extra_roots_pem.is_some() {
                    source = source.tls(crate::http::TlsOptions {
                        identity_pem,
                        extra_roots_pem,
                    })?;
                }
                if let Some(audience) = audience {
                    source = source.audience(audience.clone());
                }
                if let Some(resource) = resource {
                    source = source.resource(resource.clone());
                }
                for (name, value) in extra_params {
                    source = source.extra_param(name.clone(), value.clone());
                }
                let key = format!("{auth_type}:{client_id}:{}", scopes.join(" "));
                let authorizer: Arc<dyn Authorizer> = match send {
                    Some(send) => Arc::new(
                        HeaderAuthorizer::new(send, expired.clone().unwrap_or_default()).map_err(
                            |err| {
                                Error::new(
                                    ErrorKind::Configuration,
                                    format!("config.source.{}", err.message()),
                                )
                            },
                        )?,
                    ),
                    None => Arc::new(BearerAuthorizer),
                };
                Ok(BuiltSource {
                    source: Arc::new(source),
                    authorizer,
                    default_key: key,
                })
            }
            SourceConfig::ServiceAccount {
                key_file,
                scopes,
                subject,
            } => {
                use crate::source::assertion::{BearerAssertion, ServiceAccountFile};
                let field = "source.key_file";
                let file = ServiceAccountFile::parse(&key_file.resolve(field)?, field)?;
                let key = file.signing_key(field)?;
                let source = OAuth2Source::new(&file.token_uri, file.client_email.clone(), "")?
                    .without_client_secret()
                    .grant(Grant::JwtBearer {
                        assertion: BearerAssertion {
                            issuer: file.client_email.clone(),
                            subject: subject.clone(),
                            audience: None,
                            scope: Some(scopes.join(" ")),
                            lifetime: std::time::Duration::from_secs(3600),
                        },
                        key: Arc::new(key),
                    });
                Ok(BuiltSource {
                    source: Arc::new(source),
                    authorizer: Arc::new(BearerAuthorizer),
                    default_key: format!(
                        "service_account:{}:{}",
                        file.client_email,
                        scopes.join(" ")
                    ),
                })
            }
            SourceConfig::SessionLogin {
                credentials,
                credential_sources,
                session,
            } => {
                let resolved = credentials
                    .iter()
                    .map(|(name, value)| {
                        Ok((
                            name.clone(),
                            value.resolve(&format!("source.credentials.{name}"))?,
                        ))
                    })
                    .collect::<Result<_>>()?;
                let key = session.default_store_key();
                let sources = credential_sources
                    .iter()
                    .map(|(name, config)| {
                        let built = config.build().map_err(|err| {
                            Error::new(
                                err.kind(),
                                format!("source.credential_sources.{name}: {}", err.message()),
                            )
                        })?;
                        let manager = Manager::builder_from_arc(built.source)
                            .key(built.default_key)
                            .build();
                        Ok((name.clone(), manager))
                    })
                    .collect::<Result<_>>()?;
                let source = Arc::new(SessionLogin::with_credential_sources(
                    (**session).clone(),
                    resolved,
                    sources,
                )?);
                Ok(BuiltSource {
                    source: source.clone(),
                    authorizer: source,
                    default_key: key,
                })
            }
        }
    }
}

/// The path of the field a structural error is about, when serde's path stops short of it:
/// inside an internally tagged enum (every source and store) serde reads the fields from a
/// buffer that `serde_path_to_error` cannot see into, so its path ends at `source`. The
/// document is searched (only after an error) for the one place under that path that the
/// error can be about: the string an unknown variant names (the path, not the string, is
/// reported), the secret object with a bad set of keys, the object with an unknown field.
/// `None` when nothing or more than one place matches.
fn locate(text: &str, json: bool, path: &str, message: &str) -> Option<String> {
    use serde_json::Value;

    fn walk<'v>(value: &'v Value, path: String, out: &mut Vec<(String, &'v Value)>) {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    walk(child, join(key), out);
                }
            }
            Value::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    walk(child, format!("{path}[{index}]"), out);
                }
            }
            _ => {}
        }
        out.push((path, value));
    }

    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    let between = |start: &str, end: &str| {
        let rest = message.strip_prefix(start)?;
        Some(&rest[..rest.rfind(end)?])
    };
    let secret_shape = |value: &Value| {
        value.as_object().is_some_and(|map| {
            (map.contains_key("env") || map.contains_key("file")) && map.len() != 1
        })
    };
    let matches: Box<dyn Fn(&Value) -> bool> =
        if let Some(variant) = between("unknown variant `", "`, expected ") {
            let variant = variant.to_owned();
            Box::new(move |value| value.as_str() == Some(variant.as_str()))
        } else if message.starts_with(SECRET_SHAPE) && message.ends_with(SECRET_EMPTY) {
            Box::new(|value| value.as_object().is_some_and(serde_json::Map::is_empty))
        } else if message.starts_with(SECRET_SHAPE)
            || message.starts_with("unknown field") && message.ends_with("expected `env` or `file`")
        {
            Box::new(secret_shape)
        } else if let Some(field) = between("unknown field `", "`") {
            let field = field.to_owned();
            Box::new(move |value| {
                value
                    .as_object()
                    .is_some_and(|map| map.contains_key(&field))
            })
        } else {
            return None;
        };

    let tree: Value = if json {
        serde_json::from_str(text).ok()?
    } else {
        toml::from_str(text).ok()?
    };
    let mut places = Vec::new();
    walk(&tree, String::new(), &mut places);
    let under = |place: &str| {
        path.is_empty()
            || path == "."
            || place == path
            || place
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    let mut found = places
        .into_iter()
        .filter(|(place, value)| !place.is_empty() && under(place) && matches(value));
    let (place, _) = found.next()?;
    found.next().is_none().then_some(place)
}

/// Only serde's structural messages are kept: they name fields and variants, never the
/// values (a type error could otherwise echo a secret pasted into the wrong field). An
/// unknown variant is the user's text, so it is cut out ("unknown variant (value not
/// shown), expected `basic` or `post`").
fn config_error(path: &str, message: &str, structural: bool) -> Error {
    // serde_json appends the position; the value may itself contain " at line ".
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    let keep = structural
        && [
            "unknown field",
            "missing field",
            "duplicate field",
            SECRET_SHAPE,
        ]
        .iter()
        .any(|prefix| message.starts_with(prefix));
    let detail = if structural && message.starts_with("unknown variant") {
        // serde: "unknown variant `<value>`, expected <variants>"; the variants are ours.
        const EXPECTED: &str = "`, expected ";
        match message.rfind(EXPECTED) {
            Some(at) => format!(
                "unknown variant (value not shown), expected {}",
                &message[at + EXPECTED.len()..]
            ),
            None => "unknown variant (value not shown)".to_owned(),
        }
    } else if keep {
        message.trim().to_owned()
    } else if message.contains("EOF") || message.contains("expected") && !structural {
        "not valid JSON/TOML syntax".to_owned()
    } else {
        "invalid type or value".to_owned()
    };
    let location = if path.is_empty() || path == "." {
        "config".to_owned()
    } else {
        format!("config.{path}")
    };
    Error::new(ErrorKind::Configuration, format!("{location}: {detail}"))
}

impl Manager {
    /// Builds a manager from a JSON or TOML configuration (see [`crate::config`]).
    pub fn from_config(text: &str) -> Result<Manager> {
        ManagerConfig::parse(text)?.build()
    }
}

impl AuthorizedClient {
    /// Builds a manager and an HTTP client attaching its tokens the way the configured
    /// source says (bearer for OAuth2, the session's header for session logins).
    pub fn from_config(text: &str) -> Result<AuthorizedClient> {
        let manager = Manager::from_config(text)?;
        let authorizer = manager.authorizer();
        AuthorizedClient::new(manager, authorizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discovery_form_is_a_named_choice() {
        let parse = |discovery: &str| {
            ManagerConfig::parse(&format!(
                r#"{{"source": {{"type": "oauth2", "issuer": "https://idp.example/realms/x",
                    "discovery": "{discovery}", "client_id": "c", "client_secret": "s",
                    "grant": {{"type": "client_credentials"}}}}}}"#
            ))
        };
        for good in ["auto", "openid", "oauth"] {
            assert!(parse(good).is_ok(), "{good}");
        }
        let err = parse("sneaky-secret-value").unwrap_err();
        assert!(err.message().contains("discovery"), "{err}");
        assert!(!err.message().contains("sneaky-secret-value"), "{err}");
    }

    #[test]
    fn policy_config_sets_store_timeout_and_lease_and_checks_them() {
        let policy: PolicyConfig = serde_json::from_str(
            r#"{"store_timeout_ms": 750, "lease_ttl_ms": 4000, "lease_wait_ms": 9000}"#,
        )
        .unwrap();
        let policy = policy.to_policy().unwrap();
        assert_eq!(policy.store_timeout(), Duration::from_millis(750));
        assert_eq!(policy.lease_ttl(), Duration::from_millis(4000));
        assert_eq!(policy.lease_wait(), Duration::from_millis(9000));
        let too_short: PolicyConfig = serde_json::from_str(r#"{"lease_ttl_ms": 100}"#).unwrap();
        let err = too_short.to_policy().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("policy.lease_ttl"), "{err}");
        let zero: PolicyConfig = serde_json::from_str(r#"{"store_timeout_ms": 0}"#).unwrap();
        assert!(zero
            .to_policy()
            .unwrap_err()
            .message()
            .contains("store_timeout"));
    }

    const JSON: &str = r#"{
        "source": {"type": "oauth2_client_credentials", "token_url": "http://127.0.0.1:1/token",
                   "client_id": "c", "client_secret": "inline-secret-value", "scopes": ["a"]},
        "policy": {"waiter_timeout_ms": 5000, "jitter_fraction": 0}
    }"#;

    #[test]
    fn json_and_toml_describe_the_same_manager() {
        let json = ManagerConfig::from_json(JSON).unwrap();
        let toml = ManagerConfig::from_toml(
            r#"
            [source]
            type = "oauth2_client_credentials"
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            client_secret = "inline-secret-value"
            scopes = ["a"]
            [policy]
            waiter_timeout_ms = 5000
            jitter_fraction = 0.0
            "#,
        )
        .unwrap();
        assert_eq!(
            json.policy.to_policy().unwrap(),
            toml.policy.to_policy().unwrap()
        );
        assert_eq!(
            json.policy.to_policy().unwrap().waiter_timeout(),
            Duration::from_secs(5)
        );
        let manager = Manager::from_config(JSON).unwrap();
        assert_eq!(manager.key(), "client:c:a");
        assert!(!format!("{json:?}").contains("inline-secret-value"));
    }

    #[test]
    fn client_credentials_have_one_shape_and_the_old_name_is_an_alias() {
        let shape = |type_name: &str, grant: &str| {
            format!(
                r#"{{"source": {{"type": "{type_name}", "token_url": "http://127.0.0.1:1/t",
                    "client_id": "c", "client_secret": "s", "scopes": ["a", "b"]{grant}}}}}"#
            )
        };
        let keys: Vec<String> = [
            shape("oauth2", ""),
            shape("oauth2", r#", "grant": {"type": "client_credentials"}"#),
            shape("oauth2_client_credentials", ""),
        ]
        .iter()
        .map(|json| {
            let config = ManagerConfig::from_json(json).unwrap();
            let SourceConfig::Oauth2(oauth2) = &config.source else {
                panic!("{config:?}");
            };
            assert!(matches!(oauth2.grant, GrantConfig::ClientCredentials));
            config.source.build().unwrap().default_key
        })
        .collect();
        assert!(keys.iter().all(|key| key == "client:c:a b"), "{keys:?}");
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let err =
            ManagerConfig::from_json(&JSON.replace("\"scopes\"", "\"scope_list\"")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().starts_with("config.source"), "{err}");
        assert!(
            err.message().contains("unknown field `scope_list`"),
            "{err}"
        );
        let err = ManagerConfig::from_json(&JSON.replace("\"client_id\": \"c\",", "")).unwrap_err();
        assert!(err.message().contains("missing field `client_id`"), "{err}");
        let err = ManagerConfig::from_toml("[source]\ntype = \"oauth2_client_credentials\"\n")
            .unwrap_err();
        assert!(err.message().contains("missing field `client_id`"), "{err}");
        let config = ManagerConfig::from_toml("[source]\ntype = \"oauth2\"\nclient_id = \"c\"\n")
            .expect("parses: the endpoint can come from `token_url` or `issuer`");
        let err = config.source.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("`token_url` and `issuer`"), "{err}");
        let err = ManagerConfig::from_json(&JSON.replace("5000", "-1")).unwrap_err();
        assert!(
            err.message().starts_with("config.policy.waiter_timeout_ms"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_in_the_wrong_place_is_not_echoed() {
        let err = ManagerConfig::from_json(&JSON.replace("5000", "\"leaked-secret\"")).unwrap_err();
        assert!(!err.to_string().contains("leaked-secret"), "{err}");
        let err = ManagerConfig::from_json("{\"source\": \"leaked-secret\"").unwrap_err();
        assert!(!err.to_string().contains("leaked-secret"), "{err}");
    }

    /// Writes a secret file with `mode` (created with it, so never briefly readable).
    #[cfg(unix)]
    fn secret_file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = temp_dir(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
        // The umask may have taken bits away.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[cfg(unix)]
    fn file_secret(path: &std::path::Path) -> SecretValue {
        SecretValue::File {
            file: path.display().to_string(),
        }
    }

    #[test]
    fn secrets_come_from_env_or_file() {
        std::env::set_var("TOKENLEASE_TEST_SECRET_VAR", "from-env");
        let env = SecretValue::Env {
            env: "TOKENLEASE_TEST_SECRET_VAR".into(),
        };
        assert_eq!(env.resolve("f").unwrap().expose(), "from-env");
        let missing = SecretValue::Env {
            env: "TOKENLEASE_TEST_NOT_SET".into(),
        };
        let err = missing.resolve("source.client_secret").unwrap_err();
        assert!(err.message().contains("TOKENLEASE_TEST_NOT_SET"));
        #[cfg(unix)]
        {
            let path = secret_file("secret", "from-file\n", 0o600);
            assert_eq!(
                file_secret(&path).resolve("f").unwrap().expose(),
                "from-file"
            );
            std::fs::remove_file(path).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_can_read_or_write_is_refused_like_an_ssh_key() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606] {
            let path = secret_file("open", "open-secret-value\n", mode);
            let err = file_secret(&path)
                .resolve("source.client_secret")
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Configuration);
            assert_eq!(
                err.message(),
                format!(
                    "source.client_secret: secret file {} is accessible by group or others (mode {mode:04o}); chmod 600 it",
                    path.display()
                )
            );
            assert!(!err.to_string().contains("open-secret-value"), "{err}");
            std::fs::remove_file(path).unwrap();
        }
        for mode in [0o600, 0o400] {
            let path = secret_file("private", "private-value", mode);
            assert_eq!(
                file_secret(&path).resolve("f").unwrap().expose(),
                "private-value"
            );
            std::fs::remove_file(path).unwrap();
        }
        // Not ours (tests run as root; skipped otherwise): readable by others is the
        // owner's choice (a Kubernetes secret volume), writable by others never is.
        let path = secret_file("others", "shared-value", 0o644);
        if std::os::unix::fs::chown(&path, Some(65534), None).is_ok() {
            assert_eq!(
                file_secret(&path).resolve("f").unwrap().expose(),
                "shared-value"
            );
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .unwrap();
            let err = file_secret(&path).resolve("f").unwrap_err();
            assert!(err.message().contains("(mode 0666)"), "{err}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_must_be_a_small_regular_file_and_a_fifo_never_hangs() {
        // A symbolic link to a private file is followed (Kubernetes mounts secrets so).
        let target = secret_file("target", "linked-value\n", 0o600);
        let link = temp_dir("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            file_secret(&link).resolve("f").unwrap().expose(),
            "linked-value"
        );
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&target).unwrap();

        let big = secret_file("big", &"x".repeat(64 * 1024 + 1), 0o600);
        let err = file_secret(&big).resolve("f").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("larger than 65536 bytes"), "{err}");
        std::fs::remove_file(&big).unwrap();
        let binary = secret_file("binary", "", 0o600);
        std::fs::write(&binary, [0xff, 0xfe, b'\n']).unwrap();
        let err = file_secret(&binary).resolve("f").unwrap_err();
        assert!(err.message().ends_with("is not UTF-8 text"), "{err}");
        std::fs::remove_file(&binary).unwrap();
        let err = file_secret(&binary).resolve("f").unwrap_err();
        assert!(
            err.message().starts_with("f: cannot read secret file"),
            "{err}"
        );
        let full = secret_file("full", &"y".repeat(64 * 1024), 0o600);
        assert_eq!(file_secret(&full).resolve("f").unwrap().len(), 64 * 1024);
        std::fs::remove_file(&full).unwrap();

        let dir = temp_dir("dir");
        std::fs::create_dir(&dir).unwrap();
        let err = file_secret(&dir).resolve("f").unwrap_err();
        assert!(
            err.message().contains("is a directory, not a regular file"),
            "{err}"
        );
        std::fs::remove_dir(&dir).unwrap();

        let fifo = temp_dir("fifo");
        let name = std::ffi::CString::new(fifo.display().to_string()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let (done, result) = std::sync::mpsc::channel();
        let secret = file_secret(&fifo);
        std::thread::spawn(move || done.send(secret.resolve("f")));
        let err = result
            .recv_timeout(Duration::from_secs(10))
            .expect("reading a FIFO secret hung")
            .unwrap_err();
        assert!(
            err.message().contains("is a FIFO, not a regular file"),
            "{err}"
        );
        std::fs::remove_file(&fifo).unwrap();

        // The same checks guard encryption key files.
        let key = secret_file(
            "key",
            crate::EncryptionKey::generate().to_base64().expose(),
            0o644,
        );
        let err = crate::EncryptionKey::from_file(&key).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("chmod 600 it"), "{err}");
        let err = encryption_key(Some(&file_secret(&key))).unwrap_err();
        assert!(
            err.message()
                .starts_with("store.encryption_key: secret file"),
            "{err}"
        );
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        crate::EncryptionKey::from_file(&key).unwrap();
        assert!(encryption_key(Some(&file_secret(&key))).unwrap().is_some());
        std::fs::remove_file(&key).unwrap();
    }

    #[test]
    fn a_secret_object_with_both_or_other_keys_is_an_error_naming_the_field() {
        let with = |secret: &str| JSON.replace("\"inline-secret-value\"", secret);
        let err = ManagerConfig::from_json(&with(r#"{"env": "X", "file": "/p"}"#)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert_eq!(
            err.message(),
            "config.source.client_secret: give `env` or `file`, not both"
        );
        let err = ManagerConfig::from_json(&with(r#"{"file": "/p", "env": "X"}"#)).unwrap_err();
        assert!(err.message().ends_with("not both"), "{err}");
        let err = ManagerConfig::from_json(&with(r#"{"env": "X", "junk": 1}"#)).unwrap_err();
        assert_eq!(
            err.message(),
            "config.source.client_secret: unknown field `junk`, expected `env` or `file`"
        );
        let err = ManagerConfig::from_json(&with(r#"{"env": "X", "env": "Y"}"#)).unwrap_err();
        assert!(err.message().contains("duplicate field `env`"), "{err}");
        let err = ManagerConfig::from_json(&with("{}")).unwrap_err();
        assert_eq!(
            err.message(),
            "config.source.client_secret: give `env` or `file` (or the secret itself as a string)"
        );
        let err = ManagerConfig::from_json(&with(r#"{"env": 42}"#)).unwrap_err();
        assert_eq!(err.message(), "config.source: invalid type or value");
        let err = ManagerConfig::from_toml(
            "[source]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"http://127.0.0.1:1/t\"\n\
             client_id = \"c\"\nclient_secret = { env = \"X\", file = \"/p\" }\n",
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            "config.source.client_secret: give `env` or `file`, not both"
        );
        // The three good shapes still parse, in both languages.
        for secret in [r#""inline""#, r#"{"env": "X"}"#, r#"{"file": "/p"}"#] {
            ManagerConfig::from_json(&with(secret)).unwrap();
        }
        let toml = ManagerConfig::from_toml(
            "[source]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"http://127.0.0.1:1/t\"\n\
             client_id = \"c\"\nclient_secret = { file = \"/p\" }\n",
        )
        .unwrap();
        let SourceConfig::Oauth2(oauth2) = &toml.source else {
            panic!("{toml:?}");
        };
        assert!(matches!(&oauth2.client_secret, Some(SecretValue::File { file }) if file == "/p"));
    }

    #[test]
    fn an_unknown_variant_names_the_field_and_the_choices_but_not_the_value() {
        let secret = "sk_live_51HvQ2eLkd8Zx";
        let err = ManagerConfig::from_json(&JSON.replace(
            "\"scopes\": [\"a\"]",
            &format!("\"scopes\": [\"a\"], \"client_auth\": \"{secret}\""),
        ))
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert_eq!(
            err.message(),
            "config.source.client_auth: unknown variant (value not shown), expected one of \
             `basic`, `post`, `client_secret_jwt`, `private_key_jwt`, `tls_client_auth`, \
             `client_assertion_file`"
        );
        let err = ManagerConfig::from_json(&JSON.replace("oauth2_client_credentials", secret))
            .unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(
            err.message().starts_with(
                "config.source.type: unknown variant (value not shown), expected one of `oauth2`"
            ),
            "{err}"
        );
        // A value made to look like the end of serde's message is cut out too.
        let tricky = "x`, expected `basic` or `post` at line 1 column 2 hunter2";
        let err = ManagerConfig::from_json(&JSON.replace(
            "\"scopes\": [\"a\"]",
            &format!("\"scopes\": [\"a\"], \"client_auth\": {tricky:?}"),
        ))
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = ManagerConfig::from_toml(&format!(
            "[source]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"http://127.0.0.1:1/t\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\nclient_auth = \"{secret}\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.message(),
            "config.source.client_auth: unknown variant (value not shown), expected one of \
             `basic`, `post`, `client_secret_jwt`, `private_key_jwt`, `tls_client_auth`, \
             `client_assertion_file`"
        );
        let err =
            ManagerConfig::from_toml(&format!("[source]\ntype = \"{secret}\"\n")).unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(err.message().contains("unknown variant"), "{err}");
    }

    #[test]
    fn plain_http_to_a_remote_idp_is_a_config_error() {
        let err = Manager::from_config(&JSON.replace("127.0.0.1:1", "idp.example")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("HTTPS is required"));
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tokenlease-config-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[cfg(unix)]
    #[test]
    fn file_store_config_opens_a_private_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("file");
        let json = JSON.replace(
            "\"policy\"",
            &format!(
                "\"store\": {{\"type\": \"file\", \"dir\": {:?}}}, \"policy\"",
                dir.join("tokens").display().to_string()
            ),
        );
        let config = ManagerConfig::from_json(&json).unwrap();
        assert!(matches!(
            &config.store,
            StoreConfig::File {
                encryption_key: None,
                ..
            }
        ));
        Manager::from_config(&json).unwrap();
        let mode = std::fs::metadata(dir.join("tokens"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        let toml = ManagerConfig::from_toml(&format!(
            "[source]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"http://127.0.0.1:1/t\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\n[store]\ntype = \"file\"\ndir = {:?}\n\
             encryption_key = {{ env = \"TOKENLEASE_TEST_STORE_KEY\" }}\n",
            dir.join("sealed").display().to_string()
        ))
        .unwrap();
        // A configured key that is missing is an error, never a plaintext fallback.
        let err = toml.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("TOKENLEASE_TEST_STORE_KEY"), "{err}");
        std::env::set_var(
            "TOKENLEASE_TEST_STORE_KEY",
            crate::EncryptionKey::generate().to_base64().expose(),
        );
        let store = toml.store.open().unwrap();
        assert!(
            format!("{store:?}").contains("encrypted: true"),
            "{store:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_bad_store_key_or_field_is_named_but_not_echoed() {
        let dir = temp_dir("badkey");
        let store = |extra: &str| {
            JSON.replace(
                "\"policy\"",
                &format!(
                    "\"store\": {{\"type\": \"file\", \"dir\": {:?}{extra}}}, \"policy\"",
                    dir.display().to_string()
                ),
            )
        };
        let err =
            Manager::from_config(&store(", \"encryption_key\": \"short-secret-key\"")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().starts_with("store.encryption key"), "{err}");
        assert!(!err.to_string().contains("short-secret-key"), "{err}");
        let err = ManagerConfig::from_json(&store(", \"directory\": \"x\"")).unwrap_err();
        assert!(err.message().contains("unknown field `directory`"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_store_config_connects_lazily_and_hides_the_url() {
        let json = JSON.replace(
            "\"policy\"",
            "\"store\": {\"type\": \"redis\", \"url\": \"redis://:hunter2@127.0.0.1:1/0\", \"prefix\": \"app:\"}, \"policy\"",
        );
        let config = ManagerConfig::from_json(&json).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        let StoreConfig::Redis { prefix, .. } = &config.store else {
            panic!("not a redis store: {config:?}");
        };
        assert_eq!(prefix.as_deref(), Some("app:"));
        // Nothing listens on port 1: building still works (the store connects lazily).
        let store = config.store.open().unwrap();
        assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
        Manager::from_config(&json).unwrap();
        let err = Manager::from_config(&json.replace("redis://:hunter2@", "nope://hunter2@"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
