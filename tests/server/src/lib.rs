//! A real OAuth2 token server on loopback, with fault injection, for tokenlease's tests.
//!
//! The server binds only to `127.0.0.1` and serves:
//!
//! * `POST /oauth/token` — RFC 6749 token endpoint (`client_credentials`, `refresh_token`,
//!   `password` grants; client auth via HTTP Basic or form fields),
//! * `POST /oauth/revoke` — RFC 7009 revocation,
//! * `POST /oauth/token` with `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` —
//!   RFC 8693 token exchange; the issued token is also a session (see below),
//! * `POST /oauth/revoke` — RFC 7009 revocation,
//! * `GET|POST /api/resource` — a protected resource checking bearer tokens,
//! * `GET /.well-known/openid-configuration` — a discovery document,
//! * `POST /session/login`, `GET|POST /session/resource`, `POST /session/keepalive`,
//!   `POST /session/logout` — a vendor-style (non-OAuth2) session API with a sliding idle timeout
//!   and an absolute timeout; the session token is accepted in any of the headers
//!   `vmware-api-session-id: T`, `Authorization: ZSession T` or `X-Session-Token: T`,
//! * `ANY /fault/stream/...` — a body that does not end (or is far larger than any client
//!   bound): after the optional `prefix` query parameter, `x` bytes in 16 KiB chunks, paced
//!   at about one chunk per millisecond (~16 MB/s, so a client without a bound fills its
//!   memory slowly instead of taking the machine down), with the status of the `status`
//!   query parameter (default 200). With `length=N` the body is exactly `N` bytes and
//!   declared by `Content-Length`; without it the body is chunked and endless. The path
//!   after `/fault/stream/` is free (e.g. `/fault/stream/.well-known/openid-configuration`
//!   for discovery); [`Stats::streamed_bytes`] counts what was handed to the connection.
//! * `ANY /fault/status/{code}/...` — answers `code` with a small JSON body, whatever the
//!   rest of the path and the method (e.g. a keep-alive URL that 404s).
//! * `POST /session/login/...` — the session login under any longer path too (for login
//!   URL templates with a credential in the path).
//! * `GET /stats`, `POST /control`, `GET /health` — test plumbing.
//!
//! Use [`TestServer::start`] inside a tokio runtime, or [`TestServer::start_background`] from
//! anywhere. Faults are injected with [`TestServer::control`] or `POST /control` (a [`Control`]
//! JSON body). Token values are never logged.
//!
//! # Server clock
//!
//! Every server-side expiry (access tokens, early expiry, access idle/absolute timeouts, sessions)
//! and the `Date` header use the *server clock*: the real monotonic clock running
//! [`ServerConfig::time_scale`] times faster, plus an offset that [`TestServer::advance`] (or
//! [`Control::advance_s`]) moves forward. Tests can therefore simulate an hour without waiting.
//! Fault durations given in milliseconds ([`Outage::duration_ms`], [`RateLimit::duration_ms`]),
//! latency and [`ServerConfig::max_lifetime`] stay on real time.

mod app;
mod state;
mod vendors;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::Shared;

/// Configuration of a [`TestServer`]; see [`ServerConfig::default`] for the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `expires_in` (and server-side lifetime) of issued access tokens. Default 3600 s.
    pub default_ttl: Duration,
    /// Per-scope TTLs: if any requested scope is in here, the token's TTL is the minimum of the
    /// matching entries (instead of `default_ttl`).
    pub scope_ttls: HashMap<String, Duration>,
    /// Default `true`: each `refresh_token` grant returns a new refresh token and the old one
    /// becomes invalid (reusing it revokes the whole family). When `false`, the refresh response
    /// carries no `refresh_token` and the original one stays valid.
    pub rotate_refresh_tokens: bool,
    /// Default `true`: the `password` grant issues a refresh token. `client_credentials` only
    /// issues one if this AND [`ServerConfig::refresh_for_client_credentials`] are `true`.
    pub issue_refresh_tokens: bool,
    /// Default `false`: whether `client_credentials` also issues refresh tokens.
    pub refresh_for_client_credentials: bool,
    /// Known clients as `(client_id, client_secret)`. Default `[("demo-client", "demo-secret")]`.
    pub clients: Vec<(String, String)>,
    /// Known users for the `password` grant as `(username, password)`.
    /// Default `[("alice", "wonderland")]`.
    pub users: Vec<(String, String)>,
    /// The server shuts itself down after this long (real time). Default `Some(600 s)`;
    /// `None` = never.
    pub max_lifetime: Option<Duration>,
    /// How many times faster than real time the server clock runs. Default `1.0`; values that
    /// are not finite and positive are treated as `1.0`.
    pub time_scale: f64,
    /// Sliding idle timeout of sessions (login and token exchange): a session dies after this
    /// much server time without successful use. Default 900 s.
    pub session_idle_timeout: Duration,
    /// Absolute timeout of sessions, counted from login (or exchange), whatever the use.
    /// Default 3600 s.
    pub session_absolute_timeout: Duration,
    /// When set, OAuth2 access tokens also die after this much server time without use on
    /// `/api/resource` (sliding), although `expires_in` still says the TTL. Default `None`.
    pub access_idle_timeout: Option<Duration>,
    /// When set, OAuth2 access tokens die this long (server time) after issuance at the latest,
    /// although `expires_in` still says the TTL. Default `None`.
    pub access_absolute_timeout: Option<Duration>,
    /// Issuers the JWT-bearer grant (RFC 7523 §2.1) accepts, as `(iss, RSA public key PEM)`:
    /// an RS256 assertion signed by that key, `aud` this server's token URL, not expired,
    /// gets a token for client `iss` with the assertion's `scope` claim. Default none.
    pub jwt_bearer_keys: Vec<(String, String)>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            default_ttl: Duration::from_secs(3600),
            scope_ttls: HashMap::new(),
            rotate_refresh_tokens: true,
            issue_refresh_tokens: true,
            refresh_for_client_credentials: false,
            clients: vec![("demo-client".to_owned(), "demo-secret".to_owned())],
            users: vec![("alice".to_owned(), "wonderland".to_owned())],
            max_lifetime: Some(Duration::from_secs(600)),
            time_scale: 1.0,
            session_idle_timeout: Duration::from_secs(900),
            session_absolute_timeout: Duration::from_secs(3600),
            access_idle_timeout: None,
            access_absolute_timeout: None,
            jwt_bearer_keys: Vec::new(),
        }
    }
}

/// Request counters, as returned by `GET /stats`, `POST /control` and [`TestServer::stats`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Every request hitting the token endpoint, including failed and faulted ones.
    pub token_requests: u64,
    /// Successful token responses.
    pub tokens_issued: u64,
    /// Successful token responses per `grant_type`.
    pub grants: BTreeMap<String, u64>,
    /// Token endpoint answers that were errors or faults (4xx/5xx/429/dropped/timeout).
    pub token_errors: u64,
    /// Requests to `/api/resource` (GET and POST).
    pub resource_requests: u64,
    /// `401` answers from `/api/resource`.
    pub resource_rejections: u64,
    /// Successful (`200`) revocation requests, whether or not the token was known.
    pub revocations: u64,
    /// Successful `POST /session/login` requests.
    #[serde(default)]
    pub session_logins: u64,
    /// Successful `POST /session/keepalive` requests.
    #[serde(default)]
    pub session_keepalives: u64,
    /// Successful `POST /session/logout` requests.
    #[serde(default)]
    pub session_logouts: u64,
    /// Requests to `/session/resource` (GET and POST).
    #[serde(default)]
    pub session_requests: u64,
    /// `401` answers from any `/session/*` endpoint (failed logins, and expired, unknown or
    /// missing session tokens).
    #[serde(default)]
    pub session_rejections: u64,
    /// Successful JWT-bearer grants.
    #[serde(default)]
    pub jwt_bearer_grants: u64,
    /// Body bytes handed to connections by `/fault/stream/...` (all requests together).
    /// Bytes still in flight when a client stops reading are counted; a client that stops
    /// at its bound keeps this near the bound plus socket buffers.
    #[serde(default)]
    pub streamed_bytes: u64,
}

/// Fault and behaviour changes; every field is optional. Applied by `POST /control` and by
/// [`TestServer::control`]. Clearing fields are applied before setting ones, so
/// `{"clear_outage": true, "outage": {...}}` installs the new outage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Latency added to every token endpoint request (`0` clears).
    pub latency_ms: Option<u64>,
    /// Start a token endpoint outage.
    pub outage: Option<Outage>,
    /// `true` ends any outage now.
    pub clear_outage: Option<bool>,
    /// The token endpoint answers `429` with `Retry-After`.
    pub rate_limit: Option<RateLimit>,
    /// `true` ends any rate limit now.
    pub clear_rate_limit: Option<bool>,
    /// Tokens issued from now on die (server side) after this many seconds of server time
    /// although `expires_in` still says the normal TTL; `0` clears. Also caps sessions created
    /// from now on (login and token exchange), whatever their use and reported timeouts.
    pub early_expiry_s: Option<u64>,
    /// `true` makes every currently issued access and refresh token, and every session,
    /// invalid now.
    pub revoke_all: Option<bool>,
    /// The `Date` header of every response is shifted by this many seconds (`0` clears).
    pub date_skew_s: Option<i64>,
    /// Changes the default access token TTL for tokens issued from now on.
    pub default_ttl_s: Option<u64>,
    /// Turns refresh token rotation on or off.
    pub rotate_refresh_tokens: Option<bool>,
    /// `true` zeroes the [`Stats`] (applied first).
    pub reset_stats: Option<bool>,
    /// The next `count` token requests answer this OAuth2 error.
    pub fail_next_token_requests: Option<FailNext>,
    /// Moves the server clock forward by this many seconds (applied last, after every other
    /// field, so e.g. new timeouts already count).
    pub advance_s: Option<u64>,
    /// Sets how many times faster than real time the server clock runs from now on (server
    /// time already elapsed is kept). Must be finite and positive, otherwise ignored.
    pub time_scale: Option<f64>,
    /// Replaces the per-scope TTLs ([`ServerConfig::scope_ttls`]) for tokens issued from now on;
    /// `{}` clears them, entries with `0` are ignored.
    pub scope_ttls_s: Option<HashMap<String, u64>>,
    /// Sets [`ServerConfig::access_idle_timeout`] in seconds (`0` clears). Applies to every
    /// access token at its next check, including ones issued earlier.
    pub access_idle_timeout_s: Option<u64>,
    /// Sets [`ServerConfig::access_absolute_timeout`] in seconds (`0` clears). Applies to every
    /// access token at its next check, including ones issued earlier.
    pub access_absolute_timeout_s: Option<u64>,
    /// Sets [`ServerConfig::session_idle_timeout`] in seconds, for sessions created from now on.
    pub session_idle_timeout_s: Option<u64>,
    /// Sets [`ServerConfig::session_absolute_timeout`] in seconds, for sessions created from now
    /// on.
    pub session_absolute_timeout_s: Option<u64>,
    /// Successful token responses carry this JSON text as their `expires_in` instead of
    /// the number of seconds (e.g. `"\"3600\""` for a string, `"99999999999999"`); the
    /// server side lifetime and the `X-Token-Expires-In` header are unchanged. An empty
    /// string (or text that is not JSON) clears it.
    pub expires_in_json: Option<String>,
    /// Sets [`ServerConfig::refresh_for_client_credentials`] for tokens issued from now on.
    pub refresh_for_client_credentials: Option<bool>,
}

/// A token endpoint outage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// How the token endpoint misbehaves.
    pub mode: OutageMode,
    /// How long the outage lasts; `None` = until `clear_outage`.
    pub duration_ms: Option<u64>,
}

/// How the token endpoint misbehaves during an [`Outage`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// Answer `503` `{"error":"temporarily_unavailable"}`.
    Status503,
    /// Hold the request for ~30 s or until the outage ends (whichever first), then answer `503`.
    Timeout,
    /// Close the connection without any response.
    Drop,
}

/// A token endpoint rate limit: `429` with `Retry-After` and `{"error":"slow_down"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// How long the rate limit lasts; `None` = until `clear_rate_limit`.
    pub duration_ms: Option<u64>,
    /// Value of the `Retry-After` header, in seconds.
    pub retry_after_s: u64,
}

/// Makes the next `count` token requests fail with an OAuth2 error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailNext {
    /// How many token requests fail.
    pub count: u32,
    /// The OAuth2 `error` code, e.g. `invalid_client`, `invalid_grant`,
    /// `temporarily_unavailable` or `server_error`. The last two answer `503`,
    /// `invalid_client` answers `401`, anything else `400`.
    pub error: String,
}

/// A running test server. Dropping it (or calling [`TestServer::shutdown`]) stops it.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("background", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

fn base_url(addr: SocketAddr) -> String {
    format!("http://127.0.0.1:{}", addr.port())
}

fn bind(port: u16) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl TestServer {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime (via `tokio::spawn`).
    ///
    /// # Panics
    /// Panics if called outside a tokio runtime.
    pub async fn start(config: ServerConfig) -> io::Result<TestServer> {
        Self::start_on_port(config, 0).await
    }

    /// Like [`TestServer::start`] but binds `127.0.0.1:port` (`0` = a random free port).
    pub async fn start_on_port(config: ServerConfig, port: u16) -> io::Result<TestServer> {
        let listener = tokio::net::TcpListener::from_std(bind(port)?)?;
        let addr = listener.local_addr()?;
        let max_lifetime = config.max_lifetime;
        let shared = Arc::new(Shared::new(config, base_url(addr)));
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(app::serve(listener, shared.clone(), stop_rx, max_lifetime));
        Ok(TestServer {
            addr,
            shared,
            stop: Some(stop),
            thread: None,
        })
    }

    /// Starts the server on its own thread with its own multi-thread (2 workers) tokio runtime.
    /// Usable from sync code and from tests that don't want to share a runtime. The server
    /// stops when the `TestServer` is dropped.
    pub fn start_background(config: ServerConfig) -> io::Result<TestServer> {
        let std_listener = bind(0)?;
        let addr = std_listener.local_addr()?;
        let max_lifetime = config.max_lifetime;
        let shared = Arc::new(Shared::new(config, base_url(addr)));
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tokenlease-test-server".to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("tokenlease-test-server-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(listener) => {
                            let _ = ready_tx.send(Ok(()));
                            app::serve(listener, thread_shared, stop_rx, max_lifetime).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(500));
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(TestServer {
                addr,
                shared,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("test server thread failed to start"))
            }
        }
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        base_url(self.addr)
    }

    /// The token endpoint: `url() + "/oauth/token"`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.url())
    }

    /// The protected resource: `url() + "/api/resource"`.
    pub fn resource_url(&self) -> String {
        format!("{}/api/resource", self.url())
    }

    /// The revocation endpoint: `url() + "/oauth/revoke"`.
    pub fn revoke_url(&self) -> String {
        format!("{}/oauth/revoke", self.url())
    }

    /// The discovery document: `url() + "/.well-known/openid-configuration"`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.url())
    }

    /// The session login endpoint: `url() + "/session/login"`.
    pub fn session_login_url(&self) -> String {
        format!("{}/session/login", self.url())
    }

    /// The session-protected resource: `url() + "/session/resource"`.
    pub fn session_resource_url(&self) -> String {
        format!("{}/session/resource", self.url())
    }

    /// The session keep-alive endpoint: `url() + "/session/keepalive"`.
    pub fn session_keepalive_url(&self) -> String {
        format!("{}/session/keepalive", self.url())
    }

    /// The session logout endpoint: `url() + "/session/logout"`.
    pub fn session_logout_url(&self) -> String {
        format!("{}/session/logout", self.url())
    }

    /// Moves the server clock forward by `by` (in-process, no HTTP); sub-second precision is
    /// kept.
    pub fn advance(&self, by: Duration) {
        self.shared.advance(by);
    }

    /// The server's wall-clock time: what the `Date` header says (including
    /// [`Control::date_skew_s`]) and what absolute timestamps such as a session's
    /// `absolute_expires_at` are expressed in.
    pub fn server_time(&self) -> SystemTime {
        self.shared.server_wall_time()
    }

    /// A snapshot of the counters (in-process, no HTTP).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Applies a [`Control`] (in-process, no HTTP).
    pub fn control(&self, control: Control) {
        self.shared.apply_control(&control);
    }

    /// Stops the server gracefully. Dropping the `TestServer` does the same.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop_now(&mut self) {
        self.shared.begin_shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            // Bounded: the serve loop gives connections at most ~2 s, the runtime 0.5 s more.
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}
