//! Interop with real OAuth2 / OpenID Connect servers we did not write, started by the tests
//! on loopback:
//!
//! - the npm package `oidc-provider` (version pinned in tests/oidc/package-lock.json, run by
//!   tests/oidc/server.js), mounted at `/` (issuer `http://127.0.0.1:PORT`) and under a path
//!   (issuer `http://127.0.0.1:PORT/realms/tl`, the shape of Keycloak, Okta custom
//!   authorization servers or Entra ID). Every oidc-provider case runs against both mounts
//!   (modules `oidc_provider::at_root` and `oidc_provider::under_a_path`);
//! - the Maven package `no.nav.security:mock-oauth2-server` (version pinned in
//!   tests/mock-oauth2/pom.xml, run by tests/mock-oauth2/launch), whose issuers are paths
//!   (`http://127.0.0.1:PORT/NAME`); one server per test process, one issuer per test.
//!
//! Needs Node.js >= 20 and `./scripts/setup-oidc` (npm ci in tests/oidc), and Java >= 17 and
//! `./scripts/setup-mock-oauth2` (the jars into the cache directory). A test whose server is
//! not installed fails when CI=true and otherwise prints a loud SKIPPED line (on the
//! terminal, past cargo's output capture) and returns. Runs with the `oidc-interop`
//! feature (so with `--all-features`).
//!
//! The manager runs on a manual clock: nothing ages by itself, refreshes happen when a test
//! invalidates a token (or the server rejects it), so every request count is exact.
//!
//! oidc-provider issues refresh tokens only from browser flows, so server.js registers a
//! test-only `password` grant with `provider.registerGrantType`; the refresh grant, its
//! rotation and reuse detection, revocation and introspection are oidc-provider's own code.
//! mock-oauth2-server issues refresh tokens from its authorization-code flow, which the
//! tests drive over HTTP (it needs no login page) before handing the tokens to tokenlease.
#![cfg(feature = "oidc-interop")]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokenlease::client::{Attempts, AuthorizedClient, BearerAuthorizer};
use tokenlease::clock::ManualClock;
use tokenlease::http::jwt_expiry;
use tokenlease::oauth2::{ClientAuth, DiscoveryMode, Grant, OAuth2Source};
use tokenlease::{
    BlockingStore, ErrorKind, Manager, MemoryStore, SecretString, Source, Token, TokenRecord,
    TokenRef,
};

const BASIC_CLIENT: &str = "tokenlease-basic";
const POST_CLIENT: &str = "tokenlease-post";
const SECRET: &str = "tokenlease-secret";
const RESOURCE: &str = "urn:tokenlease:api";
const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_dir(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Whether a third-party server is there to test against. Under CI=true a missing one
/// fails the test; elsewhere the test is skipped, loudly.
fn installed(present: bool, message: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1") {
        panic!("{message} (CI=true: a missing interop server fails the run)");
    }
    // Straight to the terminal: cargo captures only the print macros.
    let _ = writeln!(
        std::io::stderr(),
        "\n<<<<<<<<<< SKIPPED, NOT RUN: {message} >>>>>>>>>>"
    );
    false
}

/// A child process that prints `PREFIX=URL` as its first stdout line once it listens, and
/// exits when its stdin closes; killed when dropped.
struct Spawned {
    child: Child,
    _stdin: ChildStdin,
    url: String,
}

impl Spawned {
    /// Starts the server, and once more if the first process does not announce itself in
    /// time: a start-up stall on a loaded machine is the harness's problem, not a finding.
    /// Two stalls in a row fail the test with both processes' stderr.
    fn start(mut command: Command, prefix: &str, what: &str) -> Self {
        let mut stalls = Vec::new();
        for _ in 0..2 {
            match Self::try_start(&mut command, prefix, what) {
                Ok(spawned) => {
                    if !stalls.is_empty() {
                        let _ = writeln!(
                            std::io::stderr(),
                            "\n{what} stalled at start-up once and was restarted:\n{}",
                            stalls.join("\n")
                        );
                    }
                    return spawned;
                }
                Err(stall) => stalls.push(stall),
            }
        }
        panic!("{}", stalls.join("\n"));
    }

    fn try_start(command: &mut Command, prefix: &str, what: &str) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("could not start {what}: {err}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep stderr drained (and at hand for a failure message).
        let errors = Arc::new(Mutex::new(String::new()));
        let sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut sink = sink.lock().unwrap();
                if sink.len() < 64 * 1024 {
                    sink.push_str(&line);
                    sink.push('\n');
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        let wanted = format!("{prefix}=");
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines
                .by_ref()
                .map_while(Result::ok)
                .find(|line| line.starts_with(&wanted));
            let _ = tx.send(first);
            for _ in lines {}
        });
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(line)) => Ok(Self {
                child,
                _stdin: stdin,
                url: line[prefix.len() + 1..].to_owned(),
            }),
            Ok(None) => {
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{what} exited ({status:?}) without printing {prefix}=; its stderr:\n{}",
                    errors.lock().unwrap()
                );
            }
            Err(timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                Err(format!(
                    "{what} did not print {prefix}= within {STARTUP_TIMEOUT:?} ({timeout:?}); \
                     its stderr:\n{}",
                    errors.lock().unwrap()
                ))
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn origin_of(url: &str) -> String {
    let parsed = url::Url::parse(url).expect("server url");
    parsed.origin().ascii_serialization()
}

fn manager(source: OAuth2Source) -> Manager {
    Manager::builder(source)
        .clock(Arc::new(ManualClock::with_wall(SystemTime::now())))
        .build()
}

fn assert_fresh_lifetime(token: &Token, ttl: Duration) {
    assert!(
        token.lifetime() <= ttl && token.lifetime() >= ttl / 2,
        "lifetime {:?}",
        token.lifetime()
    );
}

// ---------------------------------------------------------------------------------------
// oidc-provider (npm), at `/` and under `/realms/tl`

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mount {
    Root,
    Path,
}

const MOUNT_PATH: &str = "/realms/tl";

/// One oidc-provider process (tests/oidc/server.js); killed when dropped, and it exits by
/// itself when our end of its stdin closes, or after its lifetime.
struct OidcServer {
    process: Spawned,
    origin: String,
    mount: Mount,
    http: reqwest::Client,
}

impl OidcServer {
    fn start(mount: Mount) -> Option<Self> {
        Self::start_with(mount, &[])
    }

    fn start_with(mount: Mount, args: &[&str]) -> Option<Self> {
        let dir = repo_dir("tests/oidc");
        let node = Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !installed(
            node && dir
                .join("node_modules/oidc-provider/package.json")
                .is_file(),
            "oidc-provider (tests/oidc/node_modules) or Node.js >= 20 is missing: run \
             ./scripts/setup-oidc",
        ) {
            return None;
        }
        let mut command = Command::new("node");
        command
            .arg(dir.join("server.js"))
            .args(["--lifetime", "120", "--exit-with-stdin"])
            .args(args);
        if mount == Mount::Path {
            command.args(["--mount", MOUNT_PATH]);
        }
        let process = Spawned::start(command, "OIDC_PROVIDER_URL", "tests/oidc/server.js");
        let origin = origin_of(&process.url);
        let server = Self {
            process,
            origin,
            mount,
            http: reqwest::Client::new(),
        };
        match mount {
            Mount::Root => assert_eq!(server.issuer(), server.origin),
            Mount::Path => assert_eq!(server.issuer(), format!("{}{MOUNT_PATH}", server.origin)),
        }
        Some(server)
    }

    fn issuer(&self) -> &str {
        &self.process.url
    }

    /// The path of the mount ("" at the root).
    fn mount_path(&self) -> &'static str {
        match self.mount {
            Mount::Root => "",
            Mount::Path => MOUNT_PATH,
        }
    }

    /// An endpoint of the provider (`/token`, `/me`, ...), under the mount.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/__stats", self.origin))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// The user's browser (tests/oidc/server.js `/__browser/authorize`, shared by the
    /// tests of every language): follows the authorization URL, logs alice in, and returns
    /// the redirect back to the app (with the code or the error).
    async fn browser_authorize(&self, authorization_url: &str) -> String {
        let answer: Value = self
            .browser("authorize", serde_json::json!({ "url": authorization_url }))
            .await;
        answer["redirect"]
            .as_str()
            .unwrap_or_else(|| panic!("the browser did not come back: {answer}"))
            .to_owned()
    }

    /// The user at another device enters `user_code` and approves or denies the login.
    async fn browser_device(&self, user_code: &str, approve: bool) {
        let answer = self
            .browser(
                "device",
                serde_json::json!({ "user_code": user_code, "approve": approve }),
            )
            .await;
        assert_eq!(answer["done"], true, "{answer}");
    }

    /// The user removes the app's access: every grant alice gave ends at once.
    async fn revoke_all_grants(&self) {
        let answer = self.browser("revoke-grants", serde_json::json!({})).await;
        assert!(answer["revoked"].as_u64().unwrap() >= 1, "{answer}");
    }

    async fn browser(&self, action: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/__browser/{action}", self.origin))
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the simulated browser answers");
        let status = response.status();
        let answer: Value = response.json().await.expect("browser json");
        assert!(status.is_success(), "browser {action}: {status} {answer}");
        answer
    }

    async fn token_requests(&self) -> u64 {
        self.stats().await["token_requests"].as_u64().unwrap()
    }

    async fn grants(&self, grant_type: &str) -> u64 {
        self.stats().await["grants"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// How often "METHOD /path" was requested.
    async fn requests(&self, request: &str) -> u64 {
        self.stats().await["paths"][request].as_u64().unwrap_or(0)
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

fn password_source(server: &OidcServer) -> OAuth2Source {
    OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
        .unwrap()
        .grant(Grant::Password {
            username: "alice".to_owned(),
            password: "wonderland".into(),
        })
        .scopes(["openid", "offline_access"])
}

/// Runs each named case against oidc-provider at `/` and under `/realms/tl`.
macro_rules! on_both_mounts {
    ($($case:ident),* $(,)?) => {
        mod oidc_provider {
            mod at_root {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        super::super::$case(super::super::Mount::Root).await
                    }
                )*
            }
            mod under_a_path {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        super::super::$case(super::super::Mount::Path).await
                    }
                )*
            }
        }
    };
}

on_both_mounts!(
    client_credentials_through_discovery_with_basic_auth,
    client_credentials_at_a_fixed_token_url_with_post_auth,
    resource_indicator_gets_a_jwt_whose_exp_tokenlease_reads,
    sixteen_concurrent_callers_make_one_token_request,
    revoke_makes_the_token_inactive_at_the_server,
    revoke_of_a_password_grant_revokes_access_and_refresh_token,
    refresh_token_rotation_is_persisted_and_the_old_one_is_dead,
    authorized_client_gets_a_new_token_once_when_userinfo_rejects_it,
    a_wrong_secret_is_invalid_credentials,
    a_scope_the_client_may_not_have_is_a_configuration_error,
    a_config_with_the_issuer_works_end_to_end,
    a_browser_login_with_pkce_gives_a_rotating_refresh_token,
    a_code_is_refused_with_another_logins_verifier_or_state,
    a_user_login_is_refreshed_until_the_server_ends_it_then_login_is_required,
    a_thousand_tasks_at_the_expiry_of_a_user_login_make_one_refresh,
    a_manager_login_through_the_browser_until_the_user_removes_access,
    a_device_login_waits_through_pending_and_slow_down_until_approved,
    a_denied_device_login_is_cancelled,
    a_device_code_nobody_approves_expires_into_login_required,
    a_device_login_can_be_cancelled_while_it_waits,
    a_seed_never_rolls_back_a_newer_stored_login,
);

async fn client_credentials_through_discovery_with_basic_auth(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
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
    assert_fresh_lifetime(&token, ACCESS_TOKEN_TTL);
    let introspection = server.introspect(token.value()).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], BASIC_CLIENT);
    assert_eq!(introspection["scope"], "api:read");
    assert_eq!(server.token_requests().await, 1);
    assert_eq!(server.grants("client_credentials").await, 1);
    // The OpenID Connect form, under the issuer's path, once.
    let mount_path = server.mount_path();
    let stats = server.stats().await;
    assert_eq!(
        stats["paths"][format!("GET {mount_path}/.well-known/openid-configuration")],
        1,
        "{stats}"
    );
    assert_eq!(
        stats["paths"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|path| path.starts_with("GET "))
            .count(),
        1,
        "no other document was asked for: {stats}"
    );
}

async fn client_credentials_at_a_fixed_token_url_with_post_auth(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
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
    assert_fresh_lifetime(&token, ACCESS_TOKEN_TTL);
    let introspection = server.introspect(token.value()).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], POST_CLIENT);
    assert_eq!(server.token_requests().await, 1);
}

async fn resource_indicator_gets_a_jwt_whose_exp_tokenlease_reads(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
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
    assert_fresh_lifetime(&token, ACCESS_TOKEN_TTL);
    assert_eq!(token.scopes(), ["api:read"]);
}

async fn sixteen_concurrent_callers_make_one_token_request(mount: Mount) {
    // The server holds each token request for 300 ms so the callers really overlap.
    let Some(server) = OidcServer::start_with(mount, &["--token-delay-ms", "300"]) else {
        return;
    };
    let callers: Vec<_> = (0..16)
        .map(|_| {
            // Sixteen managers of one issuer: one discovery document (shared cache)…
            let source = OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
                .unwrap()
                .scopes(["api:read"]);
            tokio::spawn(async move { source.fetch().await.map(|_| ()) })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    let mount_path = server.mount_path();
    assert_eq!(
        server
            .requests(&format!(
                "GET {mount_path}/.well-known/openid-configuration"
            ))
            .await,
        1
    );
    assert_eq!(server.token_requests().await, 16);

    // …and one manager with sixteen callers: one token request.
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
    assert_eq!(server.token_requests().await, 17);
    assert_eq!(manager.status().counters.fetches, 1);
}

async fn revoke_makes_the_token_inactive_at_the_server(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
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

async fn revoke_of_a_password_grant_revokes_access_and_refresh_token(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
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

async fn refresh_token_rotation_is_persisted_and_the_old_one_is_dead(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
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

async fn authorized_client_gets_a_new_token_once_when_userinfo_rejects_it(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
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

async fn a_wrong_secret_is_invalid_credentials(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    // A wrong secret with either method, an unknown client, no secret at all: oidc-provider
    // answers 401 invalid_client to each.
    for (client_id, secret, auth) in [
        (BASIC_CLIENT, Some("wrong"), ClientAuth::Basic),
        (POST_CLIENT, Some("wrong"), ClientAuth::Post),
        ("no-such-client", Some(SECRET), ClientAuth::Basic),
        (BASIC_CLIENT, None, ClientAuth::Basic),
    ] {
        let source = OAuth2Source::discover(server.issuer(), client_id, secret.map(Into::into))
            .unwrap()
            .client_auth(auth)
            .scopes(["api:read"]);
        let manager = manager(source);
        let err = manager.token().await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidCredentials,
            "{client_id} {auth:?}: {err}"
        );
        assert!(err.message().contains("answered 401"), "{err}");
        assert!(!err.message().contains("wrong"), "{err}");
        assert_eq!(
            manager.status().last_error_kind,
            Some(ErrorKind::InvalidCredentials)
        );
    }
    // Terminal: one request each, no retries.
    assert_eq!(server.token_requests().await, 4);
    assert_eq!(server.stats().await["errors"]["invalid_client"], 4);
    // A wrong refresh grant with a wrong secret: the client's authentication fails first.
    let source =
        OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some("wrong".into())).unwrap();
    let err = source
        .refresh(&"not-a-refresh-token".into())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");
}

async fn a_scope_the_client_may_not_have_is_a_configuration_error(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let source = OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
        .unwrap()
        .scopes(["api:read", "api:write"]);
    let manager = manager(source);
    let err = manager.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert_eq!(server.token_requests().await, 1);
    assert_eq!(server.stats().await["errors"]["invalid_scope"], 1);
}

/// The shared config (as Python, C, Kotlin and Swift give it) with `issuer`.
async fn a_config_with_the_issuer_works_end_to_end(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let config = |secret: &str| {
        serde_json::json!({
            "source": {
                "type": "oauth2",
                "issuer": server.issuer(),
                "client_id": BASIC_CLIENT,
                "client_secret": secret,
                "grant": {"type": "password", "username": "alice", "password": "wonderland"},
                "scopes": ["openid", "offline_access"]
            }
        })
        .to_string()
    };
    let client = AuthorizedClient::from_config(&config(SECRET)).unwrap();
    let response = client
        .execute(
            client
                .request(reqwest::Method::GET, &server.url("/me"))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = client.manager().token().await.unwrap().into_arc();
    assert!(token.refresh_token().is_some());
    client.manager().revoke().await.unwrap();
    assert!(!server.is_active(token.value()).await);

    let err = Manager::from_config(&config("wrong"))
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");
}

// oidc-provider under a path only: the two well-known forms and the issuer check.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_rfc_8414_metadata_is_read_when_there_is_no_openid_configuration() {
    let Some(server) = OidcServer::start_with(Mount::Path, &["--no-openid-configuration"]) else {
        return;
    };
    let source = password_source(&server);
    let manager = manager(source.clone());
    let token = manager.token().await.unwrap().into_arc();
    assert!(server.is_active(token.value()).await);
    // Refresh and revocation use the endpoints of that document too.
    assert!(manager.invalidate(&token));
    manager.token().await.unwrap();
    manager.revoke().await.unwrap();
    let stats = server.stats().await;
    assert_eq!(
        stats["paths"]["GET /realms/tl/.well-known/openid-configuration"], 1,
        "{stats}"
    );
    assert_eq!(
        stats["paths"]["GET /realms/tl/.well-known/oauth-authorization-server"], 1,
        "the RFC 8414 URL (/.well-known/oauth-authorization-server/realms/tl), once: {stats}"
    );
    assert_eq!(stats["grants"]["refresh_token"], 1, "{stats}");
    assert_eq!(stats["revocation_requests"], 2, "{stats}");

    // Asked for the OpenID Connect form only, the issuer has no metadata.
    let err = manager_for_mode(&server, DiscoveryMode::OpenIdConnect)
        .token()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(
        err.message().contains(&format!(
            "{}/.well-known/openid-configuration answered 404",
            server.issuer()
        )),
        "{err}"
    );
}

fn manager_for_mode(server: &OidcServer, mode: DiscoveryMode) -> Manager {
    manager(
        OAuth2Source::discover(server.issuer(), BASIC_CLIENT, Some(SECRET.into()))
            .unwrap()
            .discovery_mode(mode)
            .scopes(["api:read"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_either_well_known_form_can_be_asked_for_alone() {
    let Some(server) = OidcServer::start(Mount::Path) else {
        return;
    };
    manager_for_mode(&server, DiscoveryMode::OAuthAuthorizationServer)
        .token()
        .await
        .unwrap();
    manager_for_mode(&server, DiscoveryMode::OpenIdConnect)
        .token()
        .await
        .unwrap();
    let stats = server.stats().await;
    assert_eq!(
        stats["paths"]["GET /realms/tl/.well-known/oauth-authorization-server"], 1,
        "{stats}"
    );
    assert_eq!(
        stats["paths"]["GET /realms/tl/.well-known/openid-configuration"], 1,
        "{stats}"
    );
    assert_eq!(stats["token_requests"], 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_an_issuer_spelled_differently_is_a_configuration_error_naming_both() {
    let Some(server) = OidcServer::start(Mount::Path) else {
        return;
    };
    // localhost reaches the same server, whose documents name 127.0.0.1: not the same issuer.
    let port = url::Url::parse(server.issuer()).unwrap().port().unwrap();
    let configured = format!("http://localhost:{port}{MOUNT_PATH}");
    let source = OAuth2Source::discover(&configured, BASIC_CLIENT, Some(SECRET.into())).unwrap();
    let err = manager(source).token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(err.message().contains(&format!("{configured:?}")), "{err}");
    assert!(
        err.message().contains(&format!("{:?}", server.issuer())),
        "{err}"
    );
    assert_eq!(server.token_requests().await, 0);
    // A terminating slash is the same issuer.
    let source = OAuth2Source::discover(
        &format!("{}/", server.issuer()),
        BASIC_CLIENT,
        Some(SECRET.into()),
    )
    .unwrap()
    .scopes(["api:read"]);
    manager(source).token().await.unwrap();
    // The issuer's last path segment is never dropped (the URL-join mistake).
    assert_eq!(
        server
            .requests("GET /realms/.well-known/openid-configuration")
            .await,
        0
    );
}

// ---------------------------------------------------------------------------------------
// mock-oauth2-server (Maven Central), one process per test binary, one issuer per test

struct MockOAuth2 {
    process: Spawned,
}

/// The mock-oauth2-server of this test process, started on first use. It exits when this
/// process does (its stdin closes) or after its lifetime.
fn mock_oauth2() -> Option<&'static MockOAuth2> {
    static SERVER: OnceLock<Option<MockOAuth2>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let launcher = repo_dir("tests/mock-oauth2/launch");
            let probe = Command::new("bash")
                .arg(&launcher)
                .arg("--check")
                .output()
                .expect("bash");
            if !installed(
                probe.status.success(),
                &format!(
                    "mock-oauth2-server is missing: {}",
                    String::from_utf8_lossy(&probe.stderr).trim()
                ),
            ) {
                return None;
            }
            let mut command = Command::new("bash");
            command
                .arg(&launcher)
                .args(["--lifetime", "600", "--exit-with-stdin"]);
            let process = Spawned::start(
                command,
                "MOCK_OAUTH2_SERVER_URL",
                "tests/mock-oauth2/launch (mock-oauth2-server)",
            );
            Some(MockOAuth2 { process })
        })
        .as_ref()
}

/// One issuer of the shared mock-oauth2-server, with the test's own HTTP client (a client's
/// pooled connections belong to the runtime of the test that made them).
struct MockIssuer {
    server: &'static MockOAuth2,
    path: String,
    http: reqwest::Client,
}

impl MockIssuer {
    fn new(name: &str) -> Option<Self> {
        Some(Self {
            server: mock_oauth2()?,
            path: format!("/{name}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        })
    }

    fn issuer(&self) -> String {
        format!("{}{}", self.server.process.url, self.path)
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.issuer())
    }

    /// How often "METHOD <endpoint under this issuer>" was requested.
    async fn requests(&self, method: &str, endpoint: &str) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/__stats", self.server.process.url))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json");
        stats[format!("{method} {}{endpoint}", self.path)]
            .as_u64()
            .unwrap_or(0)
    }

    async fn introspect(&self, token: &SecretString) -> Value {
        let response = self
            .http
            .post(self.url("/introspect"))
            .basic_auth("introspecting-client", Some(SECRET))
            .form(&[("token", token.expose())])
            .send()
            .await
            .expect("introspection");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("introspection json")
    }

    /// An access and a refresh token from the authorization-code flow (mock-oauth2-server
    /// logs the user in without a page), as a browser login would leave them.
    async fn browser_login(&self, client_id: &str) -> (String, String, u64) {
        let redirect_uri = "http://127.0.0.1:9/callback";
        let response = self
            .http
            .get(self.url("/authorize"))
            .query(&[
                ("client_id", client_id),
                ("response_type", "code"),
                ("redirect_uri", redirect_uri),
                ("scope", "openid offline_access"),
                ("state", "s1"),
            ])
            .send()
            .await
            .expect("authorize");
        assert_eq!(response.status(), 302, "authorize");
        let location = url::Url::parse(
            response
                .headers()
                .get(reqwest::header::LOCATION)
                .expect("a redirect")
                .to_str()
                .unwrap(),
        )
        .unwrap();
        let code = location
            .query_pairs()
            .find(|(name, _)| name == "code")
            .expect("a code")
            .1
            .into_owned();
        let tokens: Value = self
            .http
            .post(self.url("/token"))
            .basic_auth(client_id, Some(SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect_uri),
            ])
            .send()
            .await
            .expect("code exchange")
            .json()
            .await
            .expect("code exchange json");
        (
            tokens["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            tokens["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
            tokens["expires_in"].as_u64().expect("expires_in"),
        )
    }
}

/// A fresh directory for one test's files (keys, certificates, stores), unique per process
/// and call.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tokenlease-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// mock-oauth2-server signs JWTs for one hour and says `expires_in` 3599 or 3600.
const MOCK_TTL: Duration = Duration::from_secs(3600);

fn mock_source(issuer: &MockIssuer, client_id: &str) -> OAuth2Source {
    OAuth2Source::discover(&issuer.issuer(), client_id, Some(SECRET.into())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_client_credentials_through_a_path_issuer_with_basic_and_post_auth() {
    let Some(issuer) = MockIssuer::new("realms/tl-cc") else {
        return;
    };
    for (client_id, auth) in [
        ("cc-basic", ClientAuth::Basic),
        ("cc-post", ClientAuth::Post),
    ] {
        let manager = manager(
            mock_source(&issuer, client_id)
                .client_auth(auth)
                .scopes(["api.read"]),
        );
        let token = manager.token().await.unwrap().into_arc();
        assert_eq!(manager.token().await.unwrap().generation(), 1);
        assert_fresh_lifetime(&token, MOCK_TTL);
        assert!(jwt_expiry(token.value().expose()).is_some(), "a JWT");
        assert_eq!(token.scopes(), ["api.read"]);
        let introspection = issuer.introspect(token.value()).await;
        assert_eq!(introspection["active"], true, "{introspection}");
        // The subject of a client-credentials token is the client: the right method was used.
        assert_eq!(introspection["sub"], client_id, "{introspection}");
        assert_eq!(introspection["iss"], issuer.issuer(), "{introspection}");
    }
    assert_eq!(issuer.requests("POST", "/token").await, 2);
    // Both sources shared one discovery document, found at the OpenID Connect URL.
    assert_eq!(
        issuer
            .requests("GET", "/.well-known/openid-configuration")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_serves_no_rfc_8414_document_at_the_host_level() {
    let Some(issuer) = MockIssuer::new("rfc8414-probe") else {
        return;
    };
    // Its metadata lives under the issuer only; the RFC 8414 host-level URL is refused
    // (405), and the default mode never needs it.
    let err = manager(
        mock_source(&issuer, "probe").discovery_mode(DiscoveryMode::OAuthAuthorizationServer),
    )
    .token()
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(
        err.message()
            .contains("/.well-known/oauth-authorization-server/rfc8414-probe answered 4"),
        "{err}"
    );
    manager(mock_source(&issuer, "probe"))
        .token()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_password_grant() {
    let Some(issuer) = MockIssuer::new("realms/tl-password") else {
        return;
    };
    let source = mock_source(&issuer, "pw-client").grant(Grant::Password {
        username: "alice".to_owned(),
        password: "wonderland".into(),
    });
    let token = manager(source).token().await.unwrap().into_arc();
    let introspection = issuer.introspect(token.value()).await;
    assert_eq!(introspection["sub"], "alice", "{introspection}");
    // mock-oauth2-server's password grant issues no refresh token.
    assert!(token.refresh_token().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_token_exchange_for_another_audience() {
    let Some(issuer) = MockIssuer::new("realms/tl-exchange") else {
        return;
    };
    let subject = manager(mock_source(&issuer, "front-end"))
        .token()
        .await
        .unwrap()
        .into_arc();
    let source = mock_source(&issuer, "front-end")
        .grant(Grant::TokenExchange {
            subject_token: tokenlease::oauth2::SubjectToken::from(subject.value().clone()),
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".to_owned(),
            requested_token_type: None,
        })
        .audience("api://downstream");
    let exchanged = manager(source).token().await.unwrap().into_arc();
    assert_ne!(exchanged.value().expose(), subject.value().expose());
    assert_fresh_lifetime(&exchanged, MOCK_TTL);
    let introspection = issuer.introspect(exchanged.value()).await;
    assert_eq!(
        introspection["aud"], "[api://downstream]",
        "{introspection}"
    );
    assert_eq!(introspection["sub"], "front-end", "{introspection}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_refresh_token_rotation_of_a_browser_login_is_persisted() {
    let Some(issuer) = MockIssuer::new("realms/tl-rotation") else {
        return;
    };
    // A browser login left tokens in the store (as another process of the app would).
    let (access_token, rt1, expires_in) = issuer.browser_login("app").await;
    let store = Arc::new(MemoryStore::new());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    BlockingStore::save(
        &*store,
        "login",
        &TokenRecord {
            version: TokenRecord::VERSION,
            value: access_token.clone().into(),
            token_type: "Bearer".to_owned(),
            scopes: vec!["openid".to_owned(), "offline_access".to_owned()],
            refresh_token: Some(rt1.clone().into()),
            id_token: None,
            idle: None,
            attributes: Default::default(),
            expires_at_ms: now_ms + expires_in * 1000,
            obtained_at_ms: now_ms,
        },
    )
    .unwrap();
    let stored_refresh_token = || {
        store
            .get("login")
            .and_then(|record| record.refresh_token)
            .map(|token| token.expose().to_owned())
            .expect("a stored refresh token")
    };
    let manager = Manager::builder(mock_source(&issuer, "app"))
        .clock(Arc::new(ManualClock::with_wall(SystemTime::now())))
        .store(store.clone())
        .key("login")
        .build();
    let first = manager.token().await.unwrap().into_arc();
    assert_eq!(
        first.value().expose(),
        access_token,
        "adopted from the store"
    );
    assert_eq!(
        issuer.requests("POST", "/token").await,
        1,
        "the code exchange only"
    );

    // Refresh: mock-oauth2-server (rotateRefreshToken) answers with rt2; the store has it.
    assert!(manager.invalidate(&first));
    let second = manager.token().await.unwrap().into_arc();
    let rt2 = second
        .refresh_token()
        .expect("a rotated refresh token")
        .clone();
    assert_ne!(rt2.expose(), rt1);
    assert_ne!(second.value().expose(), access_token);
    assert_eq!(stored_refresh_token(), rt2.expose());
    // And again, with rt2.
    assert!(manager.invalidate(&second));
    let third = manager.token().await.unwrap().into_arc();
    let rt3 = third.refresh_token().unwrap().clone();
    assert_ne!(rt3.expose(), rt2.expose());
    assert_eq!(stored_refresh_token(), rt3.expose());
    let counters = manager.status().counters;
    assert_eq!((counters.fetches, counters.refreshes), (0, 2));
    assert_eq!(issuer.requests("POST", "/token").await, 3);
    // The token is the user's, not the client's.
    assert_ne!(issuer.introspect(third.value()).await["sub"], "app");

    // Revocation: mock-oauth2-server revokes refresh tokens only; tokenlease skips the
    // access token it answers unsupported_token_type for and revokes the refresh token.
    manager.revoke().await.unwrap();
    assert_eq!(issuer.requests("POST", "/revoke").await, 2);
    assert!(manager.cached().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_revoke_of_a_client_credentials_token() {
    let Some(issuer) = MockIssuer::new("realms/tl-revoke") else {
        return;
    };
    let manager = manager(mock_source(&issuer, "cc"));
    manager.token().await.unwrap();
    // The access token is of a type it does not revoke (RFC 7009 §2.2.1): not an error.
    manager.revoke().await.unwrap();
    assert_eq!(issuer.requests("POST", "/revoke").await, 1);
    assert!(manager.cached().is_none());
    manager.token().await.unwrap();
    assert_eq!(issuer.requests("POST", "/token").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_client_authentication() {
    let Some(issuer) = MockIssuer::new("realms/tl-auth") else {
        return;
    };
    // No client authentication at all: 401 invalid_client → invalid_credentials.
    let public = OAuth2Source::discover(&issuer.issuer(), "public-client", None).unwrap();
    let err = manager(public).token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");
    assert!(
        err.message().contains("answered 401 (invalid_client)"),
        "{err}"
    );
    // mock-oauth2-server does not check client secrets: any secret is accepted. (So a bad
    // secret is tested against oidc-provider above, and in docs/interop.md as a quirk.)
    let source = OAuth2Source::discover(&issuer.issuer(), "cc", Some("any-secret".into())).unwrap();
    manager(source).token().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_sixteen_concurrent_callers_make_one_token_request() {
    let Some(issuer) = MockIssuer::new("realms/tl-flight") else {
        return;
    };
    let manager = manager(mock_source(&issuer, "cc").scopes(["api.read"]));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.token().await.unwrap().generation() })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap(), 1);
    }
    assert_eq!(issuer.requests("POST", "/token").await, 1);
    assert_eq!(
        issuer
            .requests("GET", "/.well-known/openid-configuration")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_a_config_with_a_path_issuer() {
    let Some(issuer) = MockIssuer::new("default") else {
        return;
    };
    let config = serde_json::json!({
        "source": {
            "type": "oauth2",
            "issuer": issuer.issuer(),
            "client_id": "config-client",
            "client_secret": SECRET,
            "client_auth": "post",
            "grant": {"type": "client_credentials"},
            "scopes": ["api.read"]
        }
    })
    .to_string();
    let manager = Manager::from_config(&config).unwrap();
    let token = manager.token().await.unwrap().into_arc();
    assert_eq!(
        issuer.introspect(token.value()).await["sub"],
        "config-client"
    );
}

/// mock-oauth2-server serves only the OpenID Connect form: `"discovery": "openid"` works,
/// `"discovery": "oauth"` (RFC 8414 only) is a configuration error naming the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_oauth2_the_discovery_form_is_chosen_in_the_config() {
    let Some(issuer) = MockIssuer::new("forms") else {
        return;
    };
    let config = |discovery: &str| {
        serde_json::json!({
            "source": {
                "type": "oauth2",
                "issuer": issuer.issuer(),
                "discovery": discovery,
                "client_id": "config-client",
                "client_secret": SECRET,
                "client_auth": "post",
                "grant": {"type": "client_credentials"}
            }
        })
        .to_string()
    };
    let manager = Manager::from_config(&config("openid")).unwrap();
    assert!(manager.token().await.is_ok());
    let manager = Manager::from_config(&config("oauth")).unwrap();
    let err = manager.token().await.map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(
        err.message().contains("oauth-authorization-server"),
        "{err}"
    );
    let err = Manager::from_config(&config("both")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(err.message().contains("discovery"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Interactive logins (authorization code + PKCE) against oidc-provider's public native
// client `tokenlease-app`

const APP_CLIENT: &str = "tokenlease-app";

fn app_source(server: &OidcServer) -> OAuth2Source {
    // OpenID Connect grants offline_access only with prompt=consent (Core §11).
    OAuth2Source::discover(server.issuer(), APP_CLIENT, None)
        .unwrap()
        .scopes(["openid", "offline_access"])
        .authorization_param("prompt", "consent")
}

async fn a_browser_login_with_pkce_gives_a_rotating_refresh_token(mount: Mount) {
    use tokenlease::source::authorization::LoopbackRedirect;
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let source = app_source(&server);
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let redirect_uri = redirect.redirect_uri();
    let request = source.authorization_request(&redirect_uri).await.unwrap();
    let authorization = url::Url::parse(request.url()).unwrap();
    assert_eq!(
        authorization.path(),
        format!("{}/auth", server.mount_path()),
        "the authorization endpoint came from discovery"
    );
    let receiving = tokio::spawn(redirect.receive(Duration::from_secs(30)));
    let back = server.browser_authorize(request.url()).await;
    // The browser's last step: the redirect reaches the app's loopback listener.
    let page = reqwest::get(&back).await.unwrap();
    assert!(page.status().is_success());
    let returned = receiving.await.unwrap().unwrap();
    assert_eq!(returned, back);

    let code = request.code_from_redirect(&returned).unwrap();
    let login = source.exchange_code(&request, &code).await.unwrap();
    assert_eq!(login.token_type, "Bearer");
    let access = login.value.clone();
    let refresh = login.refresh_token.clone().expect("a refresh token");
    assert!(server.is_active(&access).await);
    assert_eq!(server.grants("authorization_code").await, 1);

    // The refresh token rotates; the old one is dead afterwards.
    let refreshed = source.refresh(&refresh).await.unwrap();
    let rotated = refreshed
        .refresh_token
        .clone()
        .expect("a rotated refresh token");
    assert!(rotated.expose() != refresh.expose(), "rotated");
    let reused = source.refresh(&refresh).await.unwrap_err();
    assert_eq!(reused.kind(), ErrorKind::InvalidGrant, "{reused}");

    // A code is redeemed once; replaying it makes the server revoke what it issued
    // (RFC 6749 §4.1.2).
    let again = source.exchange_code(&request, &code).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidGrant, "{again}");
    assert!(!server.is_active(&access).await);
}

async fn a_code_is_refused_with_another_logins_verifier_or_state(mount: Mount) {
    use tokenlease::source::authorization::LoopbackRedirect;
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let source = app_source(&server);
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let redirect_uri = redirect.redirect_uri();
    let request = source.authorization_request(&redirect_uri).await.unwrap();
    let other = source.authorization_request(&redirect_uri).await.unwrap();
    let back = server.browser_authorize(request.url()).await;

    // Another login's state: a forged or crossed redirect.
    let crossed = other.code_from_redirect(&back).unwrap_err();
    assert_eq!(crossed.kind(), ErrorKind::Protocol, "{crossed}");

    // The right state, but redeemed with another login's PKCE verifier: the server
    // refuses (RFC 7636 §4.6).
    let code = request.code_from_redirect(&back).unwrap();
    let wrong_verifier = source.exchange_code(&other, &code).await.unwrap_err();
    assert_eq!(
        wrong_verifier.kind(),
        ErrorKind::InvalidGrant,
        "{wrong_verifier}"
    );
    assert_eq!(server.grants("authorization_code").await, 0);
    drop(redirect);
}

/// A whole browser login (loopback redirect, PKCE): the login result.
async fn log_in(server: &OidcServer, source: &OAuth2Source) -> tokenlease::FetchedToken {
    use tokenlease::source::authorization::LoopbackRedirect;
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let redirect_uri = redirect.redirect_uri();
    let request = source.authorization_request(&redirect_uri).await.unwrap();
    let receiving = tokio::spawn(redirect.receive(Duration::from_secs(30)));
    let back = server.browser_authorize(request.url()).await;
    reqwest::get(&back).await.unwrap();
    let returned = receiving.await.unwrap().unwrap();
    let code = request.code_from_redirect(&returned).unwrap();
    source.exchange_code(&request, &code).await.unwrap()
}

async fn a_user_login_is_refreshed_until_the_server_ends_it_then_login_is_required(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let source = app_source(&server).grant(Grant::UserLogin);
    let store = Arc::new(MemoryStore::new());
    let manager = Manager::builder(source.clone())
        .clock(Arc::new(ManualClock::with_wall(SystemTime::now())))
        .store(store.clone())
        .key("user")
        .build();

    // Nobody logged in yet: login required, and no request was made.
    let before = manager.token().await.unwrap_err();
    assert_eq!(before.kind(), ErrorKind::LoginRequired, "{before}");
    assert_eq!(server.token_requests().await, 0);

    let first = manager
        .login(log_in(&server, &source).await)
        .await
        .unwrap()
        .into_arc();
    assert_eq!(
        manager.token().await.unwrap().generation(),
        first.generation()
    );
    let stored = store.get("user").expect("the login is persisted");
    assert!(stored.refresh_token.is_some(), "with its refresh token");

    // Refreshed with rotation, the rotated refresh token persisted.
    assert!(manager.invalidate(&first));
    let second = manager.token().await.unwrap().into_arc();
    assert_eq!(server.grants("refresh_token").await, 1);
    let rotated = second.refresh_token().unwrap().clone();
    assert!(rotated.expose() != first.refresh_token().unwrap().expose());
    assert!(store.get("user").unwrap().refresh_token.unwrap().expose() == rotated.expose());

    // The server ends the session (an admin, a password change, a session limit).
    let response = reqwest::Client::new()
        .post(server.url("/token/revocation"))
        .form(&[
            ("client_id", APP_CLIENT),
            ("token", rotated.expose()),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert!(manager.invalidate(&second));
    let ended = manager.token().await.unwrap_err();
    assert_eq!(ended.kind(), ErrorKind::LoginRequired, "{ended}");
    assert_eq!(
        manager.status().last_error_kind,
        Some(ErrorKind::LoginRequired)
    );
    let requests = server.token_requests().await;
    // Asked again at once: the same answer, without hammering the server.
    let again = manager.token().await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::LoginRequired);
    assert_eq!(server.token_requests().await, requests);

    // A new login: everything works again, from the new session.
    let relogin = manager
        .login(log_in(&server, &source).await)
        .await
        .unwrap()
        .into_arc();
    let token = manager.token().await.unwrap().into_arc();
    assert_eq!(token.generation(), relogin.generation());
    assert!(server.is_active(token.value()).await);

    // Logout of a public client: both tokens revoked at the server, the store wiped.
    let refresh = token.refresh_token().unwrap().clone();
    assert!(server.is_active(&refresh).await);
    manager.revoke().await.unwrap();
    assert!(
        !server.is_active(token.value()).await,
        "the access token is revoked"
    );
    assert!(
        !server.is_active(&refresh).await,
        "the refresh token is revoked"
    );
    assert!(store.get("user").is_none(), "the store is wiped");
    let after = manager.token().await.unwrap_err();
    assert_eq!(after.kind(), ErrorKind::LoginRequired, "{after}");
}

async fn a_thousand_tasks_at_the_expiry_of_a_user_login_make_one_refresh(mount: Mount) {
    // The server holds each token request for 300 ms so the callers really overlap.
    let Some(server) = OidcServer::start_with(mount, &["--token-delay-ms", "300"]) else {
        return;
    };
    let source = app_source(&server).grant(Grant::UserLogin);
    let clock = Arc::new(ManualClock::with_wall(SystemTime::now()));
    let manager = Manager::builder(source.clone())
        .clock(clock.clone())
        .store(Arc::new(MemoryStore::new()))
        .build();
    let login = manager
        .login(log_in(&server, &source).await)
        .await
        .unwrap()
        .into_arc();
    // Past the access token's expiry: every caller needs the refresh.
    clock.advance(ACCESS_TOKEN_TTL + Duration::from_secs(1));
    let started = std::time::Instant::now();
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.token().await.map(|token| token.generation()) })
        })
        .collect();
    let mut generations = std::collections::BTreeSet::new();
    for caller in callers {
        generations.insert(caller.await.unwrap().unwrap());
    }
    let all_served = started.elapsed();
    assert_eq!(
        generations.len(),
        1,
        "every caller got the one refreshed token"
    );
    assert!(!generations.contains(&login.generation()));
    assert_eq!(
        server.grants("refresh_token").await,
        1,
        "one refresh-token grant"
    );
    let stats = server.stats().await;
    assert!(
        stats["errors"].as_object().unwrap().is_empty(),
        "no refresh token was redeemed twice: {}",
        stats["errors"]
    );
    eprintln!(
        "BENCH user login at expiry: 1000 callers -> {} refresh_token grant(s), {} token \
         endpoint errors, all served {:.0} ms after the first call (the server holds the \
         refresh 300 ms)",
        server.grants("refresh_token").await,
        stats["errors"].as_object().unwrap().len(),
        all_served.as_secs_f64() * 1000.0
    );
}

fn user_login_config(server: &OidcServer, client_id: &str, store: &str) -> String {
    serde_json::json!({
        "source": {
            "type": "oauth2",
            "issuer": server.issuer(),
            "client_id": client_id,
            "grant": {"type": "user_login"},
            "scopes": ["openid", "offline_access"],
            "authorization_params": {"prompt": "consent"},
        },
        "store": serde_json::from_str::<Value>(store).unwrap(),
    })
    .to_string()
}

/// What every binding's login test does, in Rust: a login through the manager's own
/// helpers, a refresh with rotation, the user removing the app's access (login required
/// for every caller, once, nothing hangs), and a new login.
async fn a_manager_login_through_the_browser_until_the_user_removes_access(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let manager = Manager::from_config(&user_login_config(
        &server,
        APP_CLIENT,
        r#"{"type": "memory"}"#,
    ))
    .unwrap();
    let redirect_uri = "http://127.0.0.1:49152/callback";
    let request = manager.begin_login(redirect_uri).await.unwrap();
    let back = server.browser_authorize(request.url()).await;
    let first = manager
        .complete_login(&request, &back)
        .await
        .unwrap()
        .into_arc();
    assert!(server.is_active(first.value()).await);
    // A redirect is used once: the same one again is refused by the server.
    let replayed = manager.complete_login(&request, &back).await.unwrap_err();
    assert_eq!(replayed.kind(), ErrorKind::InvalidGrant, "{replayed}");

    let first = manager
        .login(log_in(&server, &app_source(&server)).await)
        .await
        .unwrap()
        .into_arc();
    assert!(manager.invalidate(&first));
    let second = manager.token().await.unwrap().into_arc();
    assert!(second.refresh_token().unwrap().expose() != first.refresh_token().unwrap().expose());

    let refused_before = server.stats().await["errors"]["invalid_grant"]
        .as_u64()
        .unwrap_or(0);
    server.revoke_all_grants().await;
    assert!(manager.invalidate(&second));
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.token().await.map(|_| ()) })
        })
        .collect();
    for caller in callers {
        let err = tokio::time::timeout(Duration::from_secs(30), caller)
            .await
            .expect("no caller hangs")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LoginRequired, "{err}");
    }
    assert_eq!(
        server.stats().await["errors"]["invalid_grant"]
            .as_u64()
            .unwrap(),
        refused_before + 1,
        "one refresh attempt for 64 callers"
    );

    let request = manager.begin_login(redirect_uri).await.unwrap();
    let back = server.browser_authorize(request.url()).await;
    let again = manager
        .complete_login(&request, &back)
        .await
        .unwrap()
        .into_arc();
    assert_eq!(
        manager.token().await.unwrap().generation(),
        again.generation()
    );
}

/// Waits (at most 60 s) until the server's error counter `code` reaches `at_least`.
async fn until_server_answered(server: &OidcServer, code: &str, at_least: u64) {
    for _ in 0..600 {
        if server.stats().await["errors"][code].as_u64().unwrap_or(0) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server never answered {code}: {}", server.stats().await);
}

async fn a_device_login_waits_through_pending_and_slow_down_until_approved(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let manager = Manager::from_config(&user_login_config(
        &server,
        APP_CLIENT,
        r#"{"type": "memory"}"#,
    ))
    .unwrap();
    let device = manager.start_device_login().await.unwrap();
    assert_eq!(
        device.interval(),
        Duration::from_secs(1),
        "the server's interval"
    );
    assert!(device
        .verification_uri()
        .starts_with(&format!("{}/device", server.issuer())));
    assert!(device
        .verification_uri_complete()
        .unwrap()
        .contains(device.user_code()));
    let waiting = {
        let manager = manager.clone();
        let device = device.clone();
        tokio::spawn(async move {
            manager
                .complete_device_login(&device)
                .await
                .map(TokenRef::into_arc)
        })
    };
    // The server paces polls at 2 s although it advertises 1 s: the second poll is told to
    // slow down, and the client then waits 5 s longer.
    until_server_answered(&server, "authorization_pending", 1).await;
    until_server_answered(&server, "slow_down", 1).await;
    server.browser_device(device.user_code(), true).await;
    let token = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the device login ends")
        .unwrap()
        .unwrap();
    assert!(server.is_active(token.value()).await);
    assert!(
        token.refresh_token().is_some(),
        "the device login seeds a refresh token"
    );
    let stats = server.stats().await;
    assert_eq!(
        stats["errors"]["slow_down"], 1,
        "after slow_down the client polls slower: {stats}"
    );
    assert_eq!(
        stats["grants"]["urn:ietf:params:oauth:grant-type:device_code"],
        1
    );
    assert_eq!(
        manager.token().await.unwrap().generation(),
        token.generation()
    );
}

async fn a_denied_device_login_is_cancelled(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let manager = Manager::from_config(&user_login_config(
        &server,
        APP_CLIENT,
        r#"{"type": "memory"}"#,
    ))
    .unwrap();
    let device = manager.start_device_login().await.unwrap();
    server.browser_device(device.user_code(), false).await;
    let denied = tokio::time::timeout(
        Duration::from_secs(60),
        manager.complete_device_login(&device),
    )
    .await
    .expect("the device login ends")
    .unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::Cancelled, "{denied}");
    assert!(denied.to_string().contains("denied"), "{denied}");
    let after = manager.token().await.unwrap_err();
    assert_eq!(after.kind(), ErrorKind::LoginRequired);
}

async fn a_device_code_nobody_approves_expires_into_login_required(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    // tokenlease-tv-brief's device codes live 3 s.
    let manager = Manager::from_config(&user_login_config(
        &server,
        "tokenlease-tv-brief",
        r#"{"type": "memory"}"#,
    ))
    .unwrap();
    let device = manager.start_device_login().await.unwrap();
    assert_eq!(device.expires_in(), Duration::from_secs(3));
    let expired = tokio::time::timeout(
        Duration::from_secs(60),
        manager.complete_device_login(&device),
    )
    .await
    .expect("the device login ends")
    .unwrap_err();
    assert_eq!(expired.kind(), ErrorKind::LoginRequired, "{expired}");
    assert!(expired.to_string().contains("expired"), "{expired}");
}

async fn a_device_login_can_be_cancelled_while_it_waits(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let manager = Manager::from_config(&user_login_config(
        &server,
        APP_CLIENT,
        r#"{"type": "memory"}"#,
    ))
    .unwrap();
    let device = manager.start_device_login().await.unwrap();
    let waiting = {
        let manager = manager.clone();
        let device = device.clone();
        tokio::spawn(async move { manager.complete_device_login(&device).await.map(|_| ()) })
    };
    until_server_answered(&server, "authorization_pending", 1).await;
    device.cancel();
    let cancelled = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("cancel ends the wait at once")
        .unwrap()
        .unwrap_err();
    assert_eq!(cancelled.kind(), ErrorKind::Cancelled, "{cancelled}");
}

async fn a_seed_never_rolls_back_a_newer_stored_login(mount: Mount) {
    let Some(server) = OidcServer::start(mount) else {
        return;
    };
    let dir = scratch_dir("seed");
    let store = serde_json::json!({
        "type": "file",
        "dir": dir,
        "encryption_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    })
    .to_string();
    let config = user_login_config(&server, APP_CLIENT, &store);
    let source = app_source(&server);

    // First run: the app seeds the manager with the login result it got (from AppAuth,
    // say) and keeps that result in its own preferences.
    let seeded_at = SystemTime::now();
    let login = log_in(&server, &source).await;
    let kept = login.clone();
    let manager = Manager::from_config(&config).unwrap();
    let first = manager
        .seed(login, Some(seeded_at))
        .await
        .unwrap()
        .into_arc();
    assert!(manager.invalidate(&first));
    let rotated = manager.token().await.unwrap().into_arc();
    assert_eq!(server.grants("refresh_token").await, 1);
    manager.close();

    // Next run: seeding again with the kept (older) result must not roll back the rotated
    // tokens in the encrypted store: their refresh token is the live one, the kept one is
    // dead (redeeming it would even revoke the whole family).
    let requests = server.token_requests().await;
    let restarted = Manager::from_config(&config).unwrap();
    let served = restarted
        .seed(kept.clone(), Some(seeded_at))
        .await
        .unwrap()
        .into_arc();
    assert!(
        served.value().expose() == rotated.value().expose(),
        "the stored token is served"
    );
    assert_eq!(
        server.token_requests().await,
        requests,
        "0 logins, 0 refreshes"
    );
    assert!(restarted.invalidate(&served));
    restarted.token().await.unwrap();
    assert_eq!(
        server.grants("refresh_token").await,
        2,
        "refreshed with the rotated token"
    );
    assert!(
        server.stats().await["errors"]
            .get("invalid_grant")
            .is_none(),
        "the dead kept refresh token was never sent"
    );

    // Without an issue time, any stored token wins as well.
    let third = Manager::from_config(&config).unwrap();
    let served = third.seed(kept, None).await.unwrap().into_arc();
    assert!(served.value().expose() != first.value().expose());

    // A newer login (issued after the stored one) does replace it.
    let newer = log_in(&server, &source).await;
    let newer_value = newer.value.clone();
    let replaced = third
        .seed(newer, Some(SystemTime::now()))
        .await
        .unwrap()
        .into_arc();
    assert!(replaced.value().expose() == newer_value.expose());
    let _ = std::fs::remove_dir_all(&dir);
}

mod key_credentials {
    use super::*;

    /// Writes a secret file as its owner only may read it (the key file check wants that).
    fn write_secret(path: &std::path::Path, content: impl AsRef<[u8]>) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        file.write_all(content.as_ref()).unwrap();
    }

    fn pkjwt_config(
        server: &OidcServer,
        client_id: &str,
        alg: &str,
        key: &std::path::Path,
    ) -> String {
        serde_json::json!({
            "source": {
                "type": "oauth2",
                "issuer": server.issuer(),
                "client_id": client_id,
                "scopes": ["api:read"],
                "client_auth": {"private_key_jwt": {
                    "key": {"file": key}, "alg": alg,
                    "kid": if alg == "RS256" { "pkjwt-rs" } else { "pkjwt-es" }
                }},
            }
        })
        .to_string()
    }

    /// private_key_jwt (RS256 and ES256) and client_secret_jwt against oidc-provider, with a
    /// fresh jti per request (the server refuses a replayed assertion).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signed_client_assertions_authenticate_at_oidc_provider() {
        let keys = scratch_dir("client-keys");
        let keys_arg = keys.to_str().unwrap().to_owned();
        let Some(server) =
            OidcServer::start_with(Mount::Path, &["--client-keys-out", keys_arg.as_str()])
        else {
            return;
        };
        for (client_id, alg) in [
            ("tokenlease-pkjwt", "RS256"),
            ("tokenlease-pkjwt-es", "ES256"),
        ] {
            let key = keys.join(format!("{client_id}.pem"));
            let manager =
                Manager::from_config(&pkjwt_config(&server, client_id, alg, &key)).unwrap();
            let first = manager.token().await.unwrap().into_arc();
            assert!(server.is_active(first.value()).await, "{client_id}");
            // A second request signs a new assertion (a reused jti would be refused).
            assert!(manager.invalidate(&first));
            let second = manager.token().await.unwrap();
            assert!(second.value().expose() != first.value().expose());
        }
        assert_eq!(server.grants("client_credentials").await, 4);

        // client_secret_jwt: HS256 with the client secret.
        let manager = Manager::from_config(
            &serde_json::json!({"source": {"type": "oauth2", "issuer": server.issuer(),
                "client_id": "tokenlease-secretjwt",
                "client_secret": "tokenlease-client-secret-jwt-0123456789-abcdefghij",
                "client_auth": "client_secret_jwt", "scopes": ["api:read"]}})
            .to_string(),
        )
        .unwrap();
        manager.token().await.unwrap();

        // The wrong key (the ES client's key for the RS client): client authentication fails.
        let wrong = Manager::from_config(&pkjwt_config(
            &server,
            "tokenlease-pkjwt",
            "ES256",
            &keys.join("tokenlease-pkjwt-es.pem"),
        ))
        .unwrap();
        let err = wrong.token().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");

        // The server refuses an assertion used twice: a library reusing jti would fail.
        let key = tokenlease::source::assertion::SigningKey::from_pem(
            tokenlease::source::assertion::SigningAlgorithm::Rs256,
            &SecretString::from(
                std::fs::read_to_string(keys.join("tokenlease-pkjwt.pem")).unwrap(),
            ),
            "test",
        )
        .unwrap()
        .with_kid("pkjwt-rs");
        let token_url = server.url("/token");
        let assertion =
            tokenlease::source::assertion::client_assertion(&key, "tokenlease-pkjwt", &token_url)
                .unwrap();
        let post = || {
            reqwest::Client::new()
                .post(&token_url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "tokenlease-pkjwt"),
                    (
                        "client_assertion_type",
                        tokenlease::source::assertion::CLIENT_ASSERTION_TYPE,
                    ),
                    ("client_assertion", assertion.expose()),
                ])
                .send()
        };
        assert!(post().await.unwrap().status().is_success());
        assert_eq!(
            post().await.unwrap().status(),
            401,
            "a replayed jti is refused"
        );

        // A platform-issued assertion in a file (Azure workload identity), read before every
        // request: once used it is refused, a rewritten file works again.
        let assertion_file = keys.join("federated-token");
        let write_assertion = || {
            let jwt = tokenlease::source::assertion::client_assertion(
                &key,
                "tokenlease-pkjwt",
                &token_url,
            )
            .unwrap();
            std::fs::write(&assertion_file, jwt.expose()).unwrap();
        };
        let federated_config = serde_json::json!({"source": {"type": "oauth2",
            "issuer": server.issuer(), "client_id": "tokenlease-pkjwt", "scopes": ["api:read"],
            "client_auth": {"client_assertion_file": assertion_file}}})
        .to_string();
        write_assertion();
        let federated = Manager::from_config(&federated_config).unwrap();
        let first = federated.token().await.unwrap().into_arc();
        assert!(federated.invalidate(&first));
        let replayed = federated.token().await.unwrap_err();
        assert_eq!(replayed.kind(), ErrorKind::InvalidCredentials, "{replayed}");
        write_assertion();
        let again = Manager::from_config(&federated_config).unwrap();
        again.token().await.unwrap();
        let _ = std::fs::remove_dir_all(keys);
    }

    /// A Google-style service account key file, made at test time with openssl, against the
    /// test token server's JWT-bearer grant (which verifies the RS256 signature).
    #[test]
    fn a_service_account_key_file_gets_tokens_with_the_jwt_bearer_grant() {
        let dir = scratch_dir("service-account");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let private = dir.join("key.pem");
        let public = dir.join("key.pub.pem");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private.to_str().unwrap(),
        ]);
        openssl(&[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        let email = "sync@project.iam.gserviceaccount.com";
        let server = tokenlease_test_server::TestServer::start_background(
            tokenlease_test_server::ServerConfig {
                jwt_bearer_keys: vec![(
                    email.to_owned(),
                    std::fs::read_to_string(&public).unwrap(),
                )],
                ..Default::default()
            },
        )
        .unwrap();
        let key_file = dir.join("service-account.json");
        write_secret(
            &key_file,
            serde_json::json!({
                "type": "service_account",
                "project_id": "project",
                "private_key_id": "key-1",
                "private_key": std::fs::read_to_string(&private).unwrap(),
                "client_email": email,
                "client_id": "1234567890",
                "token_uri": server.token_url(),
            })
            .to_string(),
        );
        let manager = Manager::from_config(
            &serde_json::json!({"source": {"type": "service_account",
                "key_file": {"file": key_file}, "scopes": ["batch"]}})
            .to_string(),
        )
        .unwrap();
        let token = manager.token_blocking().unwrap().into_arc();
        assert_eq!(server.stats().jwt_bearer_grants, 1);
        assert!(manager.invalidate(&token));
        manager.token_blocking().unwrap();
        assert_eq!(
            server.stats().jwt_bearer_grants,
            2,
            "a fresh assertion per request"
        );
        assert!(!format!("{manager:?}").contains("PRIVATE KEY"));

        // Another key for the same account: refused by the server's signature check.
        let other = dir.join("other.pem");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            other.to_str().unwrap(),
        ]);
        let mut file: Value =
            serde_json::from_str(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
        file["private_key"] = std::fs::read_to_string(&other).unwrap().into();
        write_secret(&key_file, file.to_string());
        let forged = Manager::from_config(
            &serde_json::json!({"source": {"type": "service_account",
                "key_file": {"file": key_file}, "scopes": ["batch"]}})
            .to_string(),
        )
        .unwrap();
        let err = forged.token_blocking().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidGrant, "{err}");

        // A file that is not a service account key: a configuration error naming the field.
        write_secret(&key_file, r#"{"type": "authorized_user"}"#);
        let err = Manager::from_config(
            &serde_json::json!({"source": {"type": "service_account", "key_file": {"file": key_file}}})
                .to_string(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.to_string().contains("source.key_file"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

mod dpop {
    use super::*;

    /// DPoP-bound tokens from oidc-provider, which demands a server nonce everywhere: the
    /// token request is sent once more with the nonce, the token is bound to the manager's
    /// key (`cnf.jkt`), and API calls carry a proof with the token's hash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dpop_bound_tokens_follow_server_nonces_and_prove_possession_at_the_api() {
        let Some(server) = OidcServer::start(Mount::Path) else {
            return;
        };
        let manager = Manager::from_config(
            &serde_json::json!({"source": {"type": "oauth2", "issuer": server.issuer(),
                "client_id": "tokenlease-dpop", "client_secret": SECRET,
                "scopes": ["api:read"], "dpop": true}})
            .to_string(),
        )
        .unwrap();
        let token = manager.token().await.unwrap().into_arc();
        assert_eq!(token.token_type(), "DPoP", "a bound token is never Bearer");
        let introspected = server.introspect(token.value()).await;
        assert_eq!(introspected["active"], true, "{introspected}");
        assert!(
            introspected["cnf"]["jkt"]
                .as_str()
                .is_some_and(|jkt| !jkt.is_empty()),
            "bound to the key: {introspected}"
        );
        assert_eq!(
            server.stats().await["errors"]["use_dpop_nonce"],
            1,
            "one nonce challenge, then the token"
        );
        // The same client without DPoP is refused: the server requires it.
        let plain = Manager::from_config(
            &serde_json::json!({"source": {"type": "oauth2", "issuer": server.issuer(),
                "client_id": "tokenlease-dpop", "client_secret": SECRET, "scopes": ["api:read"]}})
            .to_string(),
        )
        .unwrap();
        assert!(plain.token().await.is_err());

        // A user login bound with DPoP, then the userinfo API through the authorized client:
        // `Authorization: DPoP <token>` plus a proof with `ath`.
        let config = serde_json::json!({"source": {"type": "oauth2", "issuer": server.issuer(),
            "client_id": APP_CLIENT, "grant": {"type": "user_login"},
            "scopes": ["openid", "offline_access"],
            "authorization_params": {"prompt": "consent"}, "dpop": true}})
        .to_string();
        let client = AuthorizedClient::from_config(&config).unwrap();
        let request = client
            .manager()
            .begin_login("http://127.0.0.1:49152/callback")
            .await
            .unwrap();
        let back = server.browser_authorize(request.url()).await;
        let login = client
            .manager()
            .complete_login(&request, &back)
            .await
            .unwrap();
        assert_eq!(login.token_type(), "DPoP");
        let me = client
            .request(reqwest::Method::GET, &server.url("/me"))
            .build()
            .unwrap();
        let response = client.execute(me).await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["sub"], "alice");
        // Without the proof, the bound token is refused.
        let bare = reqwest::Client::new()
            .get(server.url("/me"))
            .header("Authorization", format!("DPoP {}", login.value().expose()))
            .send()
            .await
            .unwrap();
        assert!(bare.status().is_client_error(), "{}", bare.status());
        // The refresh stays bound.
        assert!(client.manager().invalidate(&login));
        let refreshed = client.manager().token().await.unwrap().into_arc();
        assert_eq!(refreshed.token_type(), "DPoP");
        // The token is revoked at the server (oidc-provider ends the grant with it): userinfo
        // answers 401 with a DPoP `invalid_token` challenge, which the authorized client
        // recognises as a rejection: it discards the token and, the grant being gone, the
        // caller learns that the user must log in again (not a bare 401).
        let revoked = reqwest::Client::new()
            .post(server.url("/token/revocation"))
            .form(&[
                ("client_id", APP_CLIENT),
                ("token", refreshed.value().expose()),
                ("token_type_hint", "access_token"),
            ])
            .send()
            .await
            .unwrap();
        assert!(revoked.status().is_success());
        let me = client
            .request(reqwest::Method::GET, &server.url("/me"))
            .build()
            .unwrap();
        let err = client.execute(me).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LoginRequired, "{err}");
        assert!(
            client.manager().cached().is_none(),
            "the rejected token was discarded"
        );
    }
}

mod mutual_tls {
    use super::*;

    /// A CA, a server certificate for 127.0.0.1, a CA-signed client certificate
    /// (`CN=tokenlease-mtls`) and a self-signed one, all made by openssl for this test.
    fn certificates(dir: &std::path::Path) {
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // Extensions make these v3 certificates (webpki accepts no other version).
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=tokenlease test CA",
        ]);
        for (name, subject) in [
            ("server", "/CN=127.0.0.1"),
            ("client", "/CN=tokenlease-mtls"),
        ] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ]);
            let csr = format!("{name}.csr");
            let out = format!("{name}.pem");
            let mut args = vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &out,
                "-days",
                "1",
            ];
            let extensions = format!("{name}.ext");
            args.extend(["-extfile", &extensions]);
            openssl(&args);
        }
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
            "-days",
            "1",
            "-subj",
            "/CN=self-signed",
        ]);
        // The client's key and subject again, in a certificate that expired in 2020.
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\n\
             certificate = ca.pem\nprivate_key = ca.key\nserial = serial\ndefault_md = sha256\n\
             policy = any\nx509_extensions = ext\n[any]\ncommonName = supplied\n\
             [ext]\nextendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "01\n").unwrap();
        openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-in",
            "client.csr",
            "-out",
            "expired.pem",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
        ]);
        for key in ["client.key", "self.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
    }

    fn config(
        server: &OidcServer,
        dir: &std::path::Path,
        client_id: &str,
        cert: &str,
        key: &str,
    ) -> String {
        serde_json::json!({"source": {"type": "oauth2", "issuer": server.issuer(),
            "client_id": client_id, "scopes": ["api:read"], "ca_file": dir.join("ca.pem"),
            "client_auth": {"tls_client_auth": {
                "certificate": dir.join(cert), "key": {"file": dir.join(key)}}}}})
        .to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_certificates_authenticate_and_bind_tokens_at_oidc_provider() {
        let dir = scratch_dir("mtls");
        certificates(&dir);
        let arg = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let (cert, key, ca, own) = (
            arg("server.pem"),
            arg("server.key"),
            arg("ca.pem"),
            arg("self.pem"),
        );
        let Some(server) = OidcServer::start_with(
            Mount::Root,
            &[
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-ca",
                &ca,
                "--self-signed-client-cert",
                &own,
            ],
        ) else {
            return;
        };
        assert!(server.issuer().starts_with("https://"));
        let trusting = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap())
                    .unwrap(),
            )
            .build()
            .unwrap();
        let introspect = |token: SecretString| {
            let trusting = trusting.clone();
            let url = server.url("/token/introspection");
            async move {
                trusting
                    .post(url)
                    .basic_auth(BASIC_CLIENT, Some(SECRET))
                    .form(&[("token", token.expose())])
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };

        // tls_client_auth: a certificate from the CA with the registered subject.
        let manager = Manager::from_config(&config(
            &server,
            &dir,
            "tokenlease-mtls",
            "client.pem",
            "client.key",
        ))
        .unwrap();
        let token = manager.token().await.unwrap().into_arc();
        let introspected = introspect(token.value().clone()).await;
        assert_eq!(introspected["active"], true, "{introspected}");
        assert!(
            introspected["cnf"]["x5t#S256"]
                .as_str()
                .is_some_and(|thumb| !thumb.is_empty()),
            "the token is bound to the certificate: {introspected}"
        );
        // self_signed_tls_client_auth: the registered self-signed certificate.
        let manager = Manager::from_config(&config(
            &server,
            &dir,
            "tokenlease-mtls-self",
            "self.pem",
            "self.key",
        ))
        .unwrap();
        manager.token().await.unwrap();
        // The wrong certificate for a client: client authentication fails.
        let wrong = Manager::from_config(&config(
            &server,
            &dir,
            "tokenlease-mtls",
            "self.pem",
            "self.key",
        ))
        .unwrap();
        let err = wrong.token().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");
        // An expired certificate (right CA, right subject, right key) is refused.
        let expired = Manager::from_config(&config(
            &server,
            &dir,
            "tokenlease-mtls",
            "expired.pem",
            "client.key",
        ))
        .unwrap();
        let err = expired.token().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");
        // The authorized client presents the same certificate and trusts the same CA.
        let client = AuthorizedClient::from_config(&config(
            &server,
            &dir,
            "tokenlease-mtls",
            "client.pem",
            "client.key",
        ))
        .unwrap();
        let request = client
            .request(
                reqwest::Method::GET,
                &server.url("/.well-known/openid-configuration"),
            )
            .build()
            .unwrap();
        assert_eq!(client.execute(request).await.unwrap().status(), 200);
        // A key file others may read is refused before anything is sent.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.join("client.key"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
        }
        let err = Manager::from_config(&config(
            &server,
            &dir,
            "tokenlease-mtls",
            "client.pem",
            "client.key",
        ))
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Entra ID names a certificate credential by `x5t#S256`: the SHA-256 of the certificate's
/// DER, here checked against openssl's own fingerprint of a certificate made for the test.
#[test]
fn a_certificate_names_the_assertion_key_by_its_sha256_thumbprint() {
    use base64::Engine as _;
    let dir = scratch_dir("x5t");
    let out = Command::new("openssl")
        .current_dir(&dir)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem",
        ])
        .args(["-out", "c.pem", "-days", "1", "-subj", "/CN=app"])
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let fingerprint = Command::new("openssl")
        .current_dir(&dir)
        .args(["x509", "-in", "c.pem", "-noout", "-fingerprint", "-sha256"])
        .output()
        .unwrap();
    let hex: String = String::from_utf8_lossy(&fingerprint.stdout)
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .replace(':', "");
    let digest: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let key = tokenlease::source::assertion::SigningKey::from_pem(
        tokenlease::source::assertion::SigningAlgorithm::Rs256,
        &SecretString::from(std::fs::read_to_string(dir.join("k.pem")).unwrap()),
        "test",
    )
    .unwrap()
    .with_certificate_pem(&std::fs::read_to_string(dir.join("c.pem")).unwrap(), "test")
    .unwrap();
    let jwt =
        tokenlease::source::assertion::client_assertion(&key, "app", "https://idp/token").unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.expose().split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header["x5t#S256"],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    );
    let _ = std::fs::remove_dir_all(dir);
}
