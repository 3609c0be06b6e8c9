//! Interactive logins: the authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636
//! with S256), and a loopback redirect receiver for desktop apps and CLIs (RFC 8252 §7.3).
//!
//! The application only opens the browser:
//!
//! ```no_run
//! # async fn demo() -> tokenlease::Result<()> {
//! use tokenlease::oauth2::OAuth2Source;
//! use tokenlease::source::authorization::LoopbackRedirect;
//!
//! let source = OAuth2Source::discover("https://idp.example", "my-cli", None)?
//!     .scopes(["openid", "offline_access"]);
//! let redirect = LoopbackRedirect::bind().await?;
//! let request = source.authorization_request(&redirect.redirect_uri()).await?;
//! println!("open {}", request.url());
//! let returned = redirect.receive(std::time::Duration::from_secs(300)).await?;
//! let code = request.code_from_redirect(&returned)?;
//! let login = source.exchange_code(&request, &code).await?;
//! # let _ = login; Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{redact_foreign_text, Error, ErrorKind, Result};
use crate::secret::SecretString;

/// A source a person logs in to interactively (the OAuth2 source): what
/// [`crate::Manager::begin_login`] and [`crate::Manager::start_device_login`] drive.
#[async_trait::async_trait]
pub trait InteractiveLogin: Send + Sync {
    /// See [`crate::oauth2::OAuth2Source::authorization_request`].
    async fn authorization_request(&self, redirect_uri: &str) -> Result<AuthorizationRequest>;
    /// See [`crate::oauth2::OAuth2Source::exchange_code`].
    async fn exchange_code(
        &self,
        request: &AuthorizationRequest,
        code: &AuthorizationCode,
    ) -> Result<crate::FetchedToken>;
    /// See [`crate::oauth2::OAuth2Source::start_device_authorization`].
    async fn start_device_authorization(
        &self,
    ) -> Result<crate::source::device::DeviceAuthorization>;
    /// See [`crate::oauth2::OAuth2Source::poll_device_authorization`].
    async fn poll_device_authorization(
        &self,
        device: &crate::source::device::DeviceAuthorization,
    ) -> Result<crate::FetchedToken>;
}

/// A PKCE pair (RFC 7636): a fresh high-entropy verifier and its S256 challenge.
#[derive(Clone)]
pub struct Pkce {
    verifier: SecretString,
    challenge: String,
}

impl fmt::Debug for Pkce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &"[redacted]")
            .field("method", &"S256")
            .finish()
    }
}

impl Pkce {
    /// A new pair: 32 random bytes, base64url (43 characters, §4.1).
    pub fn generate() -> Self {
        Self::from_verifier(random_text()).expect("a generated verifier is valid")
    }

    /// The pair for a given verifier: 43 to 128 characters of `[A-Za-z0-9-._~]` (§4.1).
    pub fn from_verifier(verifier: impl Into<SecretString>) -> Result<Self> {
        let verifier = verifier.into();
        let text = verifier.expose();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if !(43..=128).contains(&text.len()) || !text.chars().all(allowed) {
            return Err(Error::new(
                ErrorKind::Usage,
                "a PKCE code verifier is 43 to 128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1)",
            ));
        }
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(text.as_bytes()));
        Ok(Self {
            verifier,
            challenge,
        })
    }

    /// The verifier, sent with the code exchange.
    pub fn verifier(&self) -> &SecretString {
        &self.verifier
    }

    /// The S256 challenge, sent with the authorization request.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }
}

/// 32 random bytes from the OS generator, base64url without padding.
fn random_text() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One interactive login in progress: the URL to open, and what checks its result.
#[derive(Clone)]
pub struct AuthorizationRequest {
    url: url::Url,
    redirect_uri: url::Url,
    state: SecretString,
    nonce: Option<SecretString>,
    pkce: Pkce,
}

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("redirect_uri", &self.redirect_uri.as_str())
            .field("state", &"[redacted]")
            .field("pkce", &self.pkce)
            .finish()
    }
}

/// Parameters the protocol sets itself; an extra parameter cannot replace them.
const RESERVED: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

impl AuthorizationRequest {
    pub(crate) fn new(
        endpoint: url::Url,
        client_id: &str,
        redirect_uri: &str,
        scopes: &[String],
        extra: &[(String, String)],
    ) -> Result<Self> {
        let redirect = url::Url::parse(redirect_uri).map_err(|_| {
            Error::new(
                ErrorKind::Usage,
                "redirect_uri: not an absolute URL (e.g. http://127.0.0.1:PORT/callback)",
            )
        })?;
        if redirect.fragment().is_some() {
            return Err(Error::new(
                ErrorKind::Usage,
                "redirect_uri: must not have a fragment (RFC 6749 §3.1.2)",
            ));
        }
        if let Some((name, _)) = extra
            .iter()
            .find(|(name, _)| RESERVED.contains(&name.as_str()))
        {
            return Err(Error::new(
                ErrorKind::Configuration,
                format!("authorization parameter {name:?} is set by tokenlease itself"),
            ));
        }
        let state = SecretString::from(random_text());
        let nonce = scopes
            .iter()
            .any(|scope| scope == "openid")
            .then(|| SecretString::from(random_text()));
        let pkce = Pkce::generate();
        let mut url = endpoint;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", redirect.as_str())
                .append_pair("state", state.expose())
                .append_pair("code_challenge", pkce.challenge())
                .append_pair("code_challenge_method", "S256");
            if !scopes.is_empty() {
                query.append_pair("scope", &scopes.join(" "));
            }
            if let Some(nonce) = &nonce {
                query.append_pair("nonce", nonce.expose());
            }
            for (name, value) in extra {
                query.append_pair(name, value);
            }
        }
        Ok(Self {
            url,
            redirect_uri: redirect,
            state,
            nonce,
            pkce,
        })
    }

    /// The URL to open in the user's browser.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The redirect URI this request names (the code exchange repeats it).
    pub fn redirect_uri(&self) -> &str {
        self.redirect_uri.as_str()
    }

    /// The `nonce` sent (when `openid` was asked for), to compare with the ID token's.
    pub fn nonce(&self) -> Option<&SecretString> {
        self.nonce.as_ref()
    }

    /// The PKCE pair of this request.
    pub fn pkce(&self) -> &Pkce {
        &self.pkce
    }

    /// Checks the URL the browser was redirected to and returns the code in it.
    ///
    /// An error response (RFC 6749 §4.1.2.1) becomes an error naming the server's code
    /// (`access_denied` is [`ErrorKind::Cancelled`]: the user said no; anything else
    /// [`ErrorKind::InvalidGrant`]); a missing or different `state` is a
    /// [`ErrorKind::Protocol`] error (a forged or replayed redirect); so is a redirect
    /// to another place than the registered one.
    pub fn code_from_redirect(&self, redirect: &str) -> Result<AuthorizationCode> {
        let returned = url::Url::parse(redirect)
            .map_err(|_| Error::new(ErrorKind::Protocol, "the redirect is not an absolute URL"))?;
        let expected = &self.redirect_uri;
        let same_place = returned.scheme() == expected.scheme()
            && returned.host_str() == expected.host_str()
            && returned.port_or_known_default() == expected.port_or_known_default()
            && returned.path() == expected.path();
        if !same_place {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the redirect does not go to this request's redirect_uri",
            ));
        }
        let mut state = None;
        let mut code = None;
        let mut error = None;
        let mut description = None;
        for (name, value) in returned.query_pairs() {
            match name.as_ref() {
                "state" => state = Some(value.into_owned()),
                "code" => code = Some(value.into_owned()),
                "error" => error = Some(value.into_owned()),
                "error_description" => description = Some(value.into_owned()),
                _ => {}
            }
        }
        // The state is checked first: an unrelated (forged) error response is not news.
        if state.as_deref() != Some(self.state.expose()) {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the redirect's state does not match this login (a forged or stale redirect)",
            ));
        }
        if let Some(error) = error {
            let kind = if error == "access_denied" {
                ErrorKind::Cancelled
            } else {
                ErrorKind::InvalidGrant
            };
            let detail = description
                .map(|text| format!(": {}", redact_foreign_text(&text)))
                .unwrap_or_default();
            return Err(Error::new(
                kind,
                format!(
                    "the authorization server answered the login with {}{detail}",
                    redact_foreign_text(&error)
                ),
            ));
        }
        match code {
            Some(code) if !code.is_empty() => Ok(AuthorizationCode(code.into())),
            _ => Err(Error::new(
                ErrorKind::Protocol,
                "the redirect carries neither a code nor an error",
            )),
        }
    }
}

/// An authorization code, redeemed once by [`crate::oauth2::OAuth2Source::exchange_code`].
pub struct AuthorizationCode(SecretString);

impl AuthorizationCode {
    pub(crate) fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizationCode([redacted])")
    }
}

/// Receives one browser redirect on `http://127.0.0.1:PORT/callback` (RFC 8252 §7.3: the
/// loopback interface, a port the OS picks), answers it with a short page telling the user
/// to close the window, and hands the redirect URL to
/// [`AuthorizationRequest::code_from_redirect`].
pub struct LoopbackRedirect {
    listener: tokio::net::TcpListener,
    port: u16,
}

impl fmt::Debug for LoopbackRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackRedirect")
            .field("port", &self.port)
            .finish()
    }
}

/// The longest request line and headers read from the browser.
const MAX_REDIRECT_REQUEST_BYTES: usize = 16 * 1024;

const CLOSE_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Signed in</title>\
<p>You can close this window and return to the application.</p>";

impl LoopbackRedirect {
    /// Listens on 127.0.0.1 with a port the OS picks.
    pub async fn bind() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|err| {
                Error::new(
                    ErrorKind::Transient,
                    format!("could not listen on 127.0.0.1 for the login redirect: {err}"),
                )
            })?;
        let port = listener
            .local_addr()
            .map_err(|err| Error::new(ErrorKind::Internal, err.to_string()))?
            .port();
        Ok(Self { listener, port })
    }

    /// `http://127.0.0.1:PORT/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}/callback", self.port)
    }

    /// Waits (at most `timeout`) for the browser's request to `/callback` and returns the
    /// full URL it asked for. Requests for other paths (a browser's `/favicon.ico`) get a
    /// 404 and the wait goes on; each connection gets at most 5 s and 16 KiB.
    pub async fn receive(self, timeout: Duration) -> Result<String> {
        let wait = async {
            loop {
                let (mut stream, _) = self.listener.accept().await.map_err(|err| {
                    Error::new(
                        ErrorKind::Transient,
                        format!("the login redirect listener failed: {err}"),
                    )
                })?;
                let target =
                    tokio::time::timeout(Duration::from_secs(5), read_request_target(&mut stream))
                        .await
                        .ok()
                        .flatten();
                let Some(target) = target else {
                    let _ = respond(&mut stream, "400 Bad Request", "bad request").await;
                    continue;
                };
                if target.split('?').next() != Some("/callback") {
                    let _ = respond(&mut stream, "404 Not Found", "not found").await;
                    continue;
                }
                let _ = respond(&mut stream, "200 OK", CLOSE_PAGE).await;
                return Ok(format!("http://127.0.0.1:{}{target}", self.port));
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no login redirect arrived within {timeout:?}"),
                ))
            })
    }
}

/// The request target of a `GET` (its first line), read within the size bound.
async fn read_request_target(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buffer.windows(4).any(|window| window == b"\r\n\r\n") {
        if buffer.len() >= MAX_REDIRECT_REQUEST_BYTES {
            return None;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let head = std::str::from_utf8(&buffer).ok()?;
    let mut parts = head.lines().next()?.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    (method == "GET" && target.starts_with('/')).then(|| target.to_owned())
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s256_challenge_is_the_rfc_7636_example() {
        // RFC 7636 Appendix B.
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(
            format!("{pkce:?}"),
            r#"Pkce { verifier: "[redacted]", method: "S256" }"#
        );
    }

    #[test]
    fn verifiers_outside_the_rfc_are_refused_and_generated_ones_are_fresh() {
        for bad in ["short", &"a".repeat(129), &format!("{}!", "a".repeat(43))] {
            assert_eq!(
                Pkce::from_verifier(bad.to_owned()).unwrap_err().kind(),
                ErrorKind::Usage
            );
        }
        let (a, b) = (Pkce::generate(), Pkce::generate());
        assert_eq!(a.verifier().expose().len(), 43);
        assert_ne!(a.challenge(), b.challenge());
    }

    fn login_request(scopes: &[&str]) -> AuthorizationRequest {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        AuthorizationRequest::new(
            url::Url::parse("https://idp.example/authorize?tenant=t1").unwrap(),
            "app",
            "http://127.0.0.1:8765/callback",
            &scopes,
            &[("prompt".to_owned(), "consent".to_owned())],
        )
        .unwrap()
    }

    fn query(request: &AuthorizationRequest) -> std::collections::BTreeMap<String, String> {
        url::Url::parse(request.url())
            .unwrap()
            .query_pairs()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }

    #[test]
    fn the_authorization_url_carries_every_parameter_once() {
        let request = login_request(&["openid", "offline_access"]);
        let query = query(&request);
        assert_eq!(query["tenant"], "t1", "the endpoint's own query is kept");
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "app");
        assert_eq!(query["redirect_uri"], "http://127.0.0.1:8765/callback");
        assert_eq!(query["scope"], "openid offline_access");
        assert_eq!(query["code_challenge"], request.pkce().challenge());
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["prompt"], "consent");
        assert_eq!(query["nonce"], request.nonce().unwrap().expose());
        assert_eq!(query["state"].len(), 43);
        assert!(
            login_request(&["api"]).nonce().is_none(),
            "no nonce without openid"
        );
        let reserved = AuthorizationRequest::new(
            url::Url::parse("https://idp.example/authorize").unwrap(),
            "app",
            "http://127.0.0.1:1/callback",
            &[],
            &[("state".to_owned(), "mine".to_owned())],
        )
        .unwrap_err();
        assert_eq!(reserved.kind(), ErrorKind::Configuration);
    }

    #[test]
    fn a_redirect_is_checked_before_its_code_is_taken() {
        let request = login_request(&["openid"]);
        let state = query(&request)["state"].clone();
        let at = |query: &str| format!("http://127.0.0.1:8765/callback?{query}");
        let code = request
            .code_from_redirect(&at(&format!("code=abc&state={state}")))
            .unwrap();
        assert_eq!(code.expose(), "abc");
        assert_eq!(format!("{code:?}"), "AuthorizationCode([redacted])");
        let wrong_state = request
            .code_from_redirect(&at("code=abc&state=Zq9forgedStateValue"))
            .unwrap_err();
        assert_eq!(wrong_state.kind(), ErrorKind::Protocol);
        assert!(!wrong_state.to_string().contains("Zq9forgedStateValue"));
        let no_state = request.code_from_redirect(&at("code=abc")).unwrap_err();
        assert_eq!(no_state.kind(), ErrorKind::Protocol);
        let denied = request
            .code_from_redirect(&at(&format!(
                "error=access_denied&error_description=the+user+said+no&state={state}"
            )))
            .unwrap_err();
        assert_eq!(denied.kind(), ErrorKind::Cancelled);
        assert!(denied.message().contains("access_denied"), "{denied}");
        let other = request
            .code_from_redirect(&at(&format!("error=server_error&state={state}")))
            .unwrap_err();
        assert_eq!(other.kind(), ErrorKind::InvalidGrant);
        let elsewhere = request
            .code_from_redirect(&format!(
                "http://127.0.0.1:9999/callback?code=abc&state={state}"
            ))
            .unwrap_err();
        assert_eq!(elsewhere.kind(), ErrorKind::Protocol);
        let empty = request
            .code_from_redirect(&at(&format!("state={state}")))
            .unwrap_err();
        assert_eq!(empty.kind(), ErrorKind::Protocol);
    }

    #[tokio::test]
    async fn the_loopback_receiver_takes_one_callback_and_ignores_other_paths() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let uri = redirect.redirect_uri();
        assert!(uri.starts_with("http://127.0.0.1:") && uri.ends_with("/callback"));
        let port = url::Url::parse(&uri).unwrap().port().unwrap();
        let waiting = tokio::spawn(redirect.receive(Duration::from_secs(10)));
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        assert!(get("/favicon.ico").await.starts_with("HTTP/1.1 404"));
        let page = get("/callback?code=c&state=s").await;
        assert!(page.starts_with("HTTP/1.1 200") && page.contains("close this window"));
        let returned = waiting.await.unwrap().unwrap();
        assert_eq!(
            returned,
            format!("http://127.0.0.1:{port}/callback?code=c&state=s")
        );
    }

    #[tokio::test]
    async fn the_loopback_receiver_gives_up_after_its_timeout() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let err = redirect
            .receive(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }
}
