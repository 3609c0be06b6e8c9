//! Server state: settings, injected faults, the server clock, issued tokens, sessions and
//! counters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rand::distributions::{Alphanumeric, DistString};
use serde::Serialize;

use crate::{Control, OutageMode, ServerConfig, Stats};

/// Length of generated access and refresh tokens.
const TOKEN_LEN: usize = 43;
/// Token types RFC 8693 defines (plus the SAML ones it registers).
const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const SUBJECT_TOKEN_TYPES: [&str; 4] = [
    "urn:ietf:params:oauth:token-type:saml2",
    "urn:ietf:params:oauth:token-type:saml1",
    "urn:ietf:params:oauth:token-type:jwt",
    TOKEN_TYPE_ACCESS,
];
const REQUESTABLE_TOKEN_TYPES: [&str; 6] = [
    TOKEN_TYPE_ACCESS,
    "urn:ietf:params:oauth:token-type:refresh_token",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:saml2",
    "urn:ietf:params:oauth:token-type:saml1",
];
/// Bounds of the server clock's time scale (keeps `Instant` arithmetic far from overflow).
const MIN_SCALE: f64 = 1e-3;
const MAX_SCALE: f64 = 1e6;

/// State shared by all connections of one server.
pub(crate) struct Shared {
    base_url: String,
    state: Mutex<State>,
    shutting_down: AtomicBool,
}

struct Settings {
    default_ttl: Duration,
    scope_ttls: HashMap<String, Duration>,
    rotate_refresh_tokens: bool,
    issue_refresh_tokens: bool,
    refresh_for_client_credentials: bool,
    clients: Vec<(String, String)>,
    users: Vec<(String, String)>,
    session_idle_timeout: Duration,
    session_absolute_timeout: Duration,
    access_idle_timeout: Option<Duration>,
    access_absolute_timeout: Option<Duration>,
    jwt_bearer_keys: Vec<(String, String)>,
}

/// The server clock: real monotonic time scaled by `scale` since `real_anchor`, counted from
/// `server_anchor` (which `advance` moves forward).
struct Clock {
    real_anchor: Instant,
    server_anchor: Instant,
    scale: f64,
}

impl Clock {
    fn new(scale: f64) -> Clock {
        let now = Instant::now();
        Clock {
            real_anchor: now,
            server_anchor: now,
            scale: sanitize_scale(scale).unwrap_or(1.0),
        }
    }

    /// Server time at the real instant `real`.
    fn at(&self, real: Instant) -> Instant {
        let elapsed = real.saturating_duration_since(self.real_anchor);
        let scaled = if self.scale == 1.0 {
            elapsed
        } else {
            elapsed.mul_f64(self.scale)
        };
        self.server_anchor + scaled
    }

    fn now(&self) -> Instant {
        self.at(Instant::now())
    }

    fn set_scale(&mut self, scale: f64) {
        let real = Instant::now();
        self.server_anchor = self.at(real);
        self.real_anchor = real;
        self.scale = scale;
    }

    fn advance(&mut self, by: Duration) {
        self.server_anchor += by;
    }
}

fn sanitize_scale(scale: f64) -> Option<f64> {
    (scale.is_finite() && scale > 0.0).then(|| scale.clamp(MIN_SCALE, MAX_SCALE))
}

#[derive(Default)]
struct Faults {
    latency: Duration,
    outage: Option<(OutageMode, Option<Instant>)>,
    rate_limit: Option<(u64, Option<Instant>)>,
    early_expiry: Option<Duration>,
    date_skew_s: i64,
    fail_next: Option<(u32, String)>,
    expires_in_json: Option<serde_json::Value>,
}

/// An OAuth2 access token; all instants are server time.
struct AccessRecord {
    client_id: String,
    family: u64,
    expires_at: Instant,
    issued_at: Instant,
    last_used: Instant,
}

/// A session (from `/session/login` or token exchange); all instants are server time.
struct SessionRecord {
    /// `Some` for token-exchange sessions: the client it was issued to (also usable on
    /// `/api/resource` and revocable by that client).
    client_id: Option<String>,
    family: u64,
    idle_timeout: Duration,
    last_used: Instant,
    /// When the session dies whatever the use (absolute timeout, or early expiry).
    dies_at: Instant,
}

#[derive(PartialEq, Eq)]
enum RefreshState {
    Active,
    Rotated,
}

struct RefreshRecord {
    client_id: String,
    family: u64,
    scope: Option<String>,
    state: RefreshState,
}

struct State {
    settings: Settings,
    faults: Faults,
    stats: Stats,
    clock: Clock,
    access: HashMap<String, AccessRecord>,
    refresh: HashMap<String, RefreshRecord>,
    sessions: HashMap<String, SessionRecord>,
    revoked_families: HashSet<u64>,
    /// Families below this id were revoked by `revoke_all`.
    revoked_below: u64,
    next_family: u64,
}

/// A fault decided for one token request.
pub(crate) enum Fault {
    None,
    Status503,
    Timeout,
    Drop,
    RateLimited { retry_after_s: u64 },
    FailNext(String),
}

/// A successful token response body (RFC 6749 §5.1).
#[derive(Serialize)]
pub(crate) struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// RFC 8693 §2.2.1, token exchange only.
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'static str>,
}

impl TokenResponse {
    /// The `expires_in` value, in seconds.
    pub(crate) fn expires_in(&self) -> u64 {
        self.expires_in
    }
}

/// A new session, as answered by `/session/login`.
pub(crate) struct NewSession {
    pub(crate) token: String,
    pub(crate) expires_in: u64,
    /// Server wall-clock time of the absolute timeout.
    pub(crate) absolute_expires_at: SystemTime,
}

/// An OAuth2 error decided by grant processing.
pub(crate) struct GrantError {
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

fn grant_err(error: &'static str, description: impl Into<String>) -> GrantError {
    GrantError {
        error,
        description: description.into(),
    }
}

/// What a resource request's bearer token turned out to be.
pub(crate) enum TokenCheck {
    Valid { client_id: String },
    Unknown,
    Expired,
    Revoked,
}

fn new_token() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), TOKEN_LEN)
}

fn active(until: Option<Instant>, now: Instant) -> bool {
    until.map_or(true, |u| now < u)
}

impl Shared {
    pub(crate) fn new(config: ServerConfig, base_url: String) -> Shared {
        Shared {
            base_url,
            state: Mutex::new(State {
                settings: Settings {
                    default_ttl: config.default_ttl,
                    scope_ttls: config.scope_ttls,
                    rotate_refresh_tokens: config.rotate_refresh_tokens,
                    issue_refresh_tokens: config.issue_refresh_tokens,
                    refresh_for_client_credentials: config.refresh_for_client_credentials,
                    clients: config.clients,
                    users: config.users,
                    session_idle_timeout: config.session_idle_timeout,
                    session_absolute_timeout: config.session_absolute_timeout,
                    access_idle_timeout: config.access_idle_timeout,
                    access_absolute_timeout: config.access_absolute_timeout,
                    jwt_bearer_keys: config.jwt_bearer_keys,
                },
                faults: Faults::default(),
                stats: Stats::default(),
                clock: Clock::new(config.time_scale),
                access: HashMap::new(),
                refresh: HashMap::new(),
                sessions: HashMap::new(),
                revoked_families: HashSet::new(),
                revoked_below: 0,
                next_family: 0,
            }),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(crate) fn stats(&self) -> Stats {
        self.state.lock().stats.clone()
    }

    pub(crate) fn apply_control(&self, c: &Control) {
        let now = Instant::now();
        let mut st = self.state.lock();
        if c.reset_stats == Some(true) {
            st.stats = Stats::default();
        }
        if c.clear_outage == Some(true) {
            st.faults.outage = None;
        }
        if c.clear_rate_limit == Some(true) {
            st.faults.rate_limit = None;
        }
        if let Some(ms) = c.latency_ms {
            st.faults.latency = Duration::from_millis(ms);
        }
        if let Some(o) = &c.outage {
            let until = o.duration_ms.map(|ms| now + Duration::from_millis(ms));
            st.faults.outage = Some((o.mode, until));
        }
        if let Some(r) = &c.rate_limit {
            let until = r.duration_ms.map(|ms| now + Duration::from_millis(ms));
            st.faults.rate_limit = Some((r.retry_after_s, until));
        }
        if let Some(s) = c.early_expiry_s {
            st.faults.early_expiry = (s > 0).then(|| Duration::from_secs(s));
        }
        if c.revoke_all == Some(true) {
            st.revoked_below = st.next_family;
        }
        if let Some(skew) = c.date_skew_s {
            st.faults.date_skew_s = skew;
        }
        if let Some(ttl) = c.default_ttl_s {
            st.settings.default_ttl = Duration::from_secs(ttl);
        }
        if let Some(rotate) = c.rotate_refresh_tokens {
            st.settings.rotate_refresh_tokens = rotate;
        }
        if let Some(f) = &c.fail_next_token_requests {
            st.faults.fail_next = (f.count > 0).then(|| (f.count, f.error.clone()));
        }
        if let Some(text) = &c.expires_in_json {
            st.faults.expires_in_json = serde_json::from_str(text).ok();
        }
        if let Some(scale) = c.time_scale.and_then(sanitize_scale) {
            st.clock.set_scale(scale);
        }
        if let Some(ttls) = &c.scope_ttls_s {
            st.settings.scope_ttls = ttls
                .iter()
                .filter(|(_, s)| **s > 0)
                .map(|(k, s)| (k.clone(), Duration::from_secs(*s)))
                .collect();
        }
        if let Some(s) = c.access_idle_timeout_s {
            st.settings.access_idle_timeout = (s > 0).then(|| Duration::from_secs(s));
        }
        if let Some(s) = c.access_absolute_timeout_s {
            st.settings.access_absolute_timeout = (s > 0).then(|| Duration::from_secs(s));
        }
        if let Some(s) = c.session_idle_timeout_s {
            st.settings.session_idle_timeout = Duration::from_secs(s);
        }
        if let Some(s) = c.session_absolute_timeout_s {
            st.settings.session_absolute_timeout = Duration::from_secs(s);
        }
        if let Some(on) = c.refresh_for_client_credentials {
            st.settings.refresh_for_client_credentials = on;
        }
        if let Some(s) = c.advance_s {
            st.clock.advance(Duration::from_secs(s));
        }
    }

    /// Moves the server clock forward.
    pub(crate) fn advance(&self, by: Duration) {
        self.state.lock().clock.advance(by);
    }

    /// The server's wall-clock time (server clock + `date_skew_s`).
    pub(crate) fn server_wall_time(&self) -> SystemTime {
        let st = self.state.lock();
        st.wall_time(st.clock.now())
    }

    /// The `Date` header value: server wall-clock time, as an RFC 7231 IMF-fixdate.
    pub(crate) fn http_date(&self) -> String {
        httpdate::fmt_http_date(self.server_wall_time())
    }

    /// Counts a token request and returns the latency to add.
    pub(crate) fn begin_token_request(&self) -> Duration {
        let mut st = self.state.lock();
        st.stats.token_requests += 1;
        st.faults.latency
    }

    pub(crate) fn count_token_error(&self) {
        self.state.lock().stats.token_errors += 1;
    }

    /// The `expires_in` JSON that replaces the real one in token responses, if set.
    pub(crate) fn expires_in_json(&self) -> Option<serde_json::Value> {
        self.state.lock().faults.expires_in_json.clone()
    }

    pub(crate) fn count_streamed(&self, bytes: usize) {
        self.state.lock().stats.streamed_bytes += bytes as u64;
    }

    /// Decides which fault (if any) applies to this token request; consumes one `fail_next`.
    pub(crate) fn token_fault(&self) -> Fault {
        let now = Instant::now();
        let mut st = self.state.lock();
        if let Some((mode, until)) = st.faults.outage {
            if active(until, now) {
                return match mode {
                    OutageMode::Status503 => Fault::Status503,
                    OutageMode::Timeout => Fault::Timeout,
                    OutageMode::Drop => Fault::Drop,
                };
            }
            st.faults.outage = None;
        }
        if let Some((retry_after_s, until)) = st.faults.rate_limit {
            if active(until, now) {
                return Fault::RateLimited { retry_after_s };
            }
            st.faults.rate_limit = None;
        }
        if let Some((count, error)) = st.faults.fail_next.take() {
            if count > 1 {
                st.faults.fail_next = Some((count - 1, error.clone()));
            }
            return Fault::FailNext(error);
        }
        Fault::None
    }

    /// Whether a `Timeout`-mode outage is still going on.
    pub(crate) fn timeout_outage_active(&self) -> bool {
        let now = Instant::now();
        matches!(
            self.state.lock().faults.outage,
            Some((OutageMode::Timeout, until)) if active(until, now)
        )
    }

    /// Checks `(client_id, client_secret)`.
    pub(crate) fn client_valid(&self, id: &str, secret: &str) -> bool {
        self.state
            .lock()
            .settings
            .clients
            .iter()
            .any(|(i, s)| i == id && s == secret)
    }

    pub(crate) fn grant_client_credentials(
        &self,
        client_id: &str,
        scope: Option<String>,
    ) -> TokenResponse {
        let mut st = self.state.lock();
        let with_refresh =
            st.settings.issue_refresh_tokens && st.settings.refresh_for_client_credentials;
        let family = st.new_family();
        st.issue(client_id, family, scope, with_refresh, "client_credentials")
    }

    /// RFC 7523 §2.1: an RS256 assertion from a known issuer, for this token URL.
    pub(crate) fn grant_jwt_bearer(
        &self,
        assertion: &str,
        token_url: &str,
    ) -> Result<TokenResponse, GrantError> {
        let keys = self.state.lock().settings.jwt_bearer_keys.clone();
        for (issuer, pem) in keys {
            let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()) else {
                continue;
            };
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[token_url]);
            validation.set_issuer(&[issuer.as_str()]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
            else {
                continue;
            };
            let scope = data.claims["scope"].as_str().map(str::to_owned);
            let mut st = self.state.lock();
            st.stats.jwt_bearer_grants += 1;
            let family = st.new_family();
            return Ok(st.issue(&issuer, family, scope, false, "jwt_bearer"));
        }
        Err(grant_err(
            "invalid_grant",
            "the assertion is not signed by a known key for this audience, or it expired",
        ))
    }

    pub(crate) fn grant_password(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
        scope: Option<String>,
    ) -> Result<TokenResponse, GrantError> {
        let mut st = self.state.lock();
        if !st
            .settings
            .users
            .iter()
            .any(|(u, p)| u == username && p == password)
        {
            return Err(grant_err(
                "invalid_grant",
                "invalid resource owner credentials",
            ));
        }
        let with_refresh = st.settings.issue_refresh_tokens;
        let family = st.new_family();
        Ok(st.issue(client_id, family, scope, with_refresh, "password"))
    }

    pub(crate) fn grant_refresh(
        &self,
        client_id: &str,
        refresh_token: &str,
        scope: Option<String>,
    ) -> Result<TokenResponse, GrantError> {
        let mut st = self.state.lock();
        let Some(rec) = st.refresh.get(refresh_token) else {
            return Err(grant_err("invalid_grant", "unknown refresh token"));
        };
        let family = rec.family;
        if rec.client_id != client_id {
            return Err(grant_err(
                "invalid_grant",
                "refresh token was issued to another client",
            ));
        }
        if st.family_revoked(family) {
            return Err(grant_err("invalid_grant", "refresh token has been revoked"));
        }
        if rec.state == RefreshState::Rotated {
            st.revoke_family(family);
            return Err(grant_err(
                "invalid_grant",
                "refresh token reuse detected; token family revoked",
            ));
        }
        let original_scope = rec.scope.clone();
        let scope = match scope {
            None => original_scope,
            Some(requested) => {
                let granted: HashSet<&str> = original_scope
                    .as_deref()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                if let Some(extra) = requested.split_whitespace().find(|s| !granted.contains(s)) {
                    return Err(grant_err(
                        "invalid_scope",
                        format!("scope {extra:?} exceeds the originally granted scope"),
                    ));
                }
                Some(requested)
            }
        };
        let rotate = st.settings.rotate_refresh_tokens;
        if rotate {
            if let Some(rec) = st.refresh.get_mut(refresh_token) {
                rec.state = RefreshState::Rotated;
            }
        }
        Ok(st.issue(client_id, family, scope, rotate, "refresh_token"))
    }

    /// RFC 8693 token exchange: the issued access token is a session (idle + absolute
    /// timeouts) usable on `/api/resource` and `/session/resource`.
    pub(crate) fn grant_token_exchange(
        &self,
        client_id: &str,
        subject_token: &str,
        subject_token_type: &str,
        requested_token_type: Option<&str>,
        scope: Option<String>,
    ) -> Result<TokenResponse, GrantError> {
        if !SUBJECT_TOKEN_TYPES.contains(&subject_token_type) {
            return Err(grant_err(
                "invalid_request",
                format!("unsupported subject_token_type {subject_token_type:?}"),
            ));
        }
        if let Some(requested) = requested_token_type {
            if !REQUESTABLE_TOKEN_TYPES.contains(&requested) {
                return Err(grant_err(
                    "invalid_request",
                    format!("unsupported requested_token_type {requested:?}"),
                ));
            }
        }
        if subject_token.is_empty() || subject_token == "invalid" {
            return Err(grant_err("invalid_grant", "invalid subject_token"));
        }
        let mut st = self.state.lock();
        let (access_token, idle, _) = st.new_session(Some(client_id.to_owned()));
        st.stats.tokens_issued += 1;
        *st.stats
            .grants
            .entry("token_exchange".to_owned())
            .or_insert(0) += 1;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: idle.as_secs(),
            refresh_token: None,
            scope,
            issued_token_type: Some(TOKEN_TYPE_ACCESS),
        })
    }

    /// Checks a bearer token presented to the resource; a valid use slides idle timeouts.
    pub(crate) fn check_access(&self, token: &str) -> TokenCheck {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let now = st.clock.now();
        if let Some(rec) = st.access.get_mut(token) {
            let idle_dead = st
                .settings
                .access_idle_timeout
                .is_some_and(|idle| now >= rec.last_used + idle);
            let absolute_dead = st
                .settings
                .access_absolute_timeout
                .is_some_and(|abs| now >= rec.issued_at + abs);
            let revoked =
                rec.family < st.revoked_below || st.revoked_families.contains(&rec.family);
            return if revoked {
                TokenCheck::Revoked
            } else if now >= rec.expires_at || idle_dead || absolute_dead {
                TokenCheck::Expired
            } else {
                rec.last_used = now;
                TokenCheck::Valid {
                    client_id: rec.client_id.clone(),
                }
            };
        }
        // Token-exchange sessions are OAuth2 access tokens too.
        let Some(client_id) = st.sessions.get(token).and_then(|r| r.client_id.clone()) else {
            return TokenCheck::Unknown;
        };
        match st.use_session(token, now) {
            SessionCheck::Valid { .. } => TokenCheck::Valid { client_id },
            SessionCheck::Revoked => TokenCheck::Revoked,
            SessionCheck::Expired | SessionCheck::Unknown => TokenCheck::Expired,
        }
    }

    /// `POST /session/login`: checks the user and creates a session.
    pub(crate) fn session_login(&self, username: &str, password: &str) -> Option<NewSession> {
        let mut st = self.state.lock();
        if !st
            .settings
            .users
            .iter()
            .any(|(u, p)| u == username && p == password)
        {
            st.stats.session_rejections += 1;
            return None;
        }
        let (token, idle, absolute) = st.new_session(None);
        st.stats.session_logins += 1;
        let now = st.clock.now();
        Some(NewSession {
            token,
            expires_in: idle.as_secs(),
            absolute_expires_at: st.wall_time(now + absolute),
        })
    }

    /// A session for the holder of a valid access token (vSphere's login with a token from
    /// another identity system, such as a SAML bearer token): `None` when it is not valid.
    pub(crate) fn session_for_token(&self, token: &str) -> Option<NewSession> {
        if !matches!(self.check_access(token), TokenCheck::Valid { .. }) {
            self.state.lock().stats.session_rejections += 1;
            return None;
        }
        let mut st = self.state.lock();
        let (token, idle, absolute) = st.new_session(None);
        st.stats.session_logins += 1;
        let now = st.clock.now();
        Some(NewSession {
            token,
            expires_in: idle.as_secs(),
            absolute_expires_at: st.wall_time(now + absolute),
        })
    }

    /// A session token presented to `/session/resource` (`kind = Resource`), `/session/keepalive`
    /// or `/session/logout`. Valid uses slide the idle timeout (logout deletes the session);
    /// counts stats. Returns the session's idle timeout when valid.
    pub(crate) fn session_use(&self, token: Option<&str>, kind: SessionUse) -> Option<Duration> {
        let mut st = self.state.lock();
        let now = st.clock.now();
        if kind == SessionUse::Resource {
            st.stats.session_requests += 1;
        }
        let result = match token.map(|t| (t, st.use_session(t, now))) {
            Some((token, SessionCheck::Valid { idle_timeout })) => {
                match kind {
                    SessionUse::Resource => {}
                    SessionUse::KeepAlive => st.stats.session_keepalives += 1,
                    SessionUse::Logout => {
                        st.sessions.remove(token);
                        st.stats.session_logouts += 1;
                    }
                }
                Some(idle_timeout)
            }
            _ => None,
        };
        if result.is_none() {
            st.stats.session_rejections += 1;
        }
        result
    }

    pub(crate) fn count_resource(&self, rejected: bool) {
        let mut st = self.state.lock();
        st.stats.resource_requests += 1;
        if rejected {
            st.stats.resource_rejections += 1;
        }
    }

    /// RFC 7009: revokes an access token, or a refresh token and its whole family, if it was
    /// issued to `client_id`. Unknown tokens are ignored.
    pub(crate) fn revoke(&self, client_id: &str, token: &str) {
        let mut st = self.state.lock();
        st.stats.revocations += 1;
        let revoke_access = |st: &mut State| -> bool {
            if st
                .access
                .get(token)
                .is_some_and(|r| r.client_id == client_id)
            {
                st.access.remove(token);
                true
            } else {
                false
            }
        };
        let revoke_refresh = |st: &mut State| -> bool {
            match st.refresh.get(token) {
                Some(r) if r.client_id == client_id => {
                    let family = r.family;
                    st.revoke_family(family);
                    true
                }
                _ => false,
            }
        };
        let revoke_session = |st: &mut State| -> bool {
            if st
                .sessions
                .get(token)
                .is_some_and(|r| r.client_id.as_deref() == Some(client_id))
            {
                st.sessions.remove(token);
                true
            } else {
                false
            }
        };
        // Access and refresh tokens never collide, so `token_type_hint` is not needed.
        let _ = revoke_access(&mut st) || revoke_refresh(&mut st) || revoke_session(&mut st);
    }
}

/// Which session endpoint a session token was presented to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionUse {
    Resource,
    KeepAlive,
    Logout,
}

enum SessionCheck {
    Valid { idle_timeout: Duration },
    Unknown,
    Expired,
    Revoked,
}

impl State {
    /// Server wall-clock time at server instant `at`: real wall clock shifted by how far the
    /// server clock is from the real monotonic clock, plus `date_skew_s`.
    fn wall_time(&self, at: Instant) -> SystemTime {
        let real = Instant::now();
        let sys = SystemTime::now();
        let server = if at >= real {
            sys.checked_add(at - real)
        } else {
            sys.checked_sub(real - at)
        };
        let server = server.unwrap_or(sys);
        let skew = self.faults.date_skew_s;
        let shifted = if skew >= 0 {
            server.checked_add(Duration::from_secs(skew.unsigned_abs()))
        } else {
            server.checked_sub(Duration::from_secs(skew.unsigned_abs()))
        };
        shifted.unwrap_or(server)
    }

    /// Creates a session; returns its token, idle timeout and absolute timeout.
    fn new_session(&mut self, client_id: Option<String>) -> (String, Duration, Duration) {
        let now = self.clock.now();
        let idle = self.settings.session_idle_timeout;
        let absolute = self.settings.session_absolute_timeout;
        let lifetime = match self.faults.early_expiry {
            Some(early) => early.min(absolute),
            None => absolute,
        };
        if self.sessions.len() > 50_000 {
            self.sessions
                .retain(|_, r| now < r.dies_at && now < r.last_used + r.idle_timeout);
        }
        let family = self.new_family();
        let token = new_token();
        self.sessions.insert(
            token.clone(),
            SessionRecord {
                client_id,
                family,
                idle_timeout: idle,
                last_used: now,
                dies_at: now + lifetime,
            },
        );
        (token, idle, absolute)
    }

    /// Checks a session token at server time `now`; a valid use slides its idle timeout.
    fn use_session(&mut self, token: &str, now: Instant) -> SessionCheck {
        let revoked_below = self.revoked_below;
        let Some(rec) = self.sessions.get_mut(token) else {
            return SessionCheck::Unknown;
        };
        if rec.family < revoked_below || self.revoked_families.contains(&rec.family) {
            return SessionCheck::Revoked;
        }
        if now >= rec.dies_at || now >= rec.last_used + rec.idle_timeout {
            return SessionCheck::Expired;
        }
        rec.last_used = now;
        SessionCheck::Valid {
            idle_timeout: rec.idle_timeout,
        }
    }

    fn new_family(&mut self) -> u64 {
        let f = self.next_family;
        self.next_family += 1;
        f
    }

    fn family_revoked(&self, family: u64) -> bool {
        family < self.revoked_below || self.revoked_families.contains(&family)
    }

    fn revoke_family(&mut self, family: u64) {
        self.revoked_families.insert(family);
    }

    fn ttl_for(&self, scope: Option<&str>) -> Duration {
        scope
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|s| self.settings.scope_ttls.get(s))
            .min()
            .copied()
            .unwrap_or(self.settings.default_ttl)
    }

    fn issue(
        &mut self,
        client_id: &str,
        family: u64,
        scope: Option<String>,
        with_refresh: bool,
        grant_type: &str,
    ) -> TokenResponse {
        let now = self.clock.now();
        let ttl = self.ttl_for(scope.as_deref());
        let server_ttl = match self.faults.early_expiry {
            Some(early) => early.min(ttl),
            None => ttl,
        };
        if self.access.len() > 50_000 {
            self.access.retain(|_, r| r.expires_at > now);
        }
        let access_token = new_token();
        self.access.insert(
            access_token.clone(),
            AccessRecord {
                client_id: client_id.to_owned(),
                family,
                expires_at: now + server_ttl,
                issued_at: now,
                last_used: now,
            },
        );
        let refresh_token = with_refresh.then(|| {
            let token = new_token();
            self.refresh.insert(
                token.clone(),
                RefreshRecord {
                    client_id: client_id.to_owned(),
                    family,
                    scope: scope.clone(),
                    state: RefreshState::Active,
                },
            );
            token
        });
        self.stats.tokens_issued += 1;
        *self.stats.grants.entry(grant_type.to_owned()).or_insert(0) += 1;
        TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: ttl.as_secs(),
            refresh_token,
            scope,
            issued_token_type: None,
        }
    }
}
