//! HTTP plumbing shared by the HTTP sources (feature `http`): endpoint rules, the
//! classification of token-endpoint and resource responses, and the time model.
//!
//! Error mapping (RFC 6749 §5.2): `invalid_client` → `InvalidCredentials`,
//! `invalid_grant` → `InvalidGrant`, `invalid_scope`/`invalid_request`/
//! `unauthorized_client`/`unsupported_grant_type` → `Configuration`, 429 → `RateLimited`
//! with Retry-After, 5xx/`temporarily_unavailable`/connection errors → `Transient`,
//! timeouts → `Timeout`, an unreadable success → `Protocol`. Messages name the endpoint
//! and the kind, never a token or secret.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::secret::SecretString;
use crate::token::{FetchedToken, Lifetime};

pub use crate::oauth2::{ClientAuth, Grant, OAuth2Source};

/// The OAuth2 source with the client-credentials grant (the common case).
pub type ClientCredentials = OAuth2Source;

/// Parses an endpoint URL and requires HTTPS unless the host is loopback.
pub fn endpoint_url(field: &str, value: &str) -> Result<url::Url> {
    let url = url::Url::parse(value).map_err(|err| {
        Error::new(
            ErrorKind::Configuration,
            format!("{field}: not a valid URL ({err})"),
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(Error::new(
            ErrorKind::Configuration,
            format!(
                "{field}: HTTPS is required for non-loopback hosts (got http://{})",
                url.host_str().unwrap_or("")
            ),
        )),
        other => Err(Error::new(
            ErrorKind::Configuration,
            format!("{field}: unsupported URL scheme {other:?}"),
        )),
    }
}

/// The HTTP client tokenlease uses: no redirects (credentials never follow a redirect to
/// another origin), bounded connect time.
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|err| {
            Error::new(
                ErrorKind::Configuration,
                format!("cannot build HTTP client: {err}"),
            )
        })
}

pub(crate) fn form_encode(value: &str) -> String {
    // RFC 6749 §2.3.1: credentials are form-encoded before Basic encoding.
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

pub(crate) fn endpoint_name(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

pub(crate) fn transport_error(url: &url::Url, err: &reqwest::Error) -> Error {
    let endpoint = endpoint_name(url);
    if err.is_timeout() {
        Error::new(ErrorKind::Timeout, format!("{endpoint}: request timed out"))
    } else if err.is_connect() {
        Error::transient(format!("{endpoint}: connection failed"))
    } else {
        Error::transient(format!(
            "{endpoint}: request failed ({})",
            describe_reqwest(err)
        ))
    }
}

fn describe_reqwest(err: &reqwest::Error) -> &'static str {
    if err.is_body() || err.is_decode() {
        "response body could not be read"
    } else if err.is_request() {
        "connection closed or reset"
    } else {
        "transport error"
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// Parses a successful RFC 6749 §5.1 token response.
pub fn parse_token_response(url: &url::Url, body: &[u8]) -> Result<FetchedToken> {
    let endpoint = endpoint_name(url);
    // serde would also accept a JSON array for a struct; a token response is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("{endpoint}: token response is not a JSON object"),
        ));
    }
    let response: TokenResponse = serde_json::from_slice(body).map_err(|err| {
        Error::new(
            ErrorKind::Protocol,
            format!("{endpoint}: token response is not valid JSON with an access_token (line {} column {})", err.line(), err.column()),
        )
    })?;
    if response.access_token.is_empty() {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("{endpoint}: empty access_token"),
        ));
    }
    let lifetime = match response.expires_in {
        None | Some(serde_json::Value::Null) => Lifetime::Unknown,
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(seconds) if seconds.is_finite() && seconds > 0.0 && seconds < 1e10 => {
                Lifetime::ExpiresIn(Duration::from_secs_f64(seconds))
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("{endpoint}: expires_in must be a positive number of seconds"),
                ))
            }
        },
        // Some servers send it as a string.
        Some(serde_json::Value::String(text)) => match text.trim().parse::<u64>() {
            Ok(seconds) if seconds > 0 => Lifetime::ExpiresIn(Duration::from_secs(seconds)),
            _ => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("{endpoint}: expires_in must be a positive number of seconds"),
                ))
            }
        },
        Some(_) => {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{endpoint}: expires_in must be a number"),
            ))
        }
    };
    Ok(FetchedToken {
        value: SecretString::new(response.access_token),
        token_type: response.token_type.unwrap_or_else(|| "Bearer".to_owned()),
        scopes: response
            .scope
            .map(|scope| scope.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        refresh_token: response
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::new),
        lifetime,
        sent_at: None,
        idle_timeout: None,
    })
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

/// The server's clock at the response, from its `Date` header.
pub fn server_date(headers: &HeaderMap) -> Option<std::time::SystemTime> {
    let value = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
}

/// The `exp` claim of a JWT, without verifying it (we only read our own token's expiry;
/// the resource server verifies signatures).
pub fn jwt_expiry(token: &str) -> Option<std::time::SystemTime> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 64 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(Deserialize)]
    struct Claims {
        exp: Option<f64>,
    }
    let exp = serde_json::from_slice::<Claims>(&bytes).ok()?.exp?;
    if !(exp.is_finite() && exp > 0.0 && exp < 1e11) {
        return None;
    }
    Some(std::time::UNIX_EPOCH + Duration::from_secs_f64(exp))
}

/// When the access token is a JWT, its `exp` is cross-checked against `expires_in` and the
/// earlier wins. `exp` is a server-clock timestamp, so it is compared with the server's
/// own `Date` (exp − Date = remaining lifetime), never with our wall clock: a client clock
/// minutes off changes nothing. Without a `Date` header our wall clock is the fallback.
/// `Date` has one-second resolution, so one second is taken off.
pub fn cross_check_jwt_expiry(
    mut fetched: FetchedToken,
    server_now: Option<std::time::SystemTime>,
) -> FetchedToken {
    let Some(exp) = jwt_expiry(fetched.value.expose()) else {
        return fetched;
    };
    let reference = server_now.unwrap_or_else(std::time::SystemTime::now);
    let by_exp = exp
        .duration_since(reference)
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs(u64::from(server_now.is_some())));
    let lifetime = match fetched.lifetime {
        Lifetime::ExpiresIn(expires_in) => expires_in.min(by_exp),
        _ => by_exp,
    };
    // A token that is already dead by its own `exp` gets the smallest lifetime; the
    // manager reports it as a protocol error instead of using it.
    fetched.lifetime = Lifetime::ExpiresIn(lifetime.max(Duration::from_nanos(1)));
    fetched
}

/// Maps a failed token- or revocation-endpoint response to an error kind.
pub fn token_endpoint_error(
    url: &url::Url,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Error {
    let endpoint = endpoint_name(url);
    let code = serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .map(|response| response.error)
        .filter(|code| {
            !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic())
        });
    let retry_after = retry_after(headers);
    let described = match &code {
        Some(code) => format!("{endpoint} answered {} ({code})", status.as_u16()),
        None => format!("{endpoint} answered {}", status.as_u16()),
    };
    let kind = match code.as_deref() {
        Some("invalid_client") => ErrorKind::InvalidCredentials,
        Some("invalid_grant") => ErrorKind::InvalidGrant,
        Some(
            "invalid_scope" | "invalid_request" | "unauthorized_client" | "unsupported_grant_type",
        ) => ErrorKind::Configuration,
        Some("temporarily_unavailable" | "server_error") => ErrorKind::Transient,
        Some("slow_down") => ErrorKind::RateLimited,
        _ if status == StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited,
        _ if status.is_server_error() => ErrorKind::Transient,
        _ if status == StatusCode::UNAUTHORIZED => ErrorKind::InvalidCredentials,
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, described).with_retry_after(retry_after)
}

/// The server's Retry-After in seconds (capped at an hour); HTTP dates are ignored.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value
        .parse::<u64>()
        .ok()
        .map(|seconds| Duration::from_secs(seconds.min(3600)))
}

/// Whether a resource server's response means "this token is no longer accepted":
/// 401 with a Bearer challenge carrying `error="invalid_token"`, or a bare 401 Bearer
/// challenge with no error code (RFC 6750 §3.1).
pub fn is_token_rejected(status: StatusCode, headers: &HeaderMap) -> bool {
    if status != StatusCode::UNAUTHORIZED {
        return false;
    }
    let Some(challenge) = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let lower = challenge.to_ascii_lowercase();
    if !lower.trim_start().starts_with("bearer") {
        return false;
    }
    !lower.contains("error=")
        || lower.contains("error=\"invalid_token\"")
        || lower.contains("error=invalid_token")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> url::Url {
        url::Url::parse("https://idp.example/token?x=1").unwrap()
    }

    #[test]
    fn https_is_required_except_for_loopback() {
        assert!(endpoint_url("token_url", "http://127.0.0.1:8080/t").is_ok());
        assert!(endpoint_url("token_url", "http://localhost/t").is_ok());
        assert!(endpoint_url("token_url", "http://[::1]/t").is_ok());
        let err = endpoint_url("token_url", "http://idp.example/t").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().starts_with("token_url: HTTPS is required"));
        assert_eq!(
            endpoint_url("token_url", "not a url").unwrap_err().kind(),
            ErrorKind::Configuration
        );
    }

    #[test]
    fn oauth_error_codes_map_to_kinds() {
        let headers = HeaderMap::new();
        let kind = |status: u16, body: &str| {
            token_endpoint_error(
                &url(),
                StatusCode::from_u16(status).unwrap(),
                &headers,
                body.as_bytes(),
            )
            .kind()
        };
        assert_eq!(
            kind(401, r#"{"error":"invalid_client"}"#),
            ErrorKind::InvalidCredentials
        );
        assert_eq!(
            kind(400, r#"{"error":"invalid_grant"}"#),
            ErrorKind::InvalidGrant
        );
        assert_eq!(
            kind(400, r#"{"error":"invalid_scope"}"#),
            ErrorKind::Configuration
        );
        assert_eq!(
            kind(503, r#"{"error":"temporarily_unavailable"}"#),
            ErrorKind::Transient
        );
        assert_eq!(kind(502, "<html>bad gateway</html>"), ErrorKind::Transient);
        assert_eq!(kind(429, ""), ErrorKind::RateLimited);
        assert_eq!(kind(418, "teapot"), ErrorKind::Protocol);
    }

    #[test]
    fn retry_after_is_read_and_messages_name_the_endpoint_only() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        let err = token_endpoint_error(
            &url(),
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"error":"slow_down","error_description":"secret-in-description"}"#,
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            err.message(),
            "https://idp.example/token answered 429 (slow_down)"
        );
    }

    #[test]
    fn token_responses_parse_and_malformed_ones_are_protocol_errors() {
        let ok = parse_token_response(&url(), br#"{"access_token":"abc","token_type":"Bearer","expires_in":900,"refresh_token":"r","scope":"a b"}"#).unwrap();
        assert_eq!(ok.lifetime, Lifetime::ExpiresIn(Duration::from_secs(900)));
        assert_eq!(ok.scopes, vec!["a", "b"]);
        assert!(ok.refresh_token.is_some());
        let string_ttl =
            parse_token_response(&url(), br#"{"access_token":"abc","expires_in":"60"}"#).unwrap();
        assert_eq!(
            string_ttl.lifetime,
            Lifetime::ExpiresIn(Duration::from_secs(60))
        );
        for bad in [
            &br#"["abc", "Bearer", 60]"#[..],
            &br#"{"token":"x"}"#[..],
            b"not json",
            br#"{"access_token":"a","expires_in":-5}"#,
            br#"{"access_token":""}"#,
        ] {
            let err = parse_token_response(&url(), bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Protocol);
        }
    }

    fn jwt(exp: u64) -> String {
        use base64::Engine;
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        format!(
            "{}.{}.sig",
            encode(r#"{"alg":"RS256"}"#),
            encode(&format!(r#"{{"exp":{exp},"sub":"x"}}"#))
        )
    }

    #[test]
    fn jwt_exp_is_read_against_the_server_date_so_client_skew_does_not_matter() {
        let server_now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // exp says 10 minutes, expires_in says 1 hour: the earlier wins.
        let fetched = FetchedToken::bearer(jwt(1_800_000_600), Duration::from_secs(3600));
        let checked = cross_check_jwt_expiry(fetched, Some(server_now));
        assert_eq!(
            checked.lifetime,
            Lifetime::ExpiresIn(Duration::from_secs(599))
        );
        // expires_in earlier than exp: expires_in wins.
        let fetched = FetchedToken::bearer(jwt(1_800_000_600), Duration::from_secs(60));
        let checked = cross_check_jwt_expiry(fetched, Some(server_now));
        assert_eq!(
            checked.lifetime,
            Lifetime::ExpiresIn(Duration::from_secs(60))
        );
        // The result depends only on server timestamps: no local clock involved.
        let opaque = FetchedToken::bearer("opaque-token", Duration::from_secs(60));
        assert_eq!(
            cross_check_jwt_expiry(opaque, Some(server_now)).lifetime,
            Lifetime::ExpiresIn(Duration::from_secs(60))
        );
    }

    #[test]
    fn malformed_jwts_are_ignored() {
        for token in ["a.b", "a.!!!.c", "a.e30.c", "a.b.c.d", ""] {
            assert_eq!(jwt_expiry(token), None, "{token}");
        }
    }

    #[test]
    fn date_header_is_parsed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::DATE,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(
            server_date(&headers),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }

    #[test]
    fn resource_rejections_are_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Bearer error="invalid_token", error_description="expired""#
                .parse()
                .unwrap(),
        );
        assert!(is_token_rejected(StatusCode::UNAUTHORIZED, &headers));
        assert!(!is_token_rejected(StatusCode::FORBIDDEN, &headers));
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Bearer error="insufficient_scope""#.parse().unwrap(),
        );
        assert!(!is_token_rejected(StatusCode::UNAUTHORIZED, &headers));
        assert!(is_token_rejected(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new()
        ));
    }
}
