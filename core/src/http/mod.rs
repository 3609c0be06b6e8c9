//! HTTP plumbing shared by the HTTP sources (feature `http`): endpoint rules, the
//! classification of token-endpoint and resource responses, and the time model.
//!
//! Error mapping of token and revocation endpoints ([`token_error_kind`]; the full table is
//! in docs/interop.md): the HTTP status decides first, the OAuth2 `error` code (RFC 6749
//! §5.2) only within a 400/403 or another unlisted 4xx. 401 → `InvalidCredentials` whatever
//! the code (client authentication failed: `unauthorized_client`, `invalid_grant` too),
//! 429 → `RateLimited` (with Retry-After when given), 5xx → `Transient`, 408 → `Timeout`,
//! 404/405/410 and 3xx (redirects are not followed) → `Configuration`; then
//! `invalid_client` → `InvalidCredentials`, `invalid_grant` → `InvalidGrant`,
//! `invalid_scope`/`invalid_request`/`unauthorized_client`/`unsupported_grant_type`/
//! `invalid_target`/`unsupported_token_type`/`access_denied` → `Configuration`,
//! `temporarily_unavailable`/`server_error` → `Transient`, `slow_down` → `RateLimited`;
//! a 403 without a known code → `Configuration`, anything else → `Protocol`. HTML pages and
//! empty bodies carry no code, so only their status counts. Connection errors →
//! `Transient`, timeouts → `Timeout`, an unreadable success → `Protocol`. Messages name
//! the endpoint, the status and the code, never a token, a secret or the server's
//! description.
//!
//! Discovery helpers: [`openid_configuration_url`] (OpenID Connect Discovery 1.0 §4) and
//! [`oauth_authorization_server_url`] (RFC 8414 §3) build the two well-known URLs of an
//! issuer, [`discovery_issuer`] checks an issuer, [`same_issuer`] compares it with the
//! one a document names (§4.3 / RFC 8414 §3.3).
//!
//! Every response body tokenlease reads is bounded: [`MAX_BODY_BYTES`] for token,
//! revocation, discovery and session endpoints, [`MAX_INSPECTED_ERROR_BODY_BYTES`] for the
//! prefix of an API error body [`crate::http::client::AuthorizedClient`] inspects. A body over
//! its bound is a `Protocol` error naming the endpoint and the bound, raised as soon as the
//! bound is crossed (a broken endpoint streaming without end costs at most the bound in
//! memory, not the 30 s request timeout's worth of data).

pub mod authorize;
pub mod client;

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, ErrorKind, Result};
use crate::lifecycle::token::{FetchedToken, Lifetime};
use crate::secret::SecretString;

/// The largest response body read from a token, revocation, discovery or session
/// (login, keep-alive, logout) endpoint: 1 MiB. Real answers are a few hundred bytes to a
/// few KiB; anything near this bound is a broken or hostile endpoint.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The largest prefix of an API error response body that
/// [`crate::http::client::AuthorizedClient`] reads to decide whether the token was rejected
/// (e.g. a `"Token Expired"` text): 64 KiB. Successful responses are never read.
pub const MAX_INSPECTED_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The largest `expires_in` accepted from a server, in seconds (about 317 years), whether
/// it arrives as a JSON number or as a string. Larger values are protocol errors, not
/// "forever": they would overflow instant arithmetic downstream.
pub const MAX_EXPIRES_IN_SECS: f64 = 1e10;

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
    tls_http_client(&TlsOptions::default())
}

/// TLS settings of an HTTP client beyond the defaults: a client certificate (mutual TLS,
/// RFC 8705) and extra trusted roots (a private CA). Key material is a secret.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// The client certificate chain and its private key, PEM (one text).
    pub identity_pem: Option<SecretString>,
    /// CA certificates to trust besides the Mozilla roots, PEM.
    pub extra_roots_pem: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("client_certificate", &self.identity_pem.is_some())
            .field("extra_roots", &self.extra_roots_pem.is_some())
            .finish()
    }
}

/// [`http_client`] with these TLS settings. A certificate or key that cannot be used is a
/// `Configuration` error that does not show it.
pub fn tls_http_client(tls: &TlsOptions) -> Result<reqwest::Client> {
    let config = |what: &str| Error::new(ErrorKind::Configuration, what.to_owned());
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(identity) = &tls.identity_pem {
        let identity = reqwest::Identity::from_pem(identity.expose().as_bytes()).map_err(|_| {
            config("client certificate: not a PEM certificate with its PKCS#8 private key")
        })?;
        builder = builder.identity(identity);
    }
    if let Some(roots) = &tls.extra_roots_pem {
        let certificates = reqwest::Certificate::from_pem_bundle(roots.as_bytes())
            .map_err(|_| config("ca_file: not PEM certificates"))?;
        if certificates.is_empty() {
            return Err(config("ca_file: no certificate in it"));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|err| {
        let cause = std::error::Error::source(&err)
            .map(|cause| format!(" ({cause})"))
            .unwrap_or_default();
        Error::new(
            ErrorKind::Configuration,
            format!("cannot build HTTP client: {err}{cause}"),
        )
    })
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
    transport_error_at(&endpoint_name(url), err)
}

/// [`transport_error`] for an endpoint already rendered for display (e.g. a session URL
/// shown from its template, so no substituted credential or token appears).
pub(crate) fn transport_error_at(endpoint: &str, err: &reqwest::Error) -> Error {
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

fn describe_limit(limit: usize) -> String {
    if limit >= 1024 * 1024 && limit % (1024 * 1024) == 0 {
        format!("{} MiB", limit / (1024 * 1024))
    } else if limit >= 1024 && limit % 1024 == 0 {
        format!("{} KiB", limit / 1024)
    } else {
        format!("{limit} bytes")
    }
}

/// The `Protocol` error for a body over `limit` from `endpoint`.
pub(crate) fn body_too_large(endpoint: &str, limit: usize) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!(
            "{endpoint}: response body exceeds the {} limit ({limit} bytes)",
            describe_limit(limit)
        ),
    )
}

/// Appends `chunk` to `buffer`, growing it by hand so that an outgrown buffer is wiped
/// before it is freed (a `Vec`'s own growth would leave the old copy in freed memory).
fn append_wiping(buffer: &mut Zeroizing<Vec<u8>>, chunk: &[u8]) {
    let needed = buffer.len() + chunk.len();
    if needed > buffer.capacity() {
        let mut grown = Zeroizing::new(Vec::with_capacity(needed.max(buffer.capacity() * 2)));
        grown.extend_from_slice(buffer);
        *buffer = grown; // the old buffer is zeroized as it drops
    }
    buffer.extend_from_slice(chunk);
}

/// Reads at most `limit` bytes of `response`'s body, chunk by chunk, and says whether that
/// was the whole body (`true`) or the body goes on past `limit` (`false`; the bytes kept
/// are then exactly the first `limit`). Nothing past the first chunk that crosses the
/// bound is read. The buffer is wiped when dropped (bodies carry tokens).
pub(crate) async fn read_body_prefix(
    response: &mut reqwest::Response,
    endpoint: &str,
    limit: usize,
) -> Result<(Zeroizing<Vec<u8>>, bool)> {
    let expected = response
        .content_length()
        .and_then(|length| usize::try_from(length).ok())
        .unwrap_or(0)
        .min(limit);
    let mut body = Zeroizing::new(Vec::with_capacity(expected));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| transport_error_at(endpoint, &err))?
    {
        let room = limit - body.len();
        if chunk.len() > room {
            append_wiping(&mut body, &chunk[..room]);
            return Ok((body, false));
        }
        append_wiping(&mut body, &chunk);
    }
    Ok((body, true))
}

/// Reads `response`'s whole body, at most `limit` bytes of it: a body declared (by
/// `Content-Length`) or found to be longer is a `Protocol` error naming `endpoint` and the
/// limit, raised without reading past the limit.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    endpoint: &str,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(body_too_large(endpoint, limit));
    }
    match read_body_prefix(&mut response, endpoint, limit).await? {
        (body, true) => Ok(body),
        (_, false) => Err(body_too_large(endpoint, limit)),
    }
}

/// A `application/x-www-form-urlencoded` body built in one buffer that is wiped when
/// dropped: the buffer is sized up front for the worst case (every byte percent-encoded),
/// so it never reallocates and leaves no unwiped copy of a secret behind.
pub(crate) fn form_body(pairs: &[(&str, &str)]) -> Zeroizing<String> {
    let capacity = pairs
        .iter()
        .map(|(name, value)| 3 * (name.len() + value.len()) + 2)
        .sum();
    let mut body = Zeroizing::new(String::with_capacity(capacity));
    for (name, value) in pairs {
        if !body.is_empty() {
            body.push('&');
        }
        body.extend(url::form_urlencoded::byte_serialize(name.as_bytes()));
        body.push('=');
        body.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
    }
    debug_assert!(body.len() <= capacity);
    body
}

/// The `Authorization: Basic` value for client credentials (RFC 6749 §2.3.1: each part is
/// form-encoded before the Basic encoding). Every intermediate copy of the secret is wiped;
/// the returned value is marked sensitive (it still lives, unwiped, in the request's
/// header map until reqwest drops it).
pub(crate) fn basic_auth_header(
    user: &str,
    password: &str,
) -> Result<reqwest::header::HeaderValue> {
    use base64::Engine;
    let mut credentials =
        Zeroizing::new(String::with_capacity(3 * (user.len() + password.len()) + 1));
    credentials.extend(url::form_urlencoded::byte_serialize(user.as_bytes()));
    credentials.push(':');
    credentials.extend(url::form_urlencoded::byte_serialize(password.as_bytes()));
    let encoded_len = base64::encoded_len(credentials.len(), true).unwrap_or(usize::MAX);
    let mut header = Zeroizing::new(String::with_capacity(6usize.saturating_add(encoded_len)));
    header.push_str("Basic ");
    base64::engine::general_purpose::STANDARD.encode_string(credentials.as_bytes(), &mut header);
    let mut value = reqwest::header::HeaderValue::from_str(&header).map_err(|_| {
        Error::new(
            ErrorKind::Configuration,
            "client credentials cannot be sent in a header",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Wipes every string in a JSON value (used after a body built from secrets was sent,
/// or after a token was taken out of a parsed response).
pub(crate) fn zeroize_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => text.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(zeroize_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(zeroize_json),
        _ => {}
    }
}

/// A server's `expires_in` (number or string) as a lifetime, within the same bounds
/// whatever its JSON type: finite, positive, below [`MAX_EXPIRES_IN_SECS`].
fn bounded_expires_in(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds > 0.0 && seconds < MAX_EXPIRES_IN_SECS)
        .then(|| Duration::from_secs_f64(seconds))
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
    id_token: Option<String>,
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
        // Some servers send it as a string ("3600"); both forms get the same bounds.
        Some(serde_json::Value::Number(n)) => match n.as_f64().and_then(bounded_expires_in) {
            Some(lifetime) => Lifetime::ExpiresIn(lifetime),
            None => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("{endpoint}: expires_in must be a positive number of seconds"),
                ))
            }
        },
        Some(serde_json::Value::String(text)) => match text
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|seconds| bounded_expires_in(seconds as f64))
        {
            Some(lifetime) => Lifetime::ExpiresIn(lifetime),
            None => {
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
        id_token: response
            .id_token
            .filter(|t| !t.is_empty())
            .map(SecretString::new),
        attributes: Default::default(),
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

/// The OAuth2 `error` code (RFC 6749 §5.2) of an error response body, if it is a JSON
/// object with a short printable-ASCII string `error`. HTML pages, empty bodies, other JSON
/// shapes and over-long or odd codes give `None` (only the status is then judged).
pub fn oauth_error_code(body: &[u8]) -> Option<String> {
    // serde would also read a JSON array as the struct; an error response is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .map(|response| response.error)
        .filter(|code| {
            !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// The OAuth2 `error_description` of an error response body, when it is a JSON object
/// with a string one (foreign text: redact it before showing it).
pub fn oauth_error_description(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Described {
        error_description: String,
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Described>(body)
        .ok()
        .map(|described| described.error_description)
}

/// What a failed token- or revocation-endpoint answer means: the status decides first,
/// the OAuth2 `error` code only where the status leaves it open (see the module docs and
/// the table in docs/interop.md).
pub fn token_error_kind(status: StatusCode, code: Option<&str>) -> ErrorKind {
    match status.as_u16() {
        // RFC 6749 §5.2: a 401 says client authentication failed, whatever code comes with
        // it (Keycloak answers a bad secret with 401 `unauthorized_client`; some servers
        // 401 `invalid_grant` when the client, not the grant, was refused).
        401 => ErrorKind::InvalidCredentials,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Transient,
        408 => ErrorKind::Timeout,
        // No such endpoint (or not for POST): the URL is wrong, whatever a gateway's body says.
        404 | 405 | 410 => ErrorKind::Configuration,
        // Redirects are never followed with credentials: configure the final URL.
        300..=399 => ErrorKind::Configuration,
        _ => match code {
            Some("invalid_client") => ErrorKind::InvalidCredentials,
            Some("invalid_grant") => ErrorKind::InvalidGrant,
            Some(
                "invalid_scope"
                | "invalid_request"
                | "unauthorized_client"
                | "unsupported_grant_type"
                | "invalid_target"
                | "unsupported_token_type"
                | "access_denied",
            ) => ErrorKind::Configuration,
            Some("temporarily_unavailable" | "server_error") => ErrorKind::Transient,
            Some("slow_down") => ErrorKind::RateLimited,
            // A 403 without a code we know: a WAF, an IP allow-list or a disabled client.
            // Terminal; retrying cannot help.
            _ if status == StatusCode::FORBIDDEN => ErrorKind::Configuration,
            _ => ErrorKind::Protocol,
        },
    }
}

/// Maps a failed token- or revocation-endpoint response to an error ([`token_error_kind`]),
/// carrying the server's Retry-After.
pub fn token_endpoint_error(
    url: &url::Url,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Error {
    let endpoint = endpoint_name(url);
    let code = oauth_error_code(body);
    let retry_after = retry_after(headers);
    let described = match &code {
        Some(code) => format!("{endpoint} answered {} ({code})", status.as_u16()),
        None => format!("{endpoint} answered {}", status.as_u16()),
    };
    let kind = token_error_kind(status, code.as_deref());
    let described = match (kind, status.as_u16()) {
        (ErrorKind::InvalidCredentials, _) => {
            format!("{described}: client authentication failed (check client_id, client_secret and client_auth)")
        }
        (ErrorKind::Configuration, 404 | 405 | 410) => {
            format!("{described}: no such endpoint (check the URL)")
        }
        (ErrorKind::Configuration, 300..=399) => {
            format!("{described}: redirects are not followed (configure the final URL)")
        }
        _ => described,
    };
    Error::new(kind, described).with_retry_after(retry_after)
}

/// Checks an issuer identifier for discovery (OpenID Connect Discovery 1.0 §2, RFC 8414
/// §2): an HTTPS URL (HTTP on loopback only) without query, fragment or credentials.
pub fn discovery_issuer(issuer: &str) -> Result<url::Url> {
    let url = endpoint_url("issuer", issuer)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::new(
            ErrorKind::Configuration,
            "issuer: an issuer has no query or fragment (OpenID Connect Discovery 1.0 §2, RFC 8414 §2)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::new(
            ErrorKind::Configuration,
            "issuer: an issuer has no user name or password",
        ));
    }
    Ok(url)
}

/// The issuer's path without its terminating `/` (`""` for an issuer without a path).
fn issuer_path(issuer: &url::Url) -> &str {
    issuer.path().trim_end_matches('/')
}

/// OpenID Connect Discovery 1.0 §4: `/.well-known/openid-configuration` appended to the
/// issuer *including its path* (any terminating `/` removed first):
/// `https://idp.example/realms/x` → `https://idp.example/realms/x/.well-known/openid-configuration`.
pub fn openid_configuration_url(issuer: &url::Url) -> url::Url {
    let mut url = issuer.clone();
    let path = format!("{}/.well-known/openid-configuration", issuer_path(issuer));
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// RFC 8414 §3: `/.well-known/oauth-authorization-server` inserted between the host and the
/// issuer's path (any terminating `/` removed first):
/// `https://idp.example/realms/x` → `https://idp.example/.well-known/oauth-authorization-server/realms/x`.
pub fn oauth_authorization_server_url(issuer: &url::Url) -> url::Url {
    let mut url = issuer.clone();
    let path = format!(
        "/.well-known/oauth-authorization-server{}",
        issuer_path(issuer)
    );
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// Whether `named` (the `issuer` of a discovery document) is the configured `issuer`
/// (OpenID Connect Discovery 1.0 §4.3, RFC 8414 §3.3). Compared as URLs: scheme, host and
/// port as the URL standard normalises them (case, default port), and the path exactly
/// except for one terminating `/` (`https://tenant.auth0.com/` and
/// `https://tenant.auth0.com` are the same issuer; `/realms/a` and `/realms/b` are not).
pub fn same_issuer(issuer: &url::Url, named: &str) -> bool {
    let Ok(named) = url::Url::parse(named) else {
        return false;
    };
    named.scheme() == issuer.scheme()
        && named.host() == issuer.host()
        && named.port_or_known_default() == issuer.port_or_known_default()
        && named.username() == issuer.username()
        && named.password() == issuer.password()
        && named.query().is_none()
        && named.fragment().is_none()
        && issuer_path(&named) == issuer_path(issuer)
}

/// A value a server sent, made safe to quote in an error message: control characters
/// replaced, cut to 200 characters.
pub(crate) fn quoted_server_value(value: &str) -> String {
    let mut shown: String = value
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().count() > 200 {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// The server's Retry-After in seconds (capped at an hour); HTTP dates are ignored.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value
        .parse::<u64>()
        .ok()
        .map(|seconds| Duration::from_secs(seconds.min(3600)))
}

/// Whether a resource server's response means "this token is no longer accepted": 401 with
/// a `Bearer` or `DPoP` challenge (RFC 6750 §3.1, RFC 9449 §7.1) carrying
/// `error="invalid_token"`, or such a challenge with no error code, or a 401 with no challenge
/// at all. Every challenge of every `WWW-Authenticate` header is looked at; a DPoP
/// `use_dpop_nonce` or an `insufficient_scope` is not a rejection of the token.
pub fn is_token_rejected(status: StatusCode, headers: &HeaderMap) -> bool {
    if status != StatusCode::UNAUTHORIZED {
        return false;
    }
    let mut values = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .peekable();
    if values.peek().is_none() {
        return true;
    }
    values.any(|value| {
        challenges(value).iter().any(|(scheme, params)| {
            (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop"))
                && match challenge_error(params) {
                    None => true,
                    Some(error) => error == "invalid_token",
                }
        })
    })
}

/// The challenges of one `WWW-Authenticate` value: each scheme with its parameter text.
/// Commas separate both challenges and parameters; a part that starts with a token not
/// followed by `=` starts a new challenge.
fn challenges(value: &str) -> Vec<(&str, String)> {
    let is_token = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let mut found: Vec<(&str, String)> = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        let (first, rest) = part.split_once(' ').unwrap_or((part, ""));
        if is_token(first) && !first.contains('=') && !rest.trim_start().starts_with('=') {
            found.push((first, rest.to_owned()));
        } else if let Some((_, params)) = found.last_mut() {
            params.push(',');
            params.push_str(part);
        }
    }
    found
}

/// The `error` parameter of a challenge's parameters, lower-cased, unquoted.
fn challenge_error(params: &str) -> Option<String> {
    params.split(',').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("error")
            .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    })
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
    fn the_status_decides_before_the_error_code() {
        let kind = |status: u16, code: Option<&str>| {
            token_error_kind(StatusCode::from_u16(status).unwrap(), code)
        };
        // 401: client authentication failed, whatever the code says.
        for code in [
            Some("unauthorized_client"),
            Some("invalid_grant"),
            Some("invalid_request"),
            Some("server_error"),
            None,
        ] {
            assert_eq!(kind(401, code), ErrorKind::InvalidCredentials, "{code:?}");
        }
        for code in [Some("invalid_client"), Some("invalid_grant"), None] {
            assert_eq!(kind(429, code), ErrorKind::RateLimited, "{code:?}");
            assert_eq!(kind(500, code), ErrorKind::Transient, "{code:?}");
            assert_eq!(kind(503, code), ErrorKind::Transient, "{code:?}");
            assert_eq!(kind(404, code), ErrorKind::Configuration, "{code:?}");
            assert_eq!(kind(302, code), ErrorKind::Configuration, "{code:?}");
            assert_eq!(kind(408, code), ErrorKind::Timeout, "{code:?}");
        }
        assert_eq!(
            kind(400, Some("invalid_client")),
            ErrorKind::InvalidCredentials
        );
        assert_eq!(
            kind(400, Some("unauthorized_client")),
            ErrorKind::Configuration
        );
        assert_eq!(
            kind(400, Some("unsupported_token_type")),
            ErrorKind::Configuration
        );
        assert_eq!(kind(400, None), ErrorKind::Protocol);
        assert_eq!(
            kind(403, Some("invalid_client")),
            ErrorKind::InvalidCredentials
        );
        assert_eq!(kind(403, Some("invalid_grant")), ErrorKind::InvalidGrant);
        assert_eq!(kind(403, None), ErrorKind::Configuration);
        assert_eq!(kind(403, Some("made_up")), ErrorKind::Configuration);
        assert_eq!(kind(422, Some("made_up")), ErrorKind::Protocol);
        // Codes come from JSON objects only.
        assert_eq!(
            oauth_error_code(br#"{"error":"invalid_client"}"#).as_deref(),
            Some("invalid_client")
        );
        for body in [
            &b""[..],
            b"<html>401</html>",
            br#"{"error":{"code":1}}"#,
            br#"{"error":"a b"}"#,
            br#"["invalid_client"]"#,
        ] {
            assert_eq!(oauth_error_code(body), None, "{body:?}");
        }
    }

    #[test]
    fn well_known_urls_follow_oidc_discovery_and_rfc_8414() {
        let issuer = |text: &str| discovery_issuer(text).unwrap();
        for (given, oidc, rfc8414) in [
            (
                "https://idp.example/realms/tl",
                "https://idp.example/realms/tl/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server/realms/tl",
            ),
            (
                "https://idp.example/realms/tl/",
                "https://idp.example/realms/tl/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server/realms/tl",
            ),
            (
                "https://idp.example",
                "https://idp.example/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server",
            ),
            (
                "https://idp.example/",
                "https://idp.example/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server",
            ),
            (
                "https://login.example:8443/0a1b-tenant/v2.0",
                "https://login.example:8443/0a1b-tenant/v2.0/.well-known/openid-configuration",
                "https://login.example:8443/.well-known/oauth-authorization-server/0a1b-tenant/v2.0",
            ),
        ] {
            assert_eq!(openid_configuration_url(&issuer(given)).as_str(), oidc, "{given}");
            assert_eq!(oauth_authorization_server_url(&issuer(given)).as_str(), rfc8414, "{given}");
        }
        for bad in [
            "https://idp.example/x?q=1",
            "https://idp.example/x#f",
            "https://u:p@idp.example/x",
            "http://idp.example/x",
            "ftp://idp.example/",
        ] {
            assert_eq!(
                discovery_issuer(bad).unwrap_err().kind(),
                ErrorKind::Configuration,
                "{bad}"
            );
        }
    }

    #[test]
    fn issuers_are_compared_as_urls_up_to_a_terminating_slash() {
        let issuer = discovery_issuer("https://idp.example/realms/tl").unwrap();
        for same in [
            "https://idp.example/realms/tl",
            "https://idp.example/realms/tl/",
            "https://IDP.example:443/realms/tl",
        ] {
            assert!(same_issuer(&issuer, same), "{same}");
        }
        for other in [
            "https://idp.example/realms/TL",
            "https://idp.example/realms/other",
            "https://idp.example/realms",
            "https://idp.example/realms/tl/x",
            "http://idp.example/realms/tl",
            "https://idp.example:8443/realms/tl",
            "https://evil.example/realms/tl",
            "https://idp.example/realms/tl?x=1",
            "https://idp.example/{tenantid}/v2.0",
            "not a url",
            "",
        ] {
            assert!(!same_issuer(&issuer, other), "{other}");
        }
        let root = discovery_issuer("https://tenant.example").unwrap();
        assert!(same_issuer(&root, "https://tenant.example/"));
        assert!(same_issuer(&root, "https://tenant.example"));
        assert_eq!(quoted_server_value("a\nb"), "\"a?b\"");
        assert_eq!(quoted_server_value(&"x".repeat(300)).chars().count(), 203);
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

    #[test]
    fn expires_in_has_the_same_bounds_as_a_number_or_a_string() {
        let parse = |expires_in: &str| {
            parse_token_response(
                &url(),
                format!(r#"{{"access_token":"abc","expires_in":{expires_in}}}"#).as_bytes(),
            )
        };
        for (number, string) in [("3600", r#""3600""#), ("9999999999", r#"" 9999999999 ""#)] {
            assert_eq!(
                parse(number).unwrap().lifetime,
                parse(string).unwrap().lifetime,
                "{number} vs {string}"
            );
        }
        for absurd in [
            "99999999999999",
            r#""99999999999999""#,
            "10000000000",
            r#""10000000000""#,
            r#""18446744073709551615""#,
            r#""18446744073709551616""#,
            "1e300",
            "0",
            r#""0""#,
            r#""-5""#,
            r#""""#,
        ] {
            let err = parse(absurd).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Protocol, "{absurd}");
            assert_eq!(
                err.message(),
                "https://idp.example/token: expires_in must be a positive number of seconds",
                "{absurd}"
            );
        }
    }

    #[test]
    fn form_bodies_and_basic_credentials_are_encoded_as_rfc_6749_says() {
        assert_eq!(
            form_body(&[("grant_type", "password"), ("password", "p&w=d +ü")]).as_str(),
            "grant_type=password&password=p%26w%3Dd+%2B%C3%BC"
        );
        assert_eq!(form_body(&[]).as_str(), "");
        // RFC 6749 §2.3.1: form-encoded, then Basic.
        let header = basic_auth_header("client:1", "s3cr3t/+").unwrap();
        assert!(header.is_sensitive());
        assert_eq!(
            header.to_str().unwrap(),
            "Basic Y2xpZW50JTNBMTpzM2NyM3QlMkYlMkI="
        );
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

    #[test]
    fn rejections_are_read_from_bearer_and_dpop_challenges_only() {
        let rejected = |challenges: &[&str]| {
            let mut headers = HeaderMap::new();
            for challenge in challenges {
                headers.append(WWW_AUTHENTICATE, challenge.parse().unwrap());
            }
            is_token_rejected(StatusCode::UNAUTHORIZED, &headers)
        };
        assert!(rejected(&[]), "a 401 with no challenge");
        assert!(rejected(&["Bearer"]));
        assert!(rejected(&[r#"Bearer realm="api", error="invalid_token""#]));
        assert!(rejected(&[
            r#"DPoP realm="x", error="invalid_token", algs="ES256""#
        ]));
        assert!(rejected(&[
            r#"Bearer realm="x", DPoP error="invalid_token", algs="ES256""#
        ]));
        assert!(rejected(&[
            "Basic realm=\"x\"",
            r#"DPoP error=invalid_token"#
        ]));
        assert!(!rejected(&[
            r#"DPoP error="use_dpop_nonce", error_description="a, b""#
        ]));
        assert!(!rejected(&[
            r#"Bearer error="insufficient_scope", scope="a b""#
        ]));
        assert!(!rejected(&["Basic realm=\"x\""]));
        assert!(!is_token_rejected(StatusCode::FORBIDDEN, &HeaderMap::new()));
    }
}
