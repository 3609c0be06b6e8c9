//! Every response body tokenlease reads is bounded (token, discovery, revocation and
//! session bodies: 1 MiB; API error bodies the authorized client inspects: a 64 KiB
//! prefix), against the test server's `/fault/stream` route over loopback: a body that
//! never ends, or one declared far larger than the bound. Each failure must be a
//! `Protocol` error naming the endpoint (no query, no userinfo) and the bound, arrive long
//! before the 30 s request timeout, and leave the server having sent only a little more
//! than the bound (so nothing near a whole body was buffered).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenlease::client::{Attempts, AuthorizedClient, BearerAuthorizer, ErrorBodyTruncated};
use tokenlease::http::{MAX_BODY_BYTES, MAX_INSPECTED_ERROR_BODY_BYTES};
use tokenlease::oauth2::{ClientCredentials, OAuth2Source};
use tokenlease::session::{SessionLogin, SessionSpec};
use tokenlease::{Error, ErrorKind, Manager, SecretString, Source};
use tokenlease_test_server::{ServerConfig, TestServer};

/// Far below the 30 s request timeout; a bounded read stops after ~1 MiB, which the
/// server's ~16 MB/s pace delivers in well under a second.
const QUICK: Duration = Duration::from_secs(10);
/// What the server may have handed to the connection when the client stops: the bound,
/// plus loopback socket buffers. A whole-body read of an endless stream runs to the 30 s
/// timeout, ~480 MB at the server's pace.
const STREAMED_AT_MOST: u64 = 32 * 1024 * 1024;

fn server() -> TestServer {
    TestServer::start_background(ServerConfig::default()).expect("server")
}

fn assert_bounded(err: &Error, started: Instant, server: &TestServer, endpoint: &str, bound: &str) {
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    let message = err.message();
    assert!(
        message.starts_with(&format!(
            "{endpoint}: response body exceeds the {bound} limit"
        )),
        "{message}"
    );
    assert!(elapsed < QUICK, "took {elapsed:?}: {err}");
    let streamed = server.stats().streamed_bytes;
    assert!(streamed < STREAMED_AT_MOST, "server sent {streamed} bytes");
}

fn client_credentials(server: &TestServer, token_url: &str) -> OAuth2Source {
    let _ = server;
    ClientCredentials::new(token_url, "demo-client", "demo-secret").unwrap()
}

#[test]
fn the_bounds_are_documented_constants() {
    assert_eq!(MAX_BODY_BYTES, 1024 * 1024);
    assert_eq!(MAX_INSPECTED_ERROR_BODY_BYTES, 64 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_response_is_a_protocol_error_well_before_the_timeout() {
    let server = server();
    let endpoint = format!("{}/fault/stream/oauth/token", server.url());
    let source = client_credentials(&server, &format!("{endpoint}?tenant=query-secret"));
    let started = Instant::now();
    let err = source.fetch().await.unwrap_err();
    assert_bounded(&err, started, &server, &endpoint, "1 MiB");
    assert!(!err.to_string().contains("query-secret"), "{err}");
}

/// An error answer is judged by its status and the first 64 KiB of its body: an endless
/// 503 page (a gateway) stays a transient error that is retried, an endless 400 is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_error_body_is_judged_by_its_status_and_a_prefix() {
    let server = server();
    let endpoint = format!("{}/fault/stream/oauth/token", server.url());
    for (status, transient) in [(503, true), (400, false)] {
        let source = client_credentials(&server, &format!("{endpoint}?status={status}"));
        let started = Instant::now();
        let err = source.fetch().await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed < QUICK, "took {elapsed:?}: {err}");
        assert_eq!(err.is_transient(), transient, "{status}: {err}");
        assert!(
            err.message().contains(&format!("answered {status}")),
            "{err}"
        );
    }
    let streamed = server.stats().streamed_bytes;
    assert!(streamed < STREAMED_AT_MOST, "server sent {streamed} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_response_declared_larger_than_the_bound_is_refused_unread() {
    let server = server();
    let endpoint = format!("{}/fault/stream/oauth/token", server.url());
    // 100 MiB with a Content-Length: refused from the header, before any body is read.
    let source = client_credentials(&server, &format!("{endpoint}?length=104857600"));
    let started = Instant::now();
    let err = source.fetch().await.unwrap_err();
    assert_bounded(&err, started, &server, &endpoint, "1 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_discovery_document_is_a_protocol_error() {
    let server = server();
    // An issuer with a path: the document is at <issuer>/.well-known/openid-configuration.
    let issuer = format!("{}/fault/stream/realms/demo", server.url());
    let source =
        OAuth2Source::discover(&issuer, "demo-client", Some("demo-secret".into())).unwrap();
    let started = Instant::now();
    let err = source.fetch().await.unwrap_err();
    let endpoint = format!("{issuer}/.well-known/openid-configuration");
    assert_bounded(&err, started, &server, &endpoint, "1 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_revocation_error_body_is_a_protocol_error() {
    let server = server();
    let endpoint = format!("{}/fault/stream/oauth/revoke", server.url());
    let source = ClientCredentials::new(&server.token_url(), "demo-client", "demo-secret")
        .unwrap()
        .revocation_url(&format!("{endpoint}?status=503"))
        .unwrap();
    let source = Arc::new(source);
    let manager = Manager::builder_from_arc(source.clone()).build();
    let token = manager.token().await.unwrap().into_arc();
    let started = Instant::now();
    let err = source.revoke(&token).await.unwrap_err();
    assert_bounded(&err, started, &server, &endpoint, "1 MiB");
}

fn session(server: &TestServer, login_url: &str, keep_alive_url: &str) -> Arc<SessionLogin> {
    let spec: SessionSpec = serde_json::from_value(serde_json::json!({
        "login": {"url": login_url, "json": {"username": "{{username}}", "password": "{{password}}"}},
        "token": {"json_pointer": "/session/id"},
        "expires_in": {"header": "X-Token-Expires-In"},
        "sliding": true,
        "send": {"header": "vmware-api-session-id"},
        "keep_alive": {"url": keep_alive_url, "authenticated": true},
        "expired": {"statuses": [401], "body_contains": ["Token Expired"]}
    }))
    .unwrap();
    let _ = server;
    let credentials: BTreeMap<String, SecretString> = [
        ("username".to_owned(), SecretString::from("alice")),
        ("password".to_owned(), SecretString::from("wonderland")),
    ]
    .into_iter()
    .collect();
    Arc::new(SessionLogin::new(spec, credentials).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_session_login_response_is_a_protocol_error() {
    let server = server();
    let base = server.url();
    let login = session(
        &server,
        &format!("{base}/fault/stream/session/login/{{{{password}}}}?key=query-secret"),
        &server.session_keepalive_url(),
    );
    let started = Instant::now();
    let err = login.fetch().await.unwrap_err();
    // The endpoint is shown from the template: the placeholder, not the password.
    let endpoint = format!("{base}/fault/stream/session/login/{{{{password}}}}");
    assert_bounded(&err, started, &server, &endpoint, "1 MiB");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("wonderland") && !shown.contains("query-secret"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_keep_alive_response_is_a_protocol_error() {
    let server = server();
    let base = server.url();
    let login = session(
        &server,
        &server.session_login_url(),
        &format!("{base}/fault/stream/session/keepalive/{{{{token}}}}"),
    );
    let manager = Manager::builder_from_arc(login.clone()).build();
    let token = manager.token().await.unwrap().into_arc();
    let started = Instant::now();
    let err = login.keep_alive(&token).await.unwrap_err();
    let endpoint = format!("{base}/fault/stream/session/keepalive/{{{{token}}}}");
    assert_bounded(&err, started, &server, &endpoint, "1 MiB");
    assert!(!format!("{err:?}").contains(token.value().expose()));
}

mod authorized_client {
    use super::*;

    fn session_client(server: &TestServer) -> AuthorizedClient {
        let login = session(
            server,
            &server.session_login_url(),
            &server.session_keepalive_url(),
        );
        let manager = Manager::builder_from_arc(login.clone()).build();
        AuthorizedClient::new(manager, login).unwrap()
    }

    async fn read_all(mut response: reqwest::Response) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            body.extend_from_slice(&chunk);
        }
        body
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endless_error_body_is_classified_by_its_first_64_kib() {
        let server = server();
        let client = session_client(&server);
        let url = format!(
            "{}/fault/stream/api?status=401&prefix=Token%20Expired",
            server.url()
        );
        let started = Instant::now();
        let request = client.request(reqwest::Method::GET, &url).build().unwrap();
        let (response, attempts) = client.execute_counted(request).await.unwrap();
        assert!(started.elapsed() < QUICK, "took {:?}", started.elapsed());
        // "Token Expired" in the prefix: a rejection, retried once with a new session.
        assert_eq!(attempts, Attempts::RetriedAfterRejection);
        assert_eq!(server.stats().session_logins, 2);
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.extensions().get::<ErrorBodyTruncated>(),
            Some(&ErrorBodyTruncated {
                kept: MAX_INSPECTED_ERROR_BODY_BYTES
            })
        );
        let body = read_all(response).await;
        assert_eq!(body.len(), MAX_INSPECTED_ERROR_BODY_BYTES);
        assert!(body.starts_with(b"Token Expired"));
        assert!(server.stats().streamed_bytes < STREAMED_AT_MOST);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endless_error_body_without_the_expiry_text_is_not_a_rejection() {
        let server = server();
        let client = session_client(&server);
        let url = format!("{}/fault/stream/api?status=500", server.url());
        let started = Instant::now();
        let request = client.request(reqwest::Method::GET, &url).build().unwrap();
        let (response, attempts) = client.execute_counted(request).await.unwrap();
        assert!(started.elapsed() < QUICK, "took {:?}", started.elapsed());
        assert_eq!(attempts, Attempts::Once);
        assert_eq!(response.status(), 500);
        assert!(response.extensions().get::<ErrorBodyTruncated>().is_some());
        assert_eq!(
            read_all(response).await.len(),
            MAX_INSPECTED_ERROR_BODY_BYTES
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_body_within_the_bound_reaches_the_caller_whole() {
        let server = server();
        let client = session_client(&server);
        let length = MAX_INSPECTED_ERROR_BODY_BYTES;
        let url = format!(
            "{}/fault/stream/api?status=404&length={length}",
            server.url()
        );
        let request = client.request(reqwest::Method::GET, &url).build().unwrap();
        let (response, attempts) = client.execute_counted(request).await.unwrap();
        assert_eq!(attempts, Attempts::Once);
        assert_eq!(response.status(), 404);
        assert!(response.extensions().get::<ErrorBodyTruncated>().is_none());
        assert_eq!(read_all(response).await, vec![b'x'; length]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_successful_body_is_left_unread_for_the_application() {
        let server = server();
        let source =
            ClientCredentials::new(&server.token_url(), "demo-client", "demo-secret").unwrap();
        let client =
            AuthorizedClient::new(Manager::builder(source).build(), Arc::new(BearerAuthorizer))
                .unwrap();
        // 3 MiB: more than either bound, all of it for the application.
        let length = 3 * 1024 * 1024;
        let url = format!("{}/fault/stream/api?length={length}", server.url());
        let request = client.request(reqwest::Method::GET, &url).build().unwrap();
        let response = client.execute(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.extensions().get::<ErrorBodyTruncated>().is_none());
        let body = read_all(response).await;
        assert_eq!(body.len(), length);
        assert!(body.iter().all(|&b| b == b'x'));

        // An endless successful body is handed over at once, not read.
        let url = format!("{}/fault/stream/api", server.url());
        let started = Instant::now();
        let request = client.request(reqwest::Method::GET, &url).build().unwrap();
        let mut response = client.execute(request).await.unwrap();
        assert!(started.elapsed() < QUICK);
        let first = response.chunk().await.unwrap().unwrap();
        assert!(!first.is_empty() && first.iter().all(|&b| b == b'x'));
    }
}
