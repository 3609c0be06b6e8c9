//! DPoP (RFC 9449): a per-source P-256 key proves possession on every token request and,
//! for tokens bound to it (`token_type` `DPoP`), on every API request (with `ath`, the
//! access token's hash). Server nonces (`DPoP-Nonce`) are remembered per origin and a
//! request the server answered with a fresh nonce is sent once more. The key is made with
//! ring and never leaves the process; proofs are signed with jsonwebtoken.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk,
};
use parking_lot::Mutex;
use rand::RngCore;
use ring::signature::KeyPair as _;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::secret::SecretString;

/// The response header carrying a server nonce.
pub const DPOP_NONCE_HEADER: &str = "dpop-nonce";

/// Bounds the nonces kept (one per origin).
const MAX_NONCES: usize = 64;

/// A DPoP key pair and the server nonces seen with it.
pub struct DpopKey {
    key: jsonwebtoken::EncodingKey,
    jwk: Jwk,
    thumbprint: String,
    nonces: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("thumbprint", &self.thumbprint)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl DpopKey {
    /// A fresh P-256 key (ES256).
    pub fn generate() -> Result<Self> {
        let failed = || Error::new(ErrorKind::Internal, "cannot make a DPoP key");
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 =
            ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| failed())?;
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|_| failed())?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(failed());
        }
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        // RFC 7638: the thumbprint of the required members in lexicographic order.
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(
            format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#).as_bytes(),
        ));
        let jwk = Jwk {
            common: CommonParameters::default(),
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x,
                y,
            }),
        };
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
            thumbprint,
            nonces: Mutex::new(HashMap::new()),
        })
    }

    /// The key's JWK thumbprint (what a bound token's `cnf.jkt` names).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A proof for `method` on `url` (`htu` without query and fragment), with the nonce
    /// last seen from that origin, and `ath` when it is for an API request with
    /// `access_token`.
    pub fn proof(
        &self,
        method: &str,
        url: &url::Url,
        access_token: Option<&SecretString>,
    ) -> Result<SecretString> {
        let mut htu = url.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let mut jti = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut jti);
        let mut claims = serde_json::json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": method.to_ascii_uppercase(),
            "htu": htu.as_str(),
            "iat": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs()),
        });
        if let Some(nonce) = self.nonces.lock().get(&origin(url)) {
            claims["nonce"] = nonce.clone().into();
        }
        if let Some(token) = access_token {
            claims["ath"] = URL_SAFE_NO_PAD
                .encode(Sha256::digest(token.expose().as_bytes()))
                .into();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("dpop+jwt".to_owned());
        header.jwk = Some(self.jwk.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::new)
            .map_err(|_| Error::new(ErrorKind::Internal, "cannot sign a DPoP proof"))
    }

    /// Remembers the nonce a response from `url` carried; returns whether it is new (a
    /// request refused for want of it is then worth sending once more).
    pub fn remember_nonce(&self, url: &url::Url, headers: &reqwest::header::HeaderMap) -> bool {
        let Some(nonce) = headers
            .get(DPOP_NONCE_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|nonce| !nonce.is_empty() && nonce.len() <= 512)
        else {
            return false;
        };
        let mut nonces = self.nonces.lock();
        let origin = origin(url);
        if nonces.get(&origin).map(String::as_str) == Some(nonce) {
            return false;
        }
        if nonces.len() >= MAX_NONCES && !nonces.contains_key(&origin) {
            nonces.clear();
        }
        nonces.insert(origin, nonce.to_owned());
        true
    }
}

fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn a_proof_names_method_url_nonce_and_token_hash() {
        let key = DpopKey::generate().unwrap();
        let url = url::Url::parse("https://api.example/v1/items?page=2#x").unwrap();
        let token = SecretString::from("access-token-value");
        let first = key.proof("get", &url, Some(&token)).unwrap();
        let parts: Vec<&str> = first.expose().split('.').collect();
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["crv"], "P-256");
        assert!(header["jwk"].get("d").is_none(), "never the private part");
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://api.example/v1/items");
        assert_eq!(
            claims["ath"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"access-token-value"))
        );
        assert!(claims.get("nonce").is_none());
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(DPOP_NONCE_HEADER, "n-1".parse().unwrap());
        assert!(key.remember_nonce(&url, &headers));
        assert!(
            !key.remember_nonce(&url, &headers),
            "not new the second time"
        );
        let second = key.proof("GET", &url, None).unwrap();
        let claims = decode(second.expose().split('.').nth(1).unwrap());
        assert_eq!(claims["nonce"], "n-1");
        assert!(claims.get("ath").is_none());
        assert_ne!(decode(parts[1])["jti"], claims["jti"]);
    }
}
