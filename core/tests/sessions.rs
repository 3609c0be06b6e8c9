//! Sliding idle timeouts and absolute timeouts of session tokens, on a manual clock.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use tokenlease::clock::ManualClock;
use tokenlease::{Event, FetchedToken, Lifetime, Manager, Source, Token, TokenState};

const MINUTE: Duration = Duration::from_secs(60);

/// A session API: 15 minutes idle, 60 minutes absolute, optional keep-alive.
#[derive(Debug)]
struct SessionApi {
    logins: AtomicU64,
    keep_alives: AtomicU64,
    keep_alive_supported: bool,
    down: std::sync::atomic::AtomicBool,
}

impl SessionApi {
    fn new(keep_alive_supported: bool) -> Arc<Self> {
        Arc::new(Self {
            logins: AtomicU64::new(0),
            keep_alives: AtomicU64::new(0),
            keep_alive_supported,
            down: Default::default(),
        })
    }
}

#[async_trait]
impl Source for SessionApi {
    async fn fetch(&self) -> tokenlease::Result<FetchedToken> {
        if self.down.load(Ordering::SeqCst) {
            return Err(transient("session API down"));
        }
        let n = self.logins.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(FetchedToken::bearer(format!("session-{n}"), 60 * MINUTE)
            .with_lifetime(Lifetime::ExpiresIn(60 * MINUTE))
            .with_idle_timeout(15 * MINUTE))
    }

    async fn keep_alive(&self, _token: &Token) -> tokenlease::Result<Option<Lifetime>> {
        self.keep_alives.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(transient("session API down"));
        }
        Ok(None)
    }

    fn supports_keep_alive(&self) -> bool {
        self.keep_alive_supported
    }
}

fn session_manager(api: Arc<SessionApi>, clock: &ManualClock) -> (Manager, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let manager = Manager::builder_from_arc(api)
        .clock(Arc::new(clock.clone()))
        .policy(policy())
        .listener(recorder.clone())
        .build();
    (manager, recorder)
}

#[test]
fn an_idle_session_is_kept_alive_on_the_client_timer_at_minute_ten() {
    let clock = ManualClock::new();
    let api = SessionApi::new(true);
    let (manager, recorder) = session_manager(api.clone(), &clock);
    let token = manager.token_blocking().unwrap().into_arc();
    assert_eq!(token.idle_timeout(), Some(15 * MINUTE));
    // Idle advisory window of a 15-minute idle timeout is 5 minutes: keep-alive at minute 10.
    assert_eq!(token.refresh_at(), token.obtained_at() + 10 * MINUTE);
    wait_until("timer armed", || {
        clock.next_timer() == Some(token.refresh_at())
    });
    clock.advance(10 * MINUTE);
    wait_until("kept alive", || {
        recorder.count(|e| matches!(e, Event::KeptAlive { .. })) == 1
    });
    assert_eq!(api.keep_alives.load(Ordering::SeqCst), 1);
    assert_eq!(
        api.logins.load(Ordering::SeqCst),
        1,
        "no re-login for an idle session"
    );
    assert_eq!(manager.status().generation, 1);
    assert_eq!(manager.status().state, TokenState::Fresh);
    assert_eq!(manager.status().counters.keep_alives, 1);
}

#[test]
fn reported_use_postpones_the_keep_alive() {
    let clock = ManualClock::new();
    let api = SessionApi::new(true);
    let (manager, _) = session_manager(api.clone(), &clock);
    for _ in 0..5 {
        clock.advance(5 * MINUTE);
        let token = manager.token_blocking().unwrap();
        manager.report_use(&token);
    }
    // 25 minutes of steady use: never idle long enough to need a keep-alive.
    wait_until("no refresh running", || !manager.status().refreshing);
    assert_eq!(api.keep_alives.load(Ordering::SeqCst), 0);
    assert_eq!(api.logins.load(Ordering::SeqCst), 1);
}

#[test]
fn the_absolute_timeout_forces_a_new_login_even_when_used() {
    let clock = ManualClock::new();
    let api = SessionApi::new(true);
    let (manager, recorder) = session_manager(api.clone(), &clock);
    let first = manager.token_blocking().unwrap().into_arc();
    // Used every 5 minutes for 50 minutes: the absolute refresh point of a 60-minute
    // session (minute 45) triggers a re-login, not a keep-alive.
    for _ in 0..10 {
        clock.advance(5 * MINUTE);
        if let Ok(token) = manager.token_blocking() {
            manager.report_use(&token);
        }
        wait_until("settled", || !manager.status().refreshing);
    }
    wait_until("re-login", || recorder.successes() == 2);
    assert_eq!(api.logins.load(Ordering::SeqCst), 2);
    assert_ne!(manager.cached().unwrap().generation(), first.generation());
    assert_eq!(api.keep_alives.load(Ordering::SeqCst), 0);
}

#[test]
fn without_keep_alive_an_idle_session_is_replaced_by_a_new_login() {
    let clock = ManualClock::new();
    let api = SessionApi::new(false);
    let (manager, recorder) = session_manager(api.clone(), &clock);
    let first = manager.token_blocking().unwrap().into_arc();
    wait_until("timer armed", || {
        clock.next_timer() == Some(first.refresh_at())
    });
    clock.advance(10 * MINUTE);
    wait_until("re-login", || recorder.successes() == 2);
    assert_eq!(api.logins.load(Ordering::SeqCst), 2);
}

#[test]
fn an_idle_session_past_its_idle_timeout_is_never_served() {
    let clock = ManualClock::new();
    let api = SessionApi::new(true);
    let (manager, _) = session_manager(api.clone(), &clock);
    let first = manager.token_blocking().unwrap().into_arc();
    assert_eq!(first.expires_at(), first.obtained_at() + 15 * MINUTE);
    api.down.store(true, Ordering::SeqCst);
    // Keep-alives and logins fail; the session is served until its idle timeout...
    clock.advance(14 * MINUTE + Duration::from_secs(30));
    assert_eq!(manager.token_blocking().unwrap().generation(), 1);
    wait_until("settled", || !manager.status().refreshing);
    // ...and never after it, although its absolute expiry is 45 minutes away.
    clock.advance(MINUTE);
    let err = manager.token_blocking().unwrap_err();
    assert_eq!(err.kind(), tokenlease::ErrorKind::Expired);
    assert!(api.keep_alives.load(Ordering::SeqCst) >= 1);
}

/// Session URL templates against the real test server over loopback: a credential or the
/// session token rendered into a URL never reaches an error, an event or `Debug` output.
mod over_loopback {
    use std::collections::BTreeMap;

    use super::*;
    use tokenlease::session::{SessionLogin, SessionSpec};
    use tokenlease::{ErrorKind, SecretString};
    use tokenlease_test_server::{ServerConfig, TestServer};

    const PASSWORD: &str = "wonderland";
    const URL_PASSWORD: &str = "url-password-1";

    fn spec(login: &str, keep_alive: &str, logout: &str) -> SessionSpec {
        serde_json::from_value(serde_json::json!({
            "login": {"url": login, "json": {"username": "{{username}}", "password": "{{password}}"}},
            "token": {"json_pointer": "/session/id"},
            "expires_in": {"header": "X-Token-Expires-In"},
            "sliding": true,
            "absolute_deadline": {"json_pointer": "/session/absolute_expires_at"},
            "send": {"header": "vmware-api-session-id"},
            "keep_alive": {"url": keep_alive, "authenticated": true},
            "logout": {"url": logout, "authenticated": true}
        }))
        .unwrap()
    }

    fn credentials(extra: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        [("username", "alice"), ("password", PASSWORD)]
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), SecretString::from(*v)))
            .collect()
    }

    /// `http://alice:url-password-1@127.0.0.1:PORT`.
    fn with_userinfo(server: &TestServer) -> String {
        server
            .url()
            .replacen("http://", &format!("http://alice:{URL_PASSWORD}@"), 1)
    }

    fn assert_hidden(what: &str, shown: &str, secrets: &[&str]) {
        for secret in secrets {
            assert!(!shown.contains(secret), "{what} shows {secret:?}: {shown}");
        }
    }

    fn manager(login: Arc<SessionLogin>, clock: &ManualClock) -> (Manager, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let manager = Manager::builder_from_arc(login)
            .clock(Arc::new(clock.clone()))
            .policy(policy())
            .listener(recorder.clone())
            .build();
        (manager, recorder)
    }

    #[test]
    fn a_failed_login_names_the_url_template_never_the_password() {
        let server = TestServer::start_background(ServerConfig::default()).unwrap();
        let base = server.url();
        let spec = spec(
            &format!(
                "{}/fault/status/500/login/{{{{password}}}}?p={{{{password}}}}",
                with_userinfo(&server)
            ),
            &server.session_keepalive_url(),
            &server.session_logout_url(),
        );
        let login = Arc::new(SessionLogin::new(spec.clone(), credentials(&[])).unwrap());
        let clock = ManualClock::new();
        let (manager, recorder) = manager(login.clone(), &clock);
        let err = manager.token_blocking().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert_eq!(
            err.message(),
            format!("session login at {base}/fault/status/500/login/{{{{password}}}} answered 500")
        );
        wait_until("failure event", || {
            recorder.count(|e| matches!(e, Event::RefreshFailed { .. })) == 1
        });
        let secrets = [PASSWORD, URL_PASSWORD];
        assert_hidden("error", &format!("{err} {err:?}"), &secrets);
        assert_hidden("events", &format!("{:?}", recorder.events.lock()), &secrets);
        assert_hidden("status", &format!("{:?}", manager.status()), &secrets);
        assert_hidden("source", &format!("{login:?}"), &secrets);
        assert_hidden("spec", &format!("{spec:?}"), &secrets);
        assert_hidden("manager", &format!("{manager:?}"), &secrets);
    }

    #[test]
    fn failed_keep_alive_and_logout_name_the_url_template_never_the_token() {
        let server = TestServer::start_background(ServerConfig::default()).unwrap();
        let base = server.url();
        let spec = spec(
            &format!(
                "{}/session/login/{{{{password}}}}?p={{{{password}}}}",
                with_userinfo(&server)
            ),
            &format!(
                "{}/fault/status/500/keepalive/{{{{token}}}}?t={{{{token}}}}",
                with_userinfo(&server)
            ),
            &format!("{base}/fault/status/404/logout/{{{{token}}}}"),
        );
        let login = Arc::new(SessionLogin::new(spec.clone(), credentials(&[])).unwrap());
        let clock = ManualClock::new();
        let (manager, recorder) = manager(login.clone(), &clock);
        // The login works with the password in its path.
        let token = manager.token_blocking().unwrap().into_arc();
        assert_eq!(server.stats().session_logins, 1);
        let value = token.value().expose().to_owned();
        assert!(value.len() >= 16);

        // Minute 10 of a 15-minute idle timeout: the keep-alive answers 500.
        wait_until("timer armed", || {
            clock.next_timer() == Some(token.refresh_at())
        });
        clock.advance(10 * MINUTE);
        wait_until("keep-alive failed", || {
            recorder.count(|e| matches!(e, Event::RefreshFailed { .. })) == 1
        });
        let keep_alive_message = recorder
            .events
            .lock()
            .iter()
            .find_map(|e| match e {
                Event::RefreshFailed { message, .. } => Some(message.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            keep_alive_message,
            format!("session keep_alive at {base}/fault/status/500/keepalive/{{{{token}}}} answered 500")
        );

        // Logout answers 404.
        let err = manager.revoke_blocking().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert_eq!(
            err.message(),
            format!("session logout at {base}/fault/status/404/logout/{{{{token}}}} answered 404")
        );

        let secrets = [value.as_str(), PASSWORD, URL_PASSWORD];
        assert_hidden("error", &format!("{err} {err:?}"), &secrets);
        assert_hidden("events", &format!("{:?}", recorder.events.lock()), &secrets);
        assert_hidden("status", &format!("{:?}", manager.status()), &secrets);
        assert_hidden("source", &format!("{login:?}"), &secrets);
        assert_hidden("spec", &format!("{spec:?}"), &secrets);
        assert_hidden("manager", &format!("{manager:?}"), &secrets);
    }

    #[test]
    fn a_credential_rendered_into_the_url_cannot_change_the_host() {
        let server = TestServer::start_background(ServerConfig::default()).unwrap();
        // Rendered unencoded, this pin would make the URL's host 127.0.0.1:1 (nothing
        // listens there) and send the credentials to it.
        let pin = "x@127.0.0.1:1/";
        let login_url = format!(
            "http://alice:{{{{pin}}}}@127.0.0.1:{}/session/login/{{{{pin}}}}?pin={{{{pin}}}}",
            server.port()
        );
        let spec = spec(
            &login_url,
            &server.session_keepalive_url(),
            &server.session_logout_url(),
        );
        let login = SessionLogin::new(spec, credentials(&[("pin", pin)])).unwrap();
        let manager = Manager::builder(login).policy(policy()).build();
        manager
            .token_blocking()
            .expect("the login reached the test server");
        assert_eq!(server.stats().session_logins, 1);
    }
}

fn session_manager_on(
    api: Arc<SessionApi>,
    clock: &ManualClock,
    store: Arc<tokenlease::MemoryStore>,
) -> Manager {
    Manager::builder_from_arc(api)
        .clock(Arc::new(clock.clone()))
        .policy(policy())
        .store(store)
        .key("session")
        .build()
}

#[test]
fn a_sliding_session_keeps_its_idle_state_across_a_restart() {
    let clock = ManualClock::with_wall(std::time::SystemTime::now());
    let store = Arc::new(tokenlease::MemoryStore::new());
    let api = SessionApi::new(true);
    let first = session_manager_on(api.clone(), &clock, store.clone());
    let token = first.token_blocking().unwrap().into_arc();
    let record = store.get("session").expect("persisted");
    let idle = record.idle.expect("the idle state is persisted");
    assert_eq!(idle.timeout_ms, 15 * 60 * 1000);
    // The first process keeps the session alive at minute 10 and that is persisted.
    wait_until("timer armed", || {
        clock.next_timer() == Some(token.refresh_at())
    });
    clock.advance(10 * MINUTE);
    wait_until("kept alive", || api.keep_alives.load(Ordering::SeqCst) == 1);
    wait_until("keep-alive persisted", || {
        store.get("session").unwrap().idle.unwrap().last_used_ms
            >= idle.last_used_ms + 10 * 60 * 1000
    });
    first.close();

    // Restarted 4 minutes later (14 minutes after the login, 4 after the keep-alive):
    // the session is adopted, still idle-bound, and served without a login.
    clock.advance(4 * MINUTE);
    let second = session_manager_on(api.clone(), &clock, store.clone());
    let adopted = second.token_blocking().unwrap().into_arc();
    assert_eq!(adopted.value().expose(), token.value().expose());
    assert_eq!(adopted.idle_timeout(), Some(15 * MINUTE));
    assert_eq!(
        api.logins.load(Ordering::SeqCst),
        1,
        "no login after the restart"
    );
    second.close();

    // Restarted again, past the idle timeout since the last known use: never served; a
    // new login instead.
    clock.advance(12 * MINUTE);
    let third = session_manager_on(api.clone(), &clock, store);
    let replaced = third.token_blocking().unwrap();
    assert_ne!(replaced.value().expose(), token.value().expose());
    assert_eq!(api.logins.load(Ordering::SeqCst), 2);
}

#[test]
fn a_lifetime_the_server_reports_on_api_responses_moves_the_idle_deadline() {
    use tokenlease::client::HeaderAuthorizer;
    use tokenlease::session::{ExpiredSpec, SendSpec};
    let clock = ManualClock::new();
    let api = SessionApi::new(true);
    let send: SendSpec = serde_json::from_str(r#"{"header": "X-Session"}"#).unwrap();
    let authorizer = HeaderAuthorizer::new(&send, ExpiredSpec::default())
        .unwrap()
        .with_reported_lifetime("X-Token-Expires-In")
        .unwrap();
    let manager = Manager::builder_from_arc(api)
        .clock(Arc::new(clock.clone()))
        .policy(policy())
        .authorizer(Arc::new(authorizer))
        .build();
    let token = manager.token_blocking().unwrap().into_arc();
    let start = token.last_used();
    clock.advance(8 * MINUTE);
    // 10 of the 15 idle minutes left, says the server: the deadline is minute 18.
    let verdict = manager.judge_response(
        token.generation(),
        200,
        &[("X-Token-Expires-In", "600")],
        b"",
    );
    assert_eq!(verdict, tokenlease::ResponseVerdict::Accepted);
    assert_eq!(token.last_used(), start + 3 * MINUTE);
    // More than the idle timeout: a full timeout from now, no more.
    clock.advance(MINUTE);
    manager.judge_response(
        token.generation(),
        200,
        &[("x-token-expires-in", "99999")],
        b"",
    );
    assert_eq!(token.last_used(), start + 9 * MINUTE);
    // Without the header: an ordinary use.
    clock.advance(MINUTE);
    manager.judge_response(token.generation(), 204, &[], b"");
    assert_eq!(token.last_used(), start + 10 * MINUTE);
    // Garbage in the header is ignored (an ordinary use).
    clock.advance(MINUTE);
    manager.judge_response(
        token.generation(),
        200,
        &[("X-Token-Expires-In", "soon")],
        b"",
    );
    assert_eq!(token.last_used(), start + 11 * MINUTE);
}
