//! One configuration (JSON or TOML) describing source, policy and store: every binding
//! passes the same text, so a manager is configured identically in every language.
//!
//! ```json
//! {
//!   "key": "reports",
//!   "source": {
//!     "type": "oauth2_client_credentials",
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

use crate::client::{AuthorizedClient, Authorizer, BearerAuthorizer, HeaderAuthorizer};
use crate::error::{Error, ErrorKind, Result};
use crate::manager::Manager;
use crate::oauth2::{ClientAuth, Grant, OAuth2Source};
use crate::policy::Policy;
use crate::secret::SecretString;
use crate::session::SessionLogin;
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
    /// OAuth2 client credentials (RFC 6749 §4.4), refresh when issued, RFC 7009 revocation.
    Oauth2ClientCredentials {
        /// Token endpoint (HTTPS unless loopback).
        token_url: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: SecretValue,
        /// Requested scopes.
        #[serde(default)]
        scopes: Vec<String>,
        /// `basic` (default) or `post`.
        #[serde(default)]
        client_auth: ClientAuthConfig,
        /// Revocation endpoint.
        #[serde(default)]
        revocation_url: Option<String>,
    },
    /// OAuth2 with any grant, fixed endpoints or OIDC discovery.
    Oauth2(Box<OAuth2Config>),
    /// A declarative HTTP session login (see [`crate::session`]).
    SessionLogin {
        /// Credentials the request templates refer to as `{{name}}`.
        #[serde(default)]
        credentials: std::collections::BTreeMap<String, SecretValue>,
        /// The session API description.
        session: Box<crate::session::SessionSpec>,
    },
}

/// An `oauth2` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Token endpoint (or give `issuer` for discovery).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Issuer whose `/.well-known/openid-configuration` names the endpoints.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client secret (omit for public clients).
    #[serde(default)]
    pub client_secret: Option<SecretValue>,
    /// The primary grant.
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
    pub send: Option<crate::session::SendSpec>,
    /// With `send`: which responses mean the token expired (default: 401).
    #[serde(default)]
    pub expired: Option<crate::session::ExpiredSpec>,
}

/// The primary grant of an `oauth2` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GrantConfig {
    /// `client_credentials`.
    ClientCredentials,
    /// `password` (legacy auth type "password").
    Password {
        /// User name.
        username: String,
        /// Password.
        password: SecretValue,
    },
    /// RFC 8693 token exchange (e.g. a SAML assertion for a session token).
    TokenExchange {
        /// The subject token.
        subject_token: SecretValue,
        /// Its type URI.
        subject_token_type: String,
        /// The requested token type URI.
        #[serde(default)]
        requested_token_type: Option<String>,
    },
}

/// Client authentication method.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthConfig {
    /// `client_secret_basic`.
    #[default]
    Basic,
    /// `client_secret_post`.
    Post,
}

/// A secret given inline, from an environment variable, or from a file.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretValue {
    /// The value itself.
    Inline(SecretString),
    /// `{"env": "NAME"}`.
    Env {
        /// Variable name.
        env: String,
    },
    /// `{"file": "/path"}`.
    File {
        /// File path.
        file: String,
    },
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
                let text = std::fs::read_to_string(file).map_err(|err| {
                    Error::new(
                        ErrorKind::Configuration,
                        format!("{field}: cannot read secret file {file:?}: {}", err.kind()),
                    )
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
            } => {
                let url = url.resolve("store.url")?;
                Arc::new(match encryption_key(key.as_ref())? {
                    Some(key) => {
                        crate::RedisStore::open_encrypted(url.expose(), prefix.as_deref(), key)?
                    }
                    None => crate::RedisStore::open(url.expose(), prefix.as_deref())?,
                })
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
            config_error(&path, &inner.to_string(), inner.is_data())
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
        let policy = self.policy.to_policy()?;
        let BuiltSource {
            source,
            default_key,
            ..
        } = self.source.build()?;
        let store = self.store.open()?;
        Ok(Manager::builder_from_arc(source)
            .key(self.key.clone().unwrap_or(default_key))
            .policy(policy)
            .store(store)
            .build())
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
        let to_auth = |auth: &ClientAuthConfig| match auth {
            ClientAuthConfig::Basic => ClientAuth::Basic,
            ClientAuthConfig::Post => ClientAuth::Post,
        };
        match self {
            SourceConfig::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scopes,
                client_auth,
                revocation_url,
            } => {
                let secret = client_secret.resolve("source.client_secret")?;
                let mut source = OAuth2Source::new(token_url, client_id.clone(), secret)?
                    .scopes(scopes.iter().cloned())
                    .client_auth(to_auth(client_auth));
                if let Some(url) = revocation_url {
                    source = source.revocation_url(url)?;
                }
                let key = format!("client:{client_id}:{}", scopes.join(" "));
                Ok(BuiltSource {
                    source: Arc::new(source),
                    authorizer: Arc::new(BearerAuthorizer),
                    default_key: key,
                })
            }
            SourceConfig::Oauth2(oauth2) => {
                let OAuth2Config {
                    token_url,
                    issuer,
                    client_id,
                    client_secret,
                    grant,
                    scopes,
                    client_auth,
                    revocation_url,
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
                        OAuth2Source::discover(issuer, client_id.clone(), secret)?
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
                    GrantConfig::Password { username, password } => (
                        Grant::Password {
                            username: username.clone(),
                            password: password.resolve("source.grant.password")?,
                        },
                        format!("password:{username}"),
                    ),
                    GrantConfig::TokenExchange {
                        subject_token,
                        subject_token_type,
                        requested_token_type,
                    } => (
                        Grant::TokenExchange {
                            subject_token: subject_token.resolve("source.grant.subject_token")?,
                            subject_token_type: subject_token_type.clone(),
                            requested_token_type: requested_token_type.clone(),
                        },
                        "exchange".to_owned(),
                    ),
                };
                source = source
                    .grant(grant)
                    .scopes(scopes.iter().cloned())
                    .client_auth(to_auth(client_auth));
                if let Some(url) = revocation_url {
                    source = source.revocation_url(url)?;
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
            SourceConfig::SessionLogin {
                credentials,
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
                let key = format!("server:{}", session.login.url);
                let source = Arc::new(SessionLogin::new((**session).clone(), resolved)?);
                Ok(BuiltSource {
                    source: source.clone(),
                    authorizer: source,
                    default_key: key,
                })
            }
        }
    }
}

/// Only serde's structural messages are kept: they name fields and variants, never the
/// values (a type error could otherwise echo a secret pasted into the wrong field).
fn config_error(path: &str, message: &str, structural: bool) -> Error {
    let keep = structural
        && [
            "unknown field",
            "missing field",
            "unknown variant",
            "duplicate field",
        ]
        .iter()
        .any(|prefix| message.starts_with(prefix));
    let detail = if keep {
        message
            .split(" at line ")
            .next()
            .unwrap_or(message)
            .trim()
            .to_owned()
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
        let config = ManagerConfig::parse(text)?;
        let authorizer = config.source.build()?.authorizer;
        AuthorizedClient::new(config.build()?, authorizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(err.message().contains("missing field `token_url`"), "{err}");
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
        let path = std::env::temp_dir().join(format!("tokenlease-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let file = SecretValue::File {
            file: path.display().to_string(),
        };
        assert_eq!(file.resolve("f").unwrap().expose(), "from-file");
        std::fs::remove_file(path).unwrap();
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
