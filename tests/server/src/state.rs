//! Server state: settings, injected faults, issued tokens and counters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rand::distributions::{Alphanumeric, DistString};
use serde::Serialize;

use crate::{Control, OutageMode, ServerConfig, Stats};

/// Length of generated access and refresh tokens.
const TOKEN_LEN: usize = 43;

/// State shared by all connections of one server.
pub(crate) struct Shared {
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
}

#[derive(Default)]
struct Faults {
    latency: Duration,
    outage: Option<(OutageMode, Option<Instant>)>,
    rate_limit: Option<(u64, Option<Instant>)>,
    early_expiry: Option<Duration>,
    date_skew_s: i64,
    fail_next: Option<(u32, String)>,
}

struct AccessRecord {
    client_id: String,
    family: u64,
    expires_at: Instant,
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
    access: HashMap<String, AccessRecord>,
    refresh: HashMap<String, RefreshRecord>,
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
    pub(crate) fn new(config: ServerConfig) -> Shared {
        Shared {
            state: Mutex::new(State {
                settings: Settings {
                    default_ttl: config.default_ttl,
                    scope_ttls: config.scope_ttls,
                    rotate_refresh_tokens: config.rotate_refresh_tokens,
                    issue_refresh_tokens: config.issue_refresh_tokens,
                    refresh_for_client_credentials: config.refresh_for_client_credentials,
                    clients: config.clients,
                    users: config.users,
                },
                faults: Faults::default(),
                stats: Stats::default(),
                access: HashMap::new(),
                refresh: HashMap::new(),
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
    }

    /// The `Date` header value: now + `date_skew_s`, as an RFC 7231 IMF-fixdate.
    pub(crate) fn http_date(&self) -> String {
        let skew = self.state.lock().faults.date_skew_s;
        let now = SystemTime::now();
        let shifted = if skew >= 0 {
            now.checked_add(Duration::from_secs(skew.unsigned_abs()))
        } else {
            now.checked_sub(Duration::from_secs(skew.unsigned_abs()))
        };
        httpdate::fmt_http_date(shifted.unwrap_or(now))
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

    /// Checks a bearer token presented to the resource.
    pub(crate) fn check_access(&self, token: &str) -> TokenCheck {
        let now = Instant::now();
        let st = self.state.lock();
        match st.access.get(token) {
            None => TokenCheck::Unknown,
            Some(rec) if st.family_revoked(rec.family) => TokenCheck::Revoked,
            Some(rec) if now >= rec.expires_at => TokenCheck::Expired,
            Some(rec) => TokenCheck::Valid {
                client_id: rec.client_id.clone(),
            },
        }
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
        // Access and refresh tokens never collide, so `token_type_hint` is not needed.
        let _ = revoke_access(&mut st) || revoke_refresh(&mut st);
    }
}

impl State {
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
        let now = Instant::now();
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
        }
    }
}
