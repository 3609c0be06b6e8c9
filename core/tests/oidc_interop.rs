//! Interop with a real OAuth2 / OpenID Connect server we did not write: the npm package
//! `oidc-provider` (version pinned in tests/oidc/package-lock.json), started by each test
//! from tests/oidc/server.js on loopback.
//!
//! Needs Node.js >= 20 and `./scripts/setup-oidc` (npm ci in tests/oidc); without them
//! every test here fails with a message saying so, never skips. Runs with the
//! `oidc-interop` feature (so with `--all-features`).
//!
//! The manager runs on a manual clock: nothing ages by itself, refreshes happen when a test
//! invalidates a token (or the server rejects it), so every request count is exact.
//!
//! Refresh tokens come from a test-only `password` grant that server.js registers with
//! `provider.registerGrantType` (oidc-provider issues refresh tokens only from browser
//! flows); the refresh grant, its rotation and reuse detection, revocation and
//! introspection are oidc-provider's own code.
#![cfg(feature = "oidc-interop")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokenlease::client::{Attempts, AuthorizedClient, BearerAuthorizer};
use tokenlease::clock::ManualClock;
use tokenlease::http::jwt_expiry;
use tokenlease::oauth2::{ClientAuth, Grant, OAuth2Source};
use tokenlease::{ErrorKind, Manager, MemoryStore, SecretString, Source, Token};

const BASIC_CLIENT: &str = "tokenlease-basic";
const POST_CLIENT: &str = "tokenlease-post";
const SECRET: &str = "tokenlease-secret";
const RESOURCE: &str = "urn:tokenlease:api";
const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One oidc-provider process; killed when dropped (and it exits by itself when our end of
/// its stdin closes, or after its lifetime).
struct OidcServer {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
    http: reqwest::Client,
}

impl OidcServer {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider/package.json")
                .is_file(),
            "tests/oidc/node_modules is missing: run ./scripts/setup-oidc (npm ci) before \
             the oidc-interop tests"
        );
        let mut child = Command::new("node")
            .arg(dir.join("server.js"))
            .args(["--lifetime", "120", "--exit-with-stdin"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("could not run `node` (Node.js >= 20 is needed for the oidc-interop tests): {err}")
            });
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep stderr drained (and at hand for a failure message).
        let errors = Arc::new(Mutex::new(String::new()));
        let sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let first = rx.recv_timeout(STARTUP_TIMEOUT);
        let issuer = match first {
            Ok(Some(Ok(line))) if line.starts_with("OIDC_PROVIDER_URL=") => {
                line["OIDC_PROVIDER_URL=".len()..].to_owned()
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "tests/oidc/server.js did not print OIDC_PROVIDER_URL= within {STARTUP_TIMEOUT:?} \
                     (got {other:?}); its stderr:\n{}",
                    errors.lock().unwrap()
                );
            }
        };
        Self {
            child,
            _stdin: stdin,
            issuer,
            http: reqwest::Client::new(),
        }
    }

    fn issuer(&self) -> &str {
        &self.issuer
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    async fn stats(&self) -> Value {
        self.http
            .get(self.url("/__stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    async fn token_requests(&self) -> u64 {
        self.stats().await["token_requests"].as_u64().unwrap()
    }

    async fn grants(&self, grant_type: &str) -> u64 {
        self.stats().await["grants"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// RFC 7662 introspection, authenticated as the basic client.
    async fn introspect(&self, token: &SecretString) -> Value {
        let response = self
            .http
            .post(self.url("/token/introspection"))
            .basic_auth(BASIC_CLIENT, Some(SECRET))
            .form(&[("token", token.expose())])
            .send()
            .await
            .expect("introspection");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("introspection json")
    }

    async fn is_active(&self, token: &SecretString) -> bool {
        self.introspect(token).await["active"].as_bool().unwrap()
    }

    /// Revokes an access token behind the manager's back (as an admin or another session
    /// would); the refresh token stays valid.
    async fn revoke_access_token(&self, client_id: &str, token: &SecretString) {
        let response = self
            .http
            .post(self.url("/token/revocation"))
            .basic_auth(client_id, Some(SECRET))
            .form(&[
                ("token", token.expose()),
                ("token_type_hint", "access_token"),
            ])
            .send()
            .await
            .expect("revocation");
        assert!(response.status().is_success(), "{}", response.status());
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn manager(source: OAuth2Source) -> Manager {
    Manager::builder(source)
        .clock(Arc::new(ManualClock::with_wall(SystemTime::now())))
        .build()
}

fn password_source(server: &OidcServer) -> OAuth2Source {
    OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
        .unwrap()
        .grant(Grant::Password {
            username: "alice".to_owned(),
            password: "wonderland".into(),
        })
        .scopes(["openid", "offline_access"])
}

fn assert_fresh_lifetime(token: &Token) {
    assert!(
        token.lifetime() <= ACCESS_TOKEN_TTL && token.lifetime() >= ACCESS_TOKEN_TTL / 2,
        "lifetime {:?}",
        token.lifetime()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_through_discovery_with_basic_auth() {
    let server = OidcServer::start();
    let source = OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
        .unwrap()
        .scopes(["api:read"]);
    let manager = manager(source);
    let token = manager.token().await.unwrap().into_arc();
    for _ in 0..20 {
        assert_eq!(manager.token().await.unwrap().generation(), 1);
    }
    assert_eq!(token.scopes(), ["api:read"]);
    assert_eq!(token.token_type(), "Bearer");
    assert!(token.refresh_token().is_none());
    assert_fresh_lifetime(&token);
    let introspection = server.introspect(token.value()).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], BASIC_CLIENT);
    assert_eq!(introspection["scope"], "api:read");
    assert_eq!(server.token_requests().await, 1);
    assert_eq!(server.grants("client_credentials").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_at_a_fixed_token_url_with_post_auth() {
    let server = OidcServer::start();
    let source = OAuth2Source::new(&server.url("/token"), POST_CLIENT, SECRET)
        .unwrap()
        .client_auth(ClientAuth::Post)
        .scopes(["api:read"]);
    let manager = manager(source);
    // The blocking API, from a thread outside the async runtime's workers.
    let blocking = manager.clone();
    let token = tokio::task::spawn_blocking(move || blocking.token_blocking().unwrap().into_arc())
        .await
        .unwrap();
    assert_fresh_lifetime(&token);
    let introspection = server.introspect(token.value()).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], POST_CLIENT);
    assert_eq!(server.token_requests().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_indicator_gets_a_jwt_whose_exp_tokenlease_reads() {
    let server = OidcServer::start();
    let source = OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
        .unwrap()
        .scopes(["api:read"])
        .resource(RESOURCE);
    let manager = manager(source);
    let token = manager.token().await.unwrap().into_arc();
    let exp = jwt_expiry(token.value().expose()).expect("a JWT access token with exp");
    let remaining = exp.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(remaining <= ACCESS_TOKEN_TTL, "{remaining:?}");
    // expires_in and exp agree (the earlier wins; `Date` costs at most a second or two).
    assert_fresh_lifetime(&token);
    assert_eq!(token.scopes(), ["api:read"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_callers_make_one_token_request() {
    // The server holds each token request for 300 ms so the callers really overlap.
    let server = OidcServer::start_with(&["--token-delay-ms", "300"]);
    let source = OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
        .unwrap()
        .scopes(["api:read"]);
    let manager = manager(source);
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                let token = manager.token().await.unwrap();
                (token.generation(), token.value().expose().to_owned())
            })
        })
        .collect();
    let mut values = Vec::new();
    for caller in callers {
        let (generation, value) = caller.await.unwrap();
        assert_eq!(generation, 1);
        values.push(value);
    }
    values.dedup();
    assert_eq!(values.len(), 1, "every caller got the one token");
    assert_eq!(server.token_requests().await, 1);
    assert_eq!(manager.status().counters.fetches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_makes_the_token_inactive_at_the_server() {
    let server = OidcServer::start();
    // The revocation endpoint comes from discovery.
    let source = OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
        .unwrap()
        .scopes(["api:read"]);
    let manager = manager(source);
    let token = manager.token().await.unwrap().into_arc();
    assert!(server.is_active(token.value()).await);
    manager.revoke().await.unwrap();
    assert!(!server.is_active(token.value()).await);
    assert!(manager.cached().is_none());
    assert_eq!(server.stats().await["revocation_requests"], 1);
    // The next call logs in again.
    let next = manager.token().await.unwrap().into_arc();
    assert_ne!(next.value().expose(), token.value().expose());
    assert!(server.is_active(next.value()).await);
    assert_eq!(server.token_requests().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_of_a_password_grant_revokes_access_and_refresh_token() {
    let server = OidcServer::start();
    let manager = manager(password_source(&server));
    let token = manager.token().await.unwrap().into_arc();
    let refresh = token.refresh_token().expect("a refresh token").clone();
    assert!(server.is_active(token.value()).await);
    assert!(server.is_active(&refresh).await);
    manager.revoke().await.unwrap();
    assert!(!server.is_active(token.value()).await);
    assert!(!server.is_active(&refresh).await);
    assert_eq!(server.stats().await["revocation_requests"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_rotation_is_persisted_and_the_old_one_is_dead() {
    let server = OidcServer::start();
    let source = password_source(&server);
    let store = Arc::new(MemoryStore::new());
    let manager = Manager::builder(source.clone())
        .clock(Arc::new(ManualClock::with_wall(SystemTime::now())))
        .store(store.clone())
        .key("oidc")
        .build();
    let stored_refresh_token = || {
        store
            .get("oidc")
            .expect("a stored record")
            .refresh_token
            .expect("a stored refresh token")
            .expose()
            .to_owned()
    };

    let first = manager.token().await.unwrap().into_arc();
    let rt1 = first.refresh_token().expect("a refresh token").clone();
    assert_eq!(stored_refresh_token(), rt1.expose());
    assert_eq!(server.grants("password").await, 1);

    // Refresh: oidc-provider consumes rt1 and answers with rt2; the store has rt2.
    assert!(manager.invalidate(&first));
    let second = manager.token().await.unwrap().into_arc();
    assert_eq!(second.generation(), 2);
    let rt2 = second.refresh_token().unwrap().clone();
    assert_ne!(rt2.expose(), rt1.expose(), "the refresh token was rotated");
    assert_eq!(stored_refresh_token(), rt2.expose());
    assert_eq!(server.grants("refresh_token").await, 1);
    assert!(server.is_active(second.value()).await);
    assert!(!server.is_active(&rt1).await, "rt1 is consumed");

    // The next refresh uses rt2 (rt1 would fail) and rotates again.
    assert!(manager.invalidate(&second));
    let third = manager.token().await.unwrap().into_arc();
    let rt3 = third.refresh_token().unwrap().clone();
    assert_ne!(rt3.expose(), rt2.expose());
    assert_eq!(stored_refresh_token(), rt3.expose());
    assert_eq!(server.grants("refresh_token").await, 2);
    assert_eq!(server.grants("password").await, 1, "no new login");
    assert_eq!(manager.status().counters.refreshes, 2);

    // Reusing the consumed rt1 fails with invalid_grant…
    let err = source.refresh(&rt1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidGrant, "{err}");
    // …and oidc-provider's reuse detection revokes the whole grant.
    assert!(!server.is_active(third.value()).await);
    assert!(!server.is_active(&rt3).await);

    // The manager recovers: its refresh with rt3 fails, it logs in again with the password.
    assert!(manager.invalidate(&third));
    let fourth = manager.token().await.unwrap().into_arc();
    assert!(server.is_active(fourth.value()).await);
    assert_eq!(server.grants("password").await, 2);
    let rt4 = fourth.refresh_token().unwrap();
    assert_eq!(stored_refresh_token(), rt4.expose());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_client_gets_a_new_token_once_when_userinfo_rejects_it() {
    let server = OidcServer::start();
    let manager = manager(password_source(&server));
    let client = AuthorizedClient::new(manager.clone(), Arc::new(BearerAuthorizer)).unwrap();
    let userinfo = server.url("/me");

    let request = client
        .request(reqwest::Method::GET, &userinfo)
        .build()
        .unwrap();
    let (response, attempts) = client.execute_counted(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(attempts, Attempts::Once);
    let claims: Value = response.json().await.unwrap();
    assert_eq!(claims["sub"], "alice");

    // Someone revokes the access token. oidc-provider then revokes every token of its
    // grant, the refresh token too: userinfo answers 401 error="invalid_token", the
    // client invalidates the token, the manager's refresh fails with invalid_grant, it
    // logs in again with the password grant, and the request is sent once more.
    let token = manager.cached().unwrap().into_arc();
    let refresh = token.refresh_token().unwrap().clone();
    server
        .revoke_access_token(BASIC_CLIENT, token.value())
        .await;
    assert!(!server.is_active(&refresh).await);
    let request = client
        .request(reqwest::Method::GET, &userinfo)
        .build()
        .unwrap();
    let (response, attempts) = client.execute_counted(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(attempts, Attempts::RetriedAfterRejection);
    let stats = server.stats().await;
    assert_eq!(stats["errors"]["invalid_grant"], 1, "{stats}");
    assert_eq!(stats["grants"]["password"], 2, "{stats}");
    assert_eq!(stats["token_requests"], 3, "{stats}");
    let counters = manager.status().counters;
    assert_eq!((counters.fetches, counters.refreshes), (2, 1));
    assert_eq!(manager.cached().unwrap().generation(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_invalid_credentials() {
    let server = OidcServer::start();
    for (client_id, auth) in [
        (BASIC_CLIENT, ClientAuth::Basic),
        (POST_CLIENT, ClientAuth::Post),
    ] {
        let source = OAuth2Source::discover(server.issuer(), client_id, Some("wrong".into()))
            .unwrap()
            .client_auth(auth)
            .scopes(["api:read"]);
        let manager = manager(source);
        let err = manager.token().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{auth:?}: {err}");
        assert_eq!(
            manager.status().last_error_kind,
            Some(ErrorKind::InvalidCredentials)
        );
    }
    // Terminal: one request each, no retries.
    assert_eq!(server.token_requests().await, 2);
    assert_eq!(server.stats().await["errors"]["invalid_client"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_the_client_may_not_have_is_a_configuration_error() {
    let server = OidcServer::start();
    let source = OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
        .unwrap()
        .scopes(["api:read", "api:write"]);
    let manager = manager(source);
    let err = manager.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert_eq!(server.token_requests().await, 1);
    assert_eq!(server.stats().await["errors"]["invalid_scope"], 1);
}
