//! The real systems tokenlease exists for, end to end over loopback against the test
//! server. The manager runs on a manual clock and the server's clock is advanced in step,
//! so an hour of a batch job takes well under a second and nothing sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokenlease::client::{AuthorizedClient, Authorizer};
use tokenlease::clock::ManualClock;
use tokenlease::config::ManagerConfig;
use tokenlease::{ErrorKind, Manager, MemoryStore, ResponseVerdict, Store};
use tokenlease_test_server::{Control, Outage, OutageMode, RateLimit, ServerConfig, TestServer};

const MINUTE: Duration = Duration::from_secs(60);

struct Sim {
    server: TestServer,
    clock: ManualClock,
    runtime: tokio::runtime::Runtime,
}

impl Sim {
    fn new(config: ServerConfig) -> Self {
        Self::with_client_skew(config, 0)
    }

    /// The client's wall clock is `skew_s` seconds off the server's.
    fn with_client_skew(config: ServerConfig, skew_s: i64) -> Self {
        let server = TestServer::start_background(config).expect("server");
        let server_now = server.server_time();
        let wall = if skew_s >= 0 {
            server_now + Duration::from_secs(skew_s as u64)
        } else {
            server_now - Duration::from_secs(skew_s.unsigned_abs())
        };
        Self {
            server,
            clock: ManualClock::with_wall(wall),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn client(&self, config_json: &str, store: Arc<dyn Store>) -> AuthorizedClient {
        let config = ManagerConfig::from_json(config_json).expect("config");
        let built = config.source.build().expect("source");
        let authorizer: Arc<dyn Authorizer> = built.authorizer;
        let manager = Manager::builder_from_arc(built.source)
            .clock(Arc::new(self.clock.clone()))
            .policy(policy())
            .store(store)
            .key(built.default_key)
            .build();
        AuthorizedClient::new(manager, authorizer).unwrap()
    }

    /// Both clocks move (the server's first, so work the move starts meets a server
    /// already there); then background work the move triggered is allowed to finish.
    fn advance(&self, by: Duration, manager: &Manager) {
        self.server.advance(by);
        tokenlease::testing::advance_and_settle(
            &self.clock,
            by,
            manager,
            tokenlease::testing::DEFAULT_SETTLE_TIMEOUT,
        )
        .expect("background work settled");
    }

    fn call(&self, client: &AuthorizedClient, url: &str, body: String) -> tokenlease::Result<u16> {
        self.call_with(client, reqwest::Method::POST, url, body)
            .map(|(status, _)| status)
    }

    /// Any method; the status and the body.
    fn call_with(
        &self,
        client: &AuthorizedClient,
        method: reqwest::Method,
        url: &str,
        body: String,
    ) -> tokenlease::Result<(u16, String)> {
        let request = client.request(method, url).body(body).build().unwrap();
        let response = self.runtime.block_on(client.execute(request))?;
        let status = response.status().as_u16();
        let text = self.runtime.block_on(response.text()).unwrap_or_default();
        Ok((status, text))
    }
}

fn batch_server() -> ServerConfig {
    ServerConfig {
        default_ttl: Duration::from_secs(3600),
        scope_ttls: [("batch".to_owned(), Duration::from_secs(900))].into(),
        access_idle_timeout: Some(Duration::from_secs(900)),
        access_absolute_timeout: Some(Duration::from_secs(3600)),
        refresh_for_client_credentials: true,
        ..ServerConfig::default()
    }
}

fn batch_config(server: &TestServer) -> String {
    format!(
        r#"{{"source": {{"type": "oauth2", "token_url": "{}", "client_id": "demo-client",
            "client_secret": "demo-secret", "grant": {{"type": "client_credentials"}},
            "scopes": ["batch"], "revocation_url": "{}"}}}}"#,
        server.token_url(),
        server.revoke_url()
    )
}

/// 500 records over ~58 simulated minutes against a server whose scope TTL (15 min) and
/// sliding idle timeout override its 60-minute default TTL — the "batch job dies at
/// minute 15" report — killed halfway and resumed from saved progress.
#[test]
fn batch_sync_survives_scope_ttl_idle_timeout_and_a_restart() {
    let sim = Sim::new(batch_server());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let url = sim.server.resource_url();
    let mut progress = 0usize; // the job's saved checkpoint
    let run = |client: &AuthorizedClient, until: usize, progress: &mut usize| {
        while *progress < until {
            match sim.call(client, &url, format!("{{\"record\": {progress}}}")) {
                Ok(200) => *progress += 1,
                other => panic!("record {progress} failed: {other:?}"),
            }
            sim.advance(Duration::from_secs(7), client.manager());
        }
    };
    let first_run = sim.client(&batch_config(&sim.server), store.clone());
    run(&first_run, 250, &mut progress);
    drop(first_run); // kill -9 stand-in: nothing is flushed on the way out
    let stats_at_kill = sim.server.stats();
    let second_run = sim.client(&batch_config(&sim.server), store.clone());
    run(&second_run, 500, &mut progress);

    let stats = sim.server.stats();
    assert_eq!(progress, 500, "every record done, none failed");
    assert_eq!(
        stats.resource_requests, 500,
        "no record sent twice: {stats:?}"
    );
    assert_eq!(stats.resource_rejections, 0);
    // One login for the whole job (the restart adopted the stored token) and a refresh
    // every ~10 minutes of a 15-minute token: at minutes 10, 20, 30, 40 and 50.
    assert_eq!(
        stats.grants.get("client_credentials"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(stats.grants.get("refresh_token"), Some(&5), "{stats:?}");
    assert_eq!(stats_at_kill.token_requests + 3, stats.token_requests);
    assert_eq!(second_run.manager().status().counters.store_loads, 1);
}

fn session_config(server: &TestServer, sliding: bool) -> String {
    let header = if sliding {
        r#""expires_in": {"header": "X-Token-Expires-In"}, "sliding": true,
           "absolute_deadline": {"json_pointer": "/session/absolute_expires_at"},"#
    } else {
        ""
    };
    format!(
        r#"{{"source": {{"type": "session_login",
            "credentials": {{"username": "alice", "password": "wonderland"}},
            "session": {{
              "login": {{"url": "{login}", "json": {{"username": "{{{{username}}}}", "password": "{{{{password}}}}"}}}},
              "token": {{"json_pointer": "/session/id"}},
              {header}
              "lifetime_s": 900,
              "send": {{"header": "vmware-api-session-id"}},
              "keep_alive": {{"url": "{keepalive}", "authenticated": true}},
              "logout": {{"url": "{logout}", "authenticated": true}},
              "expired": {{"statuses": [401], "body_contains": ["INVALID_SESSION", "Token Expired"]}}
            }}}}}}"#,
        login = sim_url(server, "/session/login"),
        keepalive = sim_url(server, "/session/keepalive"),
        logout = sim_url(server, "/session/logout"),
    )
}

fn sim_url(server: &TestServer, path: &str) -> String {
    format!("{}{path}", server.url())
}

#[test]
fn an_idle_session_is_kept_alive_every_ten_minutes_and_relogged_before_its_absolute_timeout() {
    let sim = Sim::new(ServerConfig::default());
    let client = sim.client(
        &session_config(&sim.server, true),
        Arc::new(MemoryStore::new()),
    );
    assert_eq!(
        sim.call(&client, &sim.server.session_resource_url(), String::new())
            .unwrap(),
        200
    );
    for _ in 0..50 {
        sim.advance(MINUTE, client.manager());
    }
    let stats = sim.server.stats();
    // Keep-alives at minutes 10, 20, 30, 40; the absolute deadline (60 min) forces a new
    // login at minute 45 (its advisory window is 15 minutes).
    assert_eq!(stats.session_keepalives, 4, "{stats:?}");
    assert_eq!(stats.session_logins, 2, "{stats:?}");
    assert_eq!(
        sim.call(&client, &sim.server.session_resource_url(), String::new())
            .unwrap(),
        200
    );
    assert_eq!(sim.server.stats().session_rejections, 0);
}

#[test]
fn a_busy_session_logs_in_once_and_retries_an_expiry_fault_once() {
    let sim = Sim::new(ServerConfig::default());
    let client = sim.client(
        &session_config(&sim.server, true),
        Arc::new(MemoryStore::new()),
    );
    let url = sim.server.session_resource_url();
    for _ in 0..100 {
        assert_eq!(sim.call(&client, &url, String::new()).unwrap(), 200);
        sim.advance(Duration::from_secs(18), client.manager());
    }
    let stats = sim.server.stats();
    assert_eq!(stats.session_logins, 1, "never a login per call: {stats:?}");
    assert_eq!(
        stats.session_keepalives, 0,
        "real use keeps it alive: {stats:?}"
    );
    // The server drops every session; the "Token Expired" fault is retried once.
    sim.server.control(Control {
        revoke_all: Some(true),
        ..Control::default()
    });
    assert_eq!(sim.call(&client, &url, String::new()).unwrap(), 200);
    let stats = sim.server.stats();
    assert_eq!(stats.session_logins, 2);
    assert_eq!(stats.session_rejections, 1);
}

#[test]
fn a_documented_minimum_lifetime_refreshes_on_the_client_timer_at_minute_ten() {
    let sim = Sim::new(ServerConfig::default());
    let client = sim.client(
        &session_config(&sim.server, false),
        Arc::new(MemoryStore::new()),
    );
    let url = sim.server.session_resource_url();
    for _ in 0..60 {
        assert_eq!(sim.call(&client, &url, String::new()).unwrap(), 200);
        sim.advance(Duration::from_secs(30), client.manager());
    }
    // 30 minutes, "at least 15 minutes" lifetime: logins at 0, 10, 20 and 30 minutes.
    let stats = sim.server.stats();
    assert_eq!(stats.session_logins, 4, "{stats:?}");
    assert_eq!(stats.session_rejections, 0);
}

#[test]
fn token_exchange_session_in_a_custom_header_and_logout() {
    let sim = Sim::new(ServerConfig::default());
    let config = format!(
        r#"{{"source": {{"type": "oauth2", "token_url": "{}", "revocation_url": "{}",
            "client_id": "demo-client", "client_secret": "demo-secret",
            "grant": {{"type": "token_exchange", "subject_token": "saml-assertion-for-alice",
                      "subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}},
            "send": {{"header": "X-Session-Token"}},
            "expired": {{"statuses": [401], "body_contains": ["INVALID_SESSION"]}}}}}}"#,
        sim.server.token_url(),
        sim.server.revoke_url()
    );
    let client = sim.client(&config, Arc::new(MemoryStore::new()));
    let url = sim.server.session_resource_url();
    assert_eq!(sim.call(&client, &url, String::new()).unwrap(), 200);
    assert_eq!(sim.call(&client, &url, String::new()).unwrap(), 200);
    let token = client.manager().token_blocking().unwrap().into_arc();
    sim.runtime.block_on(client.manager().revoke()).unwrap();
    let raw = reqwest::blocking::Client::new()
        .get(&url)
        .header("X-Session-Token", token.value().expose())
        .send()
        .unwrap();
    assert_eq!(raw.status(), 401, "logout ended the exchanged session");
    let stats = sim.server.stats();
    assert_eq!(
        stats
            .grants
            .get("urn:ietf:params:oauth:grant-type:token-exchange")
            .or(stats.grants.get("token_exchange")),
        Some(&1)
    );
}

#[test]
fn client_clock_five_minutes_off_either_way_causes_no_failures() {
    for skew_s in [-300i64, 300] {
        let sim = Sim::with_client_skew(ServerConfig::default(), skew_s);
        let client = sim.client(
            &session_config(&sim.server, true),
            Arc::new(MemoryStore::new()),
        );
        let url = sim.server.session_resource_url();
        for _ in 0..120 {
            assert_eq!(
                sim.call(&client, &url, String::new()).unwrap(),
                200,
                "skew {skew_s}"
            );
            sim.advance(Duration::from_secs(30), client.manager());
        }
        let stats = sim.server.stats();
        assert_eq!(stats.session_rejections, 0, "skew {skew_s}: {stats:?}");
        // Re-login before the absolute deadline (45 min) and again at 90 min.
        assert_eq!(stats.session_logins, 2, "skew {skew_s}: {stats:?}");
    }
    // The server's clock off instead of the client's.
    for date_skew_s in [-300i64, 300] {
        let sim = Sim::new(ServerConfig::default());
        sim.server.control(Control {
            date_skew_s: Some(date_skew_s),
            ..Control::default()
        });
        let client = sim.client(
            &session_config(&sim.server, true),
            Arc::new(MemoryStore::new()),
        );
        let url = sim.server.session_resource_url();
        for _ in 0..120 {
            assert_eq!(
                sim.call(&client, &url, String::new()).unwrap(),
                200,
                "server skew {date_skew_s}"
            );
            sim.advance(Duration::from_secs(30), client.manager());
        }
        assert_eq!(sim.server.stats().session_rejections, 0);
    }
}

/// Outage, 429 storm and early revocation in one batch: 0 failures while a valid token
/// exists; once none does, the right error kind.
#[test]
fn faults_mid_run_cause_no_failures_while_a_valid_token_exists() {
    let sim = Sim::new(batch_server());
    let client = sim.client(&batch_config(&sim.server), Arc::new(MemoryStore::new()));
    let url = sim.server.resource_url();
    let mut record = 0;
    let mut step = |sim: &Sim, records: usize| {
        for _ in 0..records {
            assert_eq!(
                sim.call(&client, &url, format!("{record}")).unwrap(),
                200,
                "record {record}"
            );
            record += 1;
            sim.advance(Duration::from_secs(10), client.manager());
        }
    };
    step(&sim, 55); // minute 9:10, just before the refresh point
    sim.server.control(Control {
        outage: Some(Outage {
            mode: OutageMode::Status503,
            duration_ms: None,
        }),
        ..Control::default()
    });
    step(&sim, 20); // refresh attempts fail; the cached token carries the job
    sim.server.control(Control {
        clear_outage: Some(true),
        ..Control::default()
    });
    step(&sim, 5);
    sim.server.control(Control {
        rate_limit: Some(RateLimit {
            duration_ms: None,
            retry_after_s: 30,
        }),
        ..Control::default()
    });
    step(&sim, 40); // a 429 storm across the next refresh point
    sim.server.control(Control {
        clear_rate_limit: Some(true),
        ..Control::default()
    });
    step(&sim, 10);
    sim.server.control(Control {
        revoke_all: Some(true),
        ..Control::default()
    });
    step(&sim, 10); // early revocation: one re-authentication
    let stats = sim.server.stats();
    assert!(stats.token_errors > 0, "faults were hit: {stats:?}");
    assert_eq!(
        stats.resource_requests as usize,
        record + stats.resource_rejections as usize
    );

    // Now an outage that outlasts the token: callers get Expired, caused by the outage.
    sim.server.control(Control {
        outage: Some(Outage {
            mode: OutageMode::Status503,
            duration_ms: None,
        }),
        ..Control::default()
    });
    let mut kinds = Vec::new();
    for _ in 0..100 {
        match sim.call(&client, &url, String::new()) {
            Ok(status) => assert_eq!(status, 200),
            Err(err) => kinds.push((err.kind(), err.cause_error().map(|cause| cause.kind()))),
        }
        sim.advance(Duration::from_secs(10), client.manager());
    }
    assert!(!kinds.is_empty(), "the token eventually expired");
    assert!(
        kinds
            .iter()
            .all(|k| *k == (ErrorKind::Expired, Some(ErrorKind::Transient))),
        "{kinds:?}"
    );
}

/// What every binding's HTTP integration does with a manager, against the real server: the
/// header comes from core (the session's own header here, not `Authorization`), and core
/// judges the response by the config's `expired` rules.
#[test]
fn a_binding_asks_core_for_the_header_and_the_verdict() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let manager = Manager::from_config(&session_config(&server, false)).unwrap();
    let http = reqwest::Client::new();
    let call = |token: &tokenlease::Token| {
        let (name, value) = manager
            .request_header(token.value(), token.token_type())
            .unwrap()
            .expect("a header");
        assert_eq!(name, "vmware-api-session-id");
        assert!(value.expose() == token.value().expose());
        let request = http
            .get(server.session_resource_url())
            .header(name, value.expose());
        runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let body = response.bytes().await.unwrap().to_vec();
            (status, headers, body)
        })
    };
    let judge = |token: &tokenlease::Token,
                 (status, headers, body): &(u16, Vec<(String, String)>, Vec<u8>)| {
        assert_eq!(manager.needs_response_body(*status), *status != 200);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        manager.judge_response(token.generation(), *status, &headers, body)
    };

    let token = manager.token_blocking().unwrap().into_arc();
    let answer = call(&token);
    assert_eq!(answer.0, 200);
    assert_eq!(judge(&token, &answer), ResponseVerdict::Accepted);

    // The server ends the session (idle timeout on its clock): 401 INVALID_SESSION.
    server.advance(Duration::from_secs(16 * 60));
    let answer = call(&token);
    assert_eq!(answer.0, 401);
    assert_eq!(judge(&token, &answer), ResponseVerdict::Rejected);
    assert!(
        manager.cached().is_none(),
        "the rejected session is discarded"
    );
    // A late verdict on the same old token never discards the new one.
    let fresh = manager.token_blocking().unwrap().into_arc();
    assert_ne!(fresh.generation(), token.generation());
    assert_eq!(judge(&token, &answer), ResponseVerdict::Rejected);
    assert_eq!(manager.cached().unwrap().generation(), fresh.generation());
    assert_eq!(call(&fresh).0, 200);
    assert_eq!(server.stats().session_logins, 2);

    // A 401 that is not the config's expiry (no INVALID_SESSION in the body) is not a
    // rejection of the token.
    assert_eq!(
        manager.judge_response(
            fresh.generation(),
            401,
            &[],
            b"{\"fault\": \"NO_PERMISSION\"}"
        ),
        ResponseVerdict::Accepted
    );
    assert_eq!(manager.cached().unwrap().generation(), fresh.generation());
}

/// A profile from examples/profiles, pointed at the test server: `host` replaced by the
/// server's URL, the credentials given inline.
fn profile(name: &str, host: &str, server: &TestServer, credentials: serde_json::Value) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/profiles")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("the profile exists");
    let mut config: serde_json::Value =
        serde_json::from_str(&text.replace(host, &server.url())).expect("the profile is JSON");
    config["source"]["credentials"] = credentials;
    config.to_string()
}

fn vsphere_server() -> ServerConfig {
    ServerConfig {
        session_idle_timeout: Duration::from_secs(1800),
        session_absolute_timeout: Duration::from_secs(8 * 3600),
        ..ServerConfig::default()
    }
}

#[test]
fn every_profile_vsphere_logs_in_with_basic_auth_keeps_alive_retries_once_and_logs_out() {
    let sim = Sim::new(vsphere_server());
    let config = profile(
        "vsphere.json",
        "https://vcenter.example",
        &sim.server,
        serde_json::json!({"username": "alice", "password": "wonderland"}),
    );
    let client = sim.client(&config, Arc::new(MemoryStore::new()));
    let vms = format!("{}/api/vcenter/vm", sim.server.url());
    let (status, body) = sim
        .call_with(&client, reqwest::Method::GET, &vms, String::new())
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("vm-42"));
    assert_eq!(sim.server.stats().session_logins, 1);
    // Session.get through the manager: whose session, and it is alive.
    let info = sim
        .runtime
        .block_on(client.manager().session_info())
        .unwrap();
    assert!(info.contains("alice"), "{info}");

    // 41 idle minutes: the server would end the session at minute 30; the manager keeps
    // it alive with GET /api/session (at minutes 20 and 40: the idle advisory window),
    // never a new login. (With no absolute timeout known, the policy's default lifetime
    // of an hour makes it log in again at minute 45.)
    for _ in 0..41 {
        sim.advance(MINUTE, client.manager());
    }
    assert_eq!(client.manager().status().counters.keep_alives, 2);
    assert_eq!(sim.server.stats().session_logins, 1);
    assert_eq!(
        sim.call_with(&client, reqwest::Method::GET, &vms, String::new())
            .unwrap()
            .0,
        200
    );

    // The server ends the session: one 401 UNAUTHENTICATED, one new login, one retry.
    sim.server.control(Control {
        revoke_all: Some(true),
        ..Control::default()
    });
    assert_eq!(
        sim.call_with(&client, reqwest::Method::GET, &vms, String::new())
            .unwrap()
            .0,
        200
    );
    assert_eq!(sim.server.stats().session_logins, 2);

    // A wrong password is invalid_credentials at once.
    let wrong = profile(
        "vsphere.json",
        "https://vcenter.example",
        &sim.server,
        serde_json::json!({"username": "alice", "password": "nope"}),
    );
    let wrong = sim.client(&wrong, Arc::new(MemoryStore::new()));
    let err = sim.runtime.block_on(wrong.manager().token()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");
    assert!(!err.to_string().contains("nope"));

    // Logout: DELETE /api/session.
    sim.runtime.block_on(client.manager().revoke()).unwrap();
    assert_eq!(sim.server.stats().session_logouts, 1);
}

#[test]
fn every_profile_zuora_soap_logs_in_with_xml_sends_the_session_in_the_soap_header_and_retries_a_fault_once(
) {
    let sim = Sim::new(ServerConfig::default());
    let config = profile(
        "zuora-soap.json",
        "https://apisandbox.zuora.example",
        &sim.server,
        // XML metacharacters in the password are escaped, never parsed as markup.
        serde_json::json!({"username": "alice", "password": "wonderland"}),
    );
    let client = sim.client(&config, Arc::new(MemoryStore::new()));
    let token = sim
        .runtime
        .block_on(client.manager().token())
        .unwrap()
        .into_arc();
    let endpoint = token
        .attribute("server_url")
        .expect("the ServerUrl of the login answer")
        .to_owned();
    assert!(endpoint.ends_with("/apps/services/a/91.0"), "{endpoint}");
    let query = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:api="http://api.zuora.com/"><soapenv:Header><api:SessionHeader><api:session>{{session}}</api:session></api:SessionHeader></soapenv:Header><soapenv:Body><api:query><api:queryString>select Id from Account</api:queryString></api:query></soapenv:Body></soapenv:Envelope>"#;
    let (status, body) = sim
        .call_with(&client, reqwest::Method::POST, &endpoint, query.to_owned())
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("queryResponse"));
    assert!(!body.contains("{{session}}"));

    // The session ends: an INVALID_SESSION fault (HTTP 500), one login, the body rendered
    // again with the new session, one retry.
    sim.server.control(Control {
        revoke_all: Some(true),
        ..Control::default()
    });
    let (status, body) = sim
        .call_with(&client, reqwest::Method::POST, &endpoint, query.to_owned())
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.server.stats().session_logins, 2);

    // A wrong password: a LoginFault with HTTP 500 is invalid_credentials, not transient.
    let wrong = profile(
        "zuora-soap.json",
        "https://apisandbox.zuora.example",
        &sim.server,
        serde_json::json!({"username": "alice", "password": "<wrong & bad>"}),
    );
    let wrong = sim.client(&wrong, Arc::new(MemoryStore::new()));
    let err = sim.runtime.block_on(wrong.manager().token()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidCredentials, "{err}");
    assert_eq!(sim.server.stats().session_logins, 2);

    // Logout: the SOAP logout call with the session in its header.
    sim.runtime.block_on(client.manager().revoke()).unwrap();
    assert_eq!(sim.server.stats().session_logouts, 1);
}

#[test]
fn every_profile_parses_and_the_batch_profile_survives_the_scope_ttl() {
    let sim = Sim::new(batch_server());
    let dir = std::env::temp_dir().join(format!("tokenlease-profile-{}", std::process::id()));
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/profiles/qms-batch.json"),
        )
        .unwrap()
        .replace("https://qms.example", &sim.server.url()),
    )
    .unwrap();
    config["source"]["client_id"] = "demo-client".into();
    config["source"]["client_secret"] = "demo-secret".into();
    config["store"] = serde_json::json!({"type": "memory"});
    let client = sim.client(&config.to_string(), Arc::new(MemoryStore::new()));
    let url = sim.server.resource_url();
    for minute in 0..40 {
        assert_eq!(
            sim.call(&client, &url, String::new()).unwrap(),
            200,
            "minute {minute}"
        );
        sim.advance(MINUTE, client.manager());
    }
    assert_eq!(sim.server.stats().resource_rejections, 0);
    let _ = std::fs::remove_dir_all(dir);

    // Every profile is a valid configuration (secrets from the environment are resolved
    // only when built, so parsing needs none).
    for entry in std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/profiles"),
    )
    .unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            ManagerConfig::parse(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        }
    }
}

/// Workload identity: the subject token is a file the platform rewrites (a Kubernetes
/// projected service account token); every exchange reads it again, and an expired JWT in
/// it is never sent.
#[test]
fn a_subject_token_file_is_read_again_for_every_exchange() {
    use base64::Engine as _;
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("tokenlease-subject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    let config = serde_json::json!({"source": {"type": "oauth2", "token_url": server.token_url(),
        "client_id": "demo-client", "client_secret": "demo-secret",
        "grant": {"type": "token_exchange", "subject_token_file": file,
                  "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}}})
    .to_string();
    let exchange = || Manager::from_config(&config).unwrap().token_blocking();

    std::fs::write(&file, "projected-token-1\n").unwrap();
    exchange().unwrap();
    // The platform rewrote the file with a token the server refuses: it was read again.
    std::fs::write(&file, "invalid").unwrap();
    assert_eq!(exchange().unwrap_err().kind(), ErrorKind::InvalidGrant);
    // An expired JWT is not sent at all.
    let requests = server.stats().token_requests;
    let part = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let expired = format!(
        "{}.{}.sig",
        part(r#"{"alg":"RS256"}"#),
        part(r#"{"exp":1000000000}"#)
    );
    std::fs::write(&file, expired).unwrap();
    let err = exchange().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(
        !err.to_string().contains("eyJ"),
        "the token is not in the message"
    );
    assert_eq!(server.stats().token_requests, requests);
    std::fs::write(&file, "projected-token-2").unwrap();
    exchange().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// vSphere's login with a token from another identity system (SAML there; here an access
/// token of the test server's token endpoint): the session source takes it from another
/// manager at every login and, when the login is refused, fetches it again.
#[test]
fn a_session_login_credential_from_another_source_is_fetched_again_when_refused() {
    let sim = Sim::new(ServerConfig::default());
    let config = serde_json::json!({"source": {"type": "session_login",
        "credential_sources": {"saml": {"type": "oauth2", "token_url": sim.server.token_url(),
            "client_id": "demo-client", "client_secret": "demo-secret"}},
        "session": {
            "login": {"url": format!("{}/api/session", sim.server.url()),
                      "headers": {"Authorization": "SIGN token=\"{{saml}}\""}},
            "token": {"json_pointer": ""}, "lifetime_s": 900,
            "send": {"header": "vmware-api-session-id"},
            "expired": {"statuses": [401], "body_contains": ["UNAUTHENTICATED"]}}}})
    .to_string();
    let client = sim.client(&config, Arc::new(MemoryStore::new()));
    let vms = format!("{}/api/vcenter/vm", sim.server.url());
    let get = || {
        sim.call_with(&client, reqwest::Method::GET, &vms, String::new())
            .unwrap()
            .0
    };
    assert_eq!(get(), 200);
    let stats = sim.server.stats();
    assert_eq!((stats.token_requests, stats.session_logins), (1, 1));
    assert_eq!(get(), 200);
    assert_eq!(
        sim.server.stats().token_requests,
        1,
        "the credential is reused"
    );
    // Everything ends at the server (sessions and access tokens): one 401, a login refused
    // with the old credential, the credential fetched again, a new session, one retry.
    sim.server.control(Control {
        revoke_all: Some(true),
        ..Control::default()
    });
    assert_eq!(get(), 200);
    let stats = sim.server.stats();
    assert_eq!(stats.token_requests, 2, "{stats:?}");
    assert_eq!(stats.session_logins, 2, "{stats:?}");
    assert!(!format!("{:?}", client.manager()).contains("demo-secret"));
}

/// The stories of tests/scenarios (README there), which every binding also runs, told here
/// through the authorized client: each file against a fresh server, on the manual clock.
#[test]
fn every_shared_scenario_runs_through_the_authorized_client() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "scenario"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the shared scenarios: {files:?}");
    for file in files {
        run_shared_scenario(&dir, &file);
    }
}

fn run_shared_scenario(dir: &std::path::Path, file: &std::path::Path) {
    let sim = Sim::new(ServerConfig::default());
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(file).unwrap();
    let mut config = String::new();
    let mut client: Option<AuthorizedClient> = None;
    for (number, line) in text.lines().enumerate() {
        let at = format!("{name}:{}: {line}", number + 1);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (step, rest) = line.split_once(' ').unwrap_or((line, ""));
        // The manager is built at the first step that needs it.
        let needs_client = !matches!(step, "config" | "replace" | "control" | "server-stat");
        if needs_client && client.is_none() {
            client = Some(scenario_client(&sim, &config, &at));
        }
        let client_here = || client.as_ref().unwrap();
        match step {
            "config" => {
                config = std::fs::read_to_string(dir.join("../..").join(rest))
                    .unwrap_or_else(|err| panic!("{at}: {err}"));
            }
            "replace" => {
                let (from, to) = rest.split_once(" => ").expect("FROM => TO");
                assert!(config.contains(from), "{at}: not in the configuration");
                config = config.replace(from, to);
            }
            "control" => {
                let control: Control =
                    serde_json::from_str(rest).unwrap_or_else(|err| panic!("{at}: {err}"));
                sim.server.control(control);
            }
            "call" => {
                let words: Vec<&str> = rest.split(' ').collect();
                let client = client_here();
                let url = match words[1].strip_prefix('@') {
                    Some(attribute) => sim
                        .runtime
                        .block_on(client.manager().token())
                        .unwrap_or_else(|err| panic!("{at}: {err}"))
                        .attribute(attribute)
                        .unwrap_or_else(|| panic!("{at}: no attribute"))
                        .to_owned(),
                    None => format!("{}{}", sim.server.url(), words[1]),
                };
                let body = words
                    .get(3)
                    .map(|body| std::fs::read_to_string(dir.join(body)).unwrap())
                    .unwrap_or_default();
                let method = reqwest::Method::from_bytes(words[0].as_bytes()).unwrap();
                let (status, answer) = sim
                    .call_with(client, method, &url, body)
                    .unwrap_or_else(|err| panic!("{at}: {err}"));
                assert_eq!(status.to_string(), words[2], "{at}: {answer}");
            }
            "advance" => {
                let minutes: u32 = rest.parse().unwrap();
                let client = client_here();
                for _ in 0..minutes {
                    sim.advance(MINUTE, client.manager());
                }
            }
            "server-stat" => {
                let (field, expected) = rest.split_once(' ').unwrap();
                let stats = serde_json::to_value(sim.server.stats()).unwrap();
                let pointer = format!("/{}", field.replace('.', "/"));
                let value = stats
                    .pointer(&pointer)
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                assert_eq!(value.to_string(), expected, "{at}: {stats}");
            }
            "manager-counter" => {
                let (field, expected) = rest.split_once(' ').unwrap();
                let counters = client_here().manager().status().counters;
                let value = counters
                    .get(field)
                    .unwrap_or_else(|| panic!("{at}: no counter"));
                assert_eq!(value.to_string(), expected, "{at}: {counters:?}");
            }
            "info-contains" => {
                let info = sim
                    .runtime
                    .block_on(client_here().manager().session_info())
                    .unwrap_or_else(|err| panic!("{at}: {err}"));
                assert!(info.contains(rest), "{at}: {info}");
            }
            "revoke" => sim
                .runtime
                .block_on(client_here().manager().revoke())
                .unwrap_or_else(|err| panic!("{at}: {err}")),
            other => panic!("{at}: unknown step {other}"),
        }
    }
}

fn scenario_client(sim: &Sim, config: &str, at: &str) -> AuthorizedClient {
    let text = config.replace("{{server}}", &sim.server.url());
    let config = ManagerConfig::parse(&text).unwrap_or_else(|err| panic!("{at}: {err}"));
    let manager = config
        .builder()
        .unwrap_or_else(|err| panic!("{at}: {err}"))
        .clock(Arc::new(sim.clock.clone()))
        .build();
    let authorizer = manager.authorizer();
    AuthorizedClient::new(manager, authorizer).unwrap()
}

/// Whether to send an API request once more with a new DPoP proof is decided in core alone:
/// every nonce is kept (also from a 200), and only a DPoP-bound token's 401 that brought a
/// new nonce is worth a resend.
#[test]
fn core_alone_decides_a_dpop_nonce_resend() {
    let manager = Manager::from_config(
        r#"{"source": {"type": "oauth2", "token_url": "http://127.0.0.1:9/token",
            "client_id": "c", "client_secret": "s", "dpop": true}}"#,
    )
    .unwrap();
    let api = "https://api.example/v1/items";
    let nonce = |value: &'static str| [("DPoP-Nonce", value)];
    // A 200 brings a nonce: kept, nothing to resend.
    assert!(!manager.dpop_resend_with_pairs("DPoP", api, 200, &nonce("n-1")));
    // The same nonce on a 401 is not new: resending would not help.
    assert!(!manager.dpop_resend_with_pairs("DPoP", api, 401, &nonce("n-1")));
    // A new nonce on a 401 for a DPoP-bound token: once more.
    assert!(manager.dpop_resend_with_pairs("dpop", api, 401, &nonce("n-2")));
    // A bearer token never carries a proof, so never a resend.
    assert!(!manager.dpop_resend_with_pairs("Bearer", api, 401, &nonce("n-3")));
    // No nonce, another status, or a URL that is not one: nothing.
    assert!(!manager.dpop_resend_with_pairs("DPoP", api, 401, &[]));
    assert!(!manager.dpop_resend_with_pairs("DPoP", api, 400, &nonce("n-4")));
    assert!(!manager.dpop_resend_with_pairs("DPoP", "not a url", 401, &nonce("n-5")));
    // The nonce of the 200 was kept: the next proof carries the newest one.
    let proof = manager
        .dpop_proof("GET", api, &tokenlease::SecretString::from("t"), "DPoP")
        .unwrap()
        .unwrap();
    let claims = proof.expose().split('.').nth(1).unwrap().to_owned();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["nonce"], "n-4", "{claims}");

    // A manager without DPoP keeps no nonce and resends nothing.
    let plain = Manager::from_config(
        r#"{"source": {"type": "oauth2", "token_url": "http://127.0.0.1:9/token",
            "client_id": "c", "client_secret": "s"}}"#,
    )
    .unwrap();
    assert!(!plain.dpop_resend_with_pairs("DPoP", api, 401, &nonce("n-6")));
}
