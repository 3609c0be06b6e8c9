//! End to end over loopback against the project's test token server: real HTTP, real
//! faults. The manager's clock is manual where a test needs time to pass, so nothing here
//! sleeps to wait for a token to age.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokenlease::clock::ManualClock;
use tokenlease::http::is_token_rejected;
use tokenlease::oauth2::{ClientAuth, ClientCredentials};
use tokenlease::{ErrorKind, Event, Manager, Rejection, RetryError, Token};
use tokenlease_test_server::{
    Control, FailNext, Outage, OutageMode, RateLimit, ServerConfig, TestServer,
};

const MINUTE: Duration = Duration::from_secs(60);

struct Fixture {
    server: TestServer,
    manager: Manager,
    clock: ManualClock,
    recorder: Arc<Recorder>,
}

fn fixture_with(config: ServerConfig, secret: &str) -> Fixture {
    let server = TestServer::start_background(config).expect("server");
    let clock = ManualClock::new();
    let recorder = Arc::new(Recorder::default());
    let source = ClientCredentials::new(&server.token_url(), "demo-client", secret)
        .unwrap()
        .revocation_url(&server.revoke_url())
        .unwrap();
    let manager = Manager::builder(source)
        .clock(Arc::new(clock.clone()))
        .policy(policy())
        .listener(recorder.clone())
        .build();
    Fixture {
        server,
        manager,
        clock,
        recorder,
    }
}

fn fixture() -> Fixture {
    fixture_with(ServerConfig::default(), "demo-secret")
}

/// Calls the protected resource with a token.
#[derive(Debug)]
enum CallError {
    Rejected,
    #[allow(dead_code)] // read through Debug in assertion messages
    Other(String),
}

impl Rejection for CallError {
    fn is_token_rejected(&self) -> bool {
        matches!(self, CallError::Rejected)
    }
}

fn call_resource(server_url: &str, token: &Token) -> Result<(), CallError> {
    let client = reqwest::blocking::Client::new();
    let response = client
        .get(format!("{server_url}/api/resource"))
        .bearer_auth(token.value().expose())
        .send()
        .map_err(|err| CallError::Other(err.to_string()))?;
    if is_token_rejected(response.status(), response.headers()) {
        return Err(CallError::Rejected);
    }
    if !response.status().is_success() {
        return Err(CallError::Other(format!(
            "resource answered {}",
            response.status()
        )));
    }
    Ok(())
}

#[test]
fn fetch_and_cache_make_one_token_request() {
    let f = fixture();
    for _ in 0..100 {
        let token = f.manager.token_blocking().unwrap();
        assert_eq!(token.generation(), 1);
    }
    let token = f.manager.token_blocking().unwrap().into_arc();
    call_resource(&f.server.url(), &token).expect("the token works at the resource");
    assert_eq!(f.server.stats().token_requests, 1);
    assert_eq!(token.lifetime(), Duration::from_secs(3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_cold_callers_make_one_token_request() {
    let f = fixture();
    f.server.control(Control {
        latency_ms: Some(100),
        ..Control::default()
    });
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let manager = f.manager.clone();
            tokio::spawn(async move { manager.token().await.map(|t| t.generation()) })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), 1);
    }
    assert_eq!(f.server.stats().token_requests, 1);
}

#[test]
fn background_refresh_with_no_traffic() {
    let f = fixture();
    let first = f.manager.token_blocking().unwrap().into_arc();
    wait_until("timer armed", || {
        f.clock.next_timer() == Some(first.refresh_at())
    });
    f.clock.advance(45 * MINUTE);
    wait_until("background refresh", || f.recorder.successes() == 2);
    assert_eq!(f.server.stats().token_requests, 2);
    let second = f.manager.cached().unwrap().into_arc();
    assert_ne!(second.value().expose(), first.value().expose());
    call_resource(&f.server.url(), &second).unwrap();
}

#[test]
fn outage_of_the_token_endpoint_is_served_from_cache() {
    for mode in [OutageMode::Status503, OutageMode::Drop] {
        let f = fixture();
        let first = f.manager.token_blocking().unwrap().into_arc();
        f.server.control(Control {
            outage: Some(Outage {
                mode,
                duration_ms: None,
            }),
            ..Control::default()
        });
        f.clock.advance(45 * MINUTE);
        let mut failures = 0;
        for _ in 0..120 {
            f.clock.advance(Duration::from_secs(5));
            match f.manager.token_blocking() {
                Ok(token) => call_resource(&f.server.url(), &token).unwrap(),
                Err(_) => failures += 1,
            }
            wait_until("attempt done", || !f.manager.status().refreshing);
        }
        assert_eq!(failures, 0, "{mode:?}: callers were served from cache");
        let stats = f.server.stats();
        assert!(
            stats.token_errors >= 3,
            "{mode:?}: the manager kept retrying ({stats:?})"
        );
        assert_eq!(
            f.manager.status().last_error_kind,
            Some(ErrorKind::Transient),
            "{mode:?}"
        );
        assert_eq!(f.manager.cached().unwrap().generation(), first.generation());

        f.server.control(Control {
            clear_outage: Some(true),
            ..Control::default()
        });
        f.clock.advance(MINUTE);
        wait_until("recovered", || f.recorder.successes() == 2);
        assert_eq!(f.manager.token_blocking().unwrap().generation(), 2);
    }
}

#[test]
fn rate_limit_is_respected_with_retry_after() {
    let f = fixture();
    f.server.control(Control {
        rate_limit: Some(RateLimit {
            duration_ms: None,
            retry_after_s: 120,
        }),
        ..Control::default()
    });
    let err = f.manager.token_blocking().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    // Before Retry-After has passed, callers get the error without hitting the server.
    f.clock.advance(119 * Duration::from_secs(1));
    assert_eq!(
        f.manager.token_blocking().unwrap_err().kind(),
        ErrorKind::RateLimited
    );
    assert_eq!(f.server.stats().token_requests, 1);
    f.server.control(Control {
        clear_rate_limit: Some(true),
        ..Control::default()
    });
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.manager.token_blocking().unwrap().generation(), 1);
    assert_eq!(f.server.stats().token_requests, 2);
}

#[test]
fn bad_client_secret_is_invalid_credentials_at_once() {
    let f = fixture_with(ServerConfig::default(), "wrong-secret");
    let err = f.manager.token_blocking().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidCredentials);
    assert!(
        err.message()
            .contains("/oauth/token answered 401 (invalid_client)"),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong-secret"));
    assert_eq!(f.server.stats().token_requests, 1);
}

#[test]
fn client_secret_post_works_too() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let source = ClientCredentials::new(&server.token_url(), "demo-client", "demo-secret")
        .unwrap()
        .client_auth(ClientAuth::Post)
        .scopes(["read", "write"]);
    let manager = Manager::builder(source).build();
    let token = manager.token_blocking().unwrap();
    assert_eq!(token.scopes(), ["read", "write"]);
}

#[test]
fn early_server_expiry_is_recovered_by_one_shared_reauthentication() {
    let f = fixture();
    let url = f.server.url();
    f.manager.token_blocking().unwrap();
    // The server revokes everything: every caller's next call gets a 401.
    f.server.control(Control {
        revoke_all: Some(true),
        ..Control::default()
    });
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let manager = f.manager.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                manager.with_retry_blocking(|token| call_resource(&url, token))
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .unwrap()
            .expect("retried once with a new token");
    }
    let stats = f.server.stats();
    assert_eq!(
        stats.token_requests, 2,
        "one re-authentication for 16 rejections"
    );
    assert!(stats.resource_rejections >= 1 && stats.resource_rejections <= 16);
    assert_eq!(f.manager.status().counters.invalidations, 1);
}

#[test]
fn a_rejection_that_persists_surfaces_after_one_retry() {
    let f = fixture();
    let url = f.server.url();
    let mut attempts = 0;
    let result = f.manager.with_retry_blocking(|token| {
        attempts += 1;
        // Revoke before each call: the retry's token is rejected too.
        f.server.control(Control {
            revoke_all: Some(true),
            ..Control::default()
        });
        call_resource(&url, token)
    });
    assert!(matches!(
        result,
        Err(RetryError::Operation(CallError::Rejected))
    ));
    assert_eq!(attempts, 2);
}

#[test]
fn terminal_error_after_failed_refresh_is_reported_with_its_kind() {
    let f = fixture();
    f.manager.token_blocking().unwrap();
    f.server.control(Control {
        fail_next_token_requests: Some(FailNext {
            count: 1,
            error: "invalid_client".into(),
        }),
        ..Control::default()
    });
    f.server.control(Control {
        revoke_all: Some(true),
        ..Control::default()
    });
    let token = f.manager.token_blocking().unwrap();
    assert!(f.manager.invalidate(&token));
    drop(token);
    let err = f.manager.token_blocking().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidCredentials);
    assert_eq!(
        f.recorder.count(|e| matches!(
            e,
            Event::RefreshFailed {
                kind: ErrorKind::InvalidCredentials,
                ..
            }
        )),
        1
    );
}

#[test]
fn revoke_calls_the_revocation_endpoint() {
    let f = fixture();
    let token = f.manager.token_blocking().unwrap().into_arc();
    call_resource(&f.server.url(), &token).unwrap();
    f.manager.revoke_blocking().unwrap();
    assert!(f.server.stats().revocations >= 1);
    assert!(matches!(
        call_resource(&f.server.url(), &token),
        Err(CallError::Rejected)
    ));
    let again = f.manager.token_blocking().unwrap();
    assert_eq!(again.generation(), 2);
}

#[test]
fn a_string_expires_in_gets_the_same_upper_bound_as_a_number() {
    for (expires_in, expected) in [
        ("3600", Some(3600)),
        (r#""3600""#, Some(3600)),
        ("99999999999999", None),
        (r#""99999999999999""#, None),
        (r#""10000000000""#, None),
    ] {
        let f = fixture();
        f.server.control(Control {
            expires_in_json: Some(expires_in.to_owned()),
            ..Control::default()
        });
        match (f.manager.token_blocking(), expected) {
            (Ok(token), Some(seconds)) => {
                assert_eq!(
                    token.lifetime(),
                    Duration::from_secs(seconds),
                    "{expires_in}"
                )
            }
            (Err(err), None) => {
                assert_eq!(err.kind(), ErrorKind::Protocol, "{expires_in}: {err}");
                assert!(
                    err.message()
                        .ends_with("/oauth/token: expires_in must be a positive number of seconds"),
                    "{expires_in}: {err}"
                );
            }
            (Ok(token), None) => panic!("{expires_in}: accepted, lifetime {:?}", token.lifetime()),
            (Err(err), Some(_)) => panic!("{expires_in}: {err}"),
        }
    }
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let err = ClientCredentials::new("http://idp.example.com/token", "c", "s").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
}

mod authorized_client {
    use super::*;
    use tokenlease::client::{Attempts, AuthorizedClient, BearerAuthorizer};

    fn client(server: &TestServer) -> AuthorizedClient {
        let source =
            ClientCredentials::new(&server.token_url(), "demo-client", "demo-secret").unwrap();
        AuthorizedClient::new(Manager::builder(source).build(), Arc::new(BearerAuthorizer)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attaches_the_token_and_retries_once_after_an_early_revocation() {
        let server = TestServer::start_background(ServerConfig::default()).unwrap();
        let client = client(&server);
        let url = server.resource_url();
        let request = client
            .request(reqwest::Method::POST, &url)
            .body("record-1")
            .build()
            .unwrap();
        let (response, attempts) = client.execute_counted(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(attempts, Attempts::Once);

        server.control(Control {
            revoke_all: Some(true),
            ..Control::default()
        });
        let request = client
            .request(reqwest::Method::POST, &url)
            .body("record-2")
            .build()
            .unwrap();
        let (response, attempts) = client.execute_counted(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(attempts, Attempts::RetriedAfterRejection);
        assert_eq!(server.stats().token_requests, 2);
        assert_eq!(client.manager().status().counters.invalidations, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streamed_body_is_not_replayed() {
        let server = TestServer::start_background(ServerConfig::default()).unwrap();
        let client = client(&server);
        client.manager().token().await.unwrap();
        server.control(Control {
            revoke_all: Some(true),
            ..Control::default()
        });
        let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("streamed")];
        let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
        let request = client
            .request(reqwest::Method::POST, &server.resource_url())
            .body(body)
            .build()
            .unwrap();
        let (response, attempts) = client.execute_counted(request).await.unwrap();
        assert_eq!(response.status(), 401, "the caller sees the rejection");
        assert_eq!(attempts, Attempts::RejectedNotReplayable);
        assert!(
            response.text().await.unwrap().contains("invalid_token"),
            "body kept for the caller"
        );
        // The rejected token is gone: the next call gets a new one.
        let request = client
            .request(reqwest::Method::GET, &server.resource_url())
            .build()
            .unwrap();
        assert_eq!(client.execute(request).await.unwrap().status(), 200);
        assert_eq!(server.stats().token_requests, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_http_to_another_host_is_refused_before_any_token_is_sent() {
        let server = TestServer::start_background(ServerConfig::default()).unwrap();
        let client = client(&server);
        let request = client
            .request(reqwest::Method::GET, "http://api.example.com/x")
            .build()
            .unwrap();
        let err = client.execute(request).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert_eq!(server.stats().token_requests, 0);
    }
}
