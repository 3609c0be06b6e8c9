//! Signed JWT assertions (RFC 7523): client authentication by `private_key_jwt` /
//! `client_secret_jwt` (§2.2), and the JWT-bearer authorization grant (§2.1) that Google
//! service accounts use. Signing is `jsonwebtoken`'s (ring underneath); nothing here
//! hand-rolls cryptography. Keys are secrets: never in `Debug`, errors or events.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::secret::SecretString;

/// `client_assertion_type` of RFC 7523 §2.2.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `grant_type` of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long a client assertion is valid: short, it is made per request.
pub const CLIENT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// A signing algorithm for assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
    /// HMAC SHA-256 with the client secret (`client_secret_jwt`).
    Hs256,
}

impl SigningAlgorithm {
    /// From its JOSE name (`RS256`, `PS256`, `ES256`, `EdDSA`, `HS256`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "PS256" => Self::Ps256,
            "ES256" => Self::Es256,
            "EdDSA" => Self::EdDsa,
            "HS256" => Self::Hs256,
            _ => return None,
        })
    }

    fn jose(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Rs256 => jsonwebtoken::Algorithm::RS256,
            Self::Ps256 => jsonwebtoken::Algorithm::PS256,
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            Self::Hs256 => jsonwebtoken::Algorithm::HS256,
        }
    }
}

/// A key that signs assertions, with the header fields that name it.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: SigningAlgorithm,
    key: jsonwebtoken::EncodingKey,
    kid: Option<String>,
    x5t_s256: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl SigningKey {
    /// A private key in PEM (PKCS#8, or PKCS#1 for RSA, SEC1 for EC). `field` names the
    /// configuration field in errors; the key itself never appears in one.
    pub fn from_pem(algorithm: SigningAlgorithm, pem: &SecretString, field: &str) -> Result<Self> {
        let bytes = pem.expose().as_bytes();
        let key = match algorithm {
            SigningAlgorithm::Rs256 | SigningAlgorithm::Ps256 => {
                jsonwebtoken::EncodingKey::from_rsa_pem(bytes)
            }
            SigningAlgorithm::Es256 => jsonwebtoken::EncodingKey::from_ec_pem(bytes),
            SigningAlgorithm::EdDsa => jsonwebtoken::EncodingKey::from_ed_pem(bytes),
            SigningAlgorithm::Hs256 => {
                return Err(Error::new(
                    ErrorKind::Configuration,
                    format!("{field}: HS256 signs with the client secret, not a PEM key"),
                ))
            }
        }
        .map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                format!("{field}: not a PEM private key usable for {algorithm:?}"),
            )
        })?;
        let signer = Self {
            algorithm,
            key,
            kid: None,
            x5t_s256: None,
        };
        // A key of the wrong kind for the algorithm only fails when signing: find out now.
        signer
            .sign(&serde_json::json!({ "probe": true }))
            .map_err(|_| {
                Error::new(
                    ErrorKind::Configuration,
                    format!("{field}: the key cannot sign with {algorithm:?}"),
                )
            })?;
        Ok(signer)
    }

    /// HMAC with a shared secret (`client_secret_jwt`).
    pub fn hmac(secret: &SecretString) -> Self {
        Self {
            algorithm: SigningAlgorithm::Hs256,
            key: jsonwebtoken::EncodingKey::from_secret(secret.expose().as_bytes()),
            kid: None,
            x5t_s256: None,
        }
    }

    /// Names the key in the JWT header (`kid`).
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Names the key by its certificate (`x5t#S256`: the SHA-256 of the certificate's DER,
    /// as Entra ID wants for certificate credentials). `field` names the configuration field.
    pub fn with_certificate_pem(mut self, certificate: &str, field: &str) -> Result<Self> {
        let der = pem::parse(certificate)
            .ok()
            .filter(|block| block.tag() == "CERTIFICATE")
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Configuration,
                    format!("{field}: not a PEM certificate"),
                )
            })?;
        self.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(der.contents())));
        Ok(self)
    }

    /// The algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// Signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<SecretString> {
        let mut header = jsonwebtoken::Header::new(self.algorithm.jose());
        header.kid.clone_from(&self.kid);
        header.x5t_s256.clone_from(&self.x5t_s256);
        jsonwebtoken::encode(&header, claims, &self.key)
            .map(SecretString::new)
            .map_err(|_| Error::new(ErrorKind::Configuration, "the assertion key cannot sign"))
    }
}

/// A fresh `jti`: 128 random bits.
fn fresh_jti() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A client assertion (RFC 7523 §2.2): `iss` = `sub` = the client id, `aud` the token
/// endpoint (or the issuer), a fresh `jti`, valid for a minute.
pub fn client_assertion(key: &SigningKey, client_id: &str, audience: &str) -> Result<SecretString> {
    let now = unix_now();
    key.sign(&serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": fresh_jti(),
        "iat": now,
        "exp": now + CLIENT_ASSERTION_LIFETIME.as_secs(),
    }))
}

/// The claims of a JWT-bearer grant assertion (RFC 7523 §2.1).
#[derive(Debug, Clone)]
pub struct BearerAssertion {
    /// `iss`: who signs (a service account's email).
    pub issuer: String,
    /// `sub`: on whose behalf (`None`: not sent; Google's domain-wide delegation sets it).
    pub subject: Option<String>,
    /// `aud`: `None` means the token endpoint.
    pub audience: Option<String>,
    /// `scope` claim (Google puts the scopes here, not in the form).
    pub scope: Option<String>,
    /// How long each assertion is valid (Google allows at most an hour).
    pub lifetime: Duration,
}

impl BearerAssertion {
    /// Signs one assertion for a request to `token_endpoint`.
    pub fn sign(&self, key: &SigningKey, token_endpoint: &str) -> Result<SecretString> {
        let now = unix_now();
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience.as_deref().unwrap_or(token_endpoint),
            "jti": fresh_jti(),
            "iat": now,
            "exp": now + self.lifetime.as_secs().max(1),
        });
        if let Some(subject) = &self.subject {
            claims["sub"] = subject.clone().into();
        }
        if let Some(scope) = &self.scope {
            claims["scope"] = scope.clone().into();
        }
        key.sign(&claims)
    }
}

/// A Google service-account key file as it is downloaded (`"type": "service_account"`).
#[derive(serde::Deserialize)]
pub struct ServiceAccountFile {
    /// Must be `service_account`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The account (`…@….iam.gserviceaccount.com`): the assertion's issuer.
    pub client_email: String,
    /// The RSA private key, PEM.
    pub private_key: SecretString,
    /// The key's id (`kid`).
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// The token endpoint.
    pub token_uri: String,
}

impl fmt::Debug for ServiceAccountFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountFile")
            .field("client_email", &self.client_email)
            .field("private_key", &"[redacted]")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccountFile {
    /// Parses the file's JSON; `field` names it in errors (never its content).
    pub fn parse(json: &SecretString, field: &str) -> Result<Self> {
        let file: Self = serde_json::from_str(json.expose()).map_err(|err| {
            Error::new(
                ErrorKind::Configuration,
                format!(
                    "{field}: not a service account key file (type, client_email, private_key, \
                     token_uri) at line {} column {}",
                    err.line(),
                    err.column()
                ),
            )
        })?;
        if file.kind != "service_account" {
            return Err(Error::new(
                ErrorKind::Configuration,
                format!(
                    "{field}: \"type\" is {:?}, not \"service_account\"",
                    file.kind
                ),
            ));
        }
        Ok(file)
    }

    /// The signing key (RS256, named by `private_key_id`).
    pub fn signing_key(&self, field: &str) -> Result<SigningKey> {
        let key = SigningKey::from_pem(
            SigningAlgorithm::Rs256,
            &self.private_key,
            &format!("{field}.private_key"),
        )?;
        Ok(match &self.private_key_id {
            Some(kid) => key.with_kid(kid.clone()),
            None => key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_configuration_errors_that_never_show_the_key() {
        let pem = SecretString::from(
            "-----BEGIN PRIVATE KEY-----\nnot-a-key-secret\n-----END PRIVATE KEY-----\n",
        );
        for algorithm in [
            SigningAlgorithm::Rs256,
            SigningAlgorithm::Es256,
            SigningAlgorithm::EdDsa,
        ] {
            let err = SigningKey::from_pem(algorithm, &pem, "source.client_auth.key").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Configuration);
            assert!(err.to_string().contains("source.client_auth.key"), "{err}");
            assert!(!err.to_string().contains("not-a-key-secret"), "{err}");
        }
        let err = SigningKey::from_pem(SigningAlgorithm::Hs256, &pem, "k").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
    }

    #[test]
    fn an_hmac_assertion_has_fresh_jtis_and_a_short_life() {
        let key = SigningKey::hmac(&SecretString::from("s3cret-s3cret-s3cret-s3cret-s3cret"));
        assert!(!format!("{key:?}").contains("s3cret"));
        let first = client_assertion(&key, "app", "https://idp/token").unwrap();
        let second = client_assertion(&key, "app", "https://idp/token").unwrap();
        let claims = |jwt: &SecretString| -> serde_json::Value {
            let payload = jwt.expose().split('.').nth(1).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
        };
        let (a, b) = (claims(&first), claims(&second));
        assert_ne!(a["jti"], b["jti"]);
        assert_eq!(a["iss"], "app");
        assert_eq!(a["sub"], "app");
        assert_eq!(a["aud"], "https://idp/token");
        assert_eq!(a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(), 60);
    }

    #[test]
    fn a_service_account_file_must_say_so() {
        let err = ServiceAccountFile::parse(
            &SecretString::from(r#"{"type": "authorized_user", "client_email": "a", "private_key": "k", "token_uri": "u"}"#),
            "source.key_file",
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.to_string().contains("service_account"));
        let err =
            ServiceAccountFile::parse(&SecretString::from("{\"private_key\": \"k-secret\""), "f")
                .unwrap_err();
        assert!(!err.to_string().contains("k-secret"));
    }
}
