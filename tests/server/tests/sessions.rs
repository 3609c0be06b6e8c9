//! The vendor-style session API and RFC 8693 token exchange, over real loopback HTTP. Expiry is
//! simulated by advancing the server clock, never by sleeping.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tokenlease_test_server::{Control, ServerConfig, TestServer};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The three ways a session token can be presented.
#[derive(Clone, Copy, Debug)]
enum Auth {
    Vmware,
    ZSession,
    XSessionToken,
}

const ALL_AUTH: [Auth; 3] = [Auth::Vmware, Auth::ZSession, Auth::XSessionToken];

fn with_session(rb: RequestBuilder, auth: Auth, token: &str) -> RequestBuilder {
    match auth {
        Auth::Vmware => rb.header("vmware-api-session-id", token),
        Auth::ZSession => rb.header("authorization", format!("ZSession {token}")),
        Auth::XSessionToken => rb.header("x-session-token", token),
    }
}

async fn login(s: &TestServer, c: &Client, user: &str, password: &str) -> reqwest::Response {
    c.post(s.session_login_url())
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .expect("send")
}

/// Logs in as alice; returns the session token.
async fn login_ok(s: &TestServer, c: &Client) -> String {
    let (status, body) = json(login(s, c, "alice", "wonderland").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    str_of(&body["session"], "id").to_owned()
}

/// GET /session/resource; returns status and JSON body.
async fn use_session(s: &TestServer, c: &Client, auth: Auth, token: &str) -> (StatusCode, Value) {
    let rb = with_session(c.get(s.session_resource_url()), auth, token);
    json(rb.send().await.expect("send")).await
}

fn expired_body() -> Value {
    json!({ "fault": "INVALID_SESSION", "message": "Token Expired" })
}

async fn assert_session_ok(s: &TestServer, c: &Client, token: &str) {
    let (status, body) = use_session(s, c, Auth::Vmware, token).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "ok": true })));
}

async fn assert_session_expired(s: &TestServer, c: &Client, token: &str) {
    let (status, body) = use_session(s, c, Auth::Vmware, token).await;
    assert_eq!((status, body), (StatusCode::UNAUTHORIZED, expired_body()));
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_rfc3339(s: &str) -> SystemTime {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().expect(s);
    assert_eq!((s.len(), &s[10..11], &s[19..]), (20, "T", "Z"), "{s}");
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

fn abs_diff(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_response_shape_and_headers() {
    let s = start().await;
    let c = client();
    let resp = login(&s, &c, "alice", "wonderland").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-token-expires-in"], "900");
    let header_token = resp.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, body) = json(resp).await;
    let session = &body["session"];
    assert_eq!(str_of(session, "id"), header_token);
    assert!(header_token.len() >= 32);
    assert_eq!(session["expires_in"], 900);
    let absolute = parse_rfc3339(str_of(session, "absolute_expires_at"));
    let expected = s.server_time() + Duration::from_secs(3600);
    assert!(
        abs_diff(absolute, expected) < Duration::from_secs(3),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert_eq!(session.as_object().unwrap().len(), 3, "{body}");

    // Absolute timestamps are in server time: a server one day ahead says so.
    s.advance(Duration::from_secs(86_400));
    let (_, body) = json(login(&s, &c, "alice", "wonderland").await).await;
    let absolute = parse_rfc3339(str_of(&body["session"], "absolute_expires_at"));
    let expected = SystemTime::now() + Duration::from_secs(86_400 + 3600);
    assert!(
        abs_diff(absolute, expected) < Duration::from_secs(3),
        "{body}"
    );

    let stats = s.stats();
    assert_eq!(stats.session_logins, 2);
    assert_eq!(stats.token_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_login_and_bad_session_bodies() {
    let s = start().await;
    let c = client();
    for (user, password) in [("alice", "wrong"), ("bob", "wonderland"), ("", "")] {
        let resp = login(&s, &c, user, password).await;
        assert!(resp.headers().get("x-session-token").is_none());
        let (status, body) = json(resp).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNAUTHORIZED,
                json!({ "fault": "INVALID_LOGIN" })
            )
        );
    }
    let resp = c
        .post(s.session_login_url())
        .body("not json")
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["fault"], "INVALID_REQUEST");

    // No token, an unknown token, a Bearer token, an empty ZSession: the exact fault body.
    let no_token = c.get(s.session_resource_url());
    let unknown = with_session(c.post(s.session_resource_url()), Auth::Vmware, "nope");
    let bearer = c.get(s.session_resource_url()).bearer_auth("nope");
    let empty = c
        .get(s.session_resource_url())
        .header("authorization", "ZSession ");
    for rb in [no_token, unknown, bearer, empty] {
        let (status, body) = json(rb.send().await.unwrap()).await;
        assert_eq!((status, body), (StatusCode::UNAUTHORIZED, expired_body()));
    }
    for url in [s.session_keepalive_url(), s.session_logout_url()] {
        let rb = with_session(c.post(url), Auth::XSessionToken, "nope");
        let (status, body) = json(rb.send().await.unwrap()).await;
        assert_eq!((status, body), (StatusCode::UNAUTHORIZED, expired_body()));
    }
    let stats = s.stats();
    assert_eq!(stats.session_logins, 0);
    assert_eq!(stats.session_requests, 4);
    assert_eq!(stats.session_rejections, 3 + 4 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_header_form_works_on_get_and_post() {
    let s = start().await;
    let c = client();
    let token = login_ok(&s, &c).await;
    for auth in ALL_AUTH {
        let (status, body) = use_session(&s, &c, auth, &token).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({ "ok": true })),
            "{auth:?}"
        );
        let rb = with_session(c.post(s.session_resource_url()), auth, &token).body("payload");
        let (status, body) = json(rb.send().await.unwrap()).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({ "ok": true })),
            "{auth:?}"
        );
    }
    // `zsession` scheme is case-insensitive.
    let resp = c
        .get(s.session_resource_url())
        .header("authorization", format!("zsession {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // A session token is not an OAuth2 bearer token.
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.stats().session_requests, 7);
    assert_eq!(s.stats().session_rejections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_slides_with_use_and_expires_without() {
    let s = start().await;
    let c = client();
    let token = login_ok(&s, &c).await;
    // 3 × 800 s with use in between: 2400 s after login, still alive.
    for _ in 0..3 {
        s.advance(Duration::from_secs(800));
        assert_session_ok(&s, &c, &token).await;
    }
    s.advance(Duration::from_secs(899));
    assert_session_ok(&s, &c, &token).await;
    // 900 s without use.
    s.advance(Duration::from_secs(900));
    for auth in ALL_AUTH {
        let (status, body) = use_session(&s, &c, auth, &token).await;
        assert_eq!((status, body), (StatusCode::UNAUTHORIZED, expired_body()));
    }
    // A fresh login works again.
    let token2 = login_ok(&s, &c).await;
    assert_session_ok(&s, &c, &token2).await;
    let stats = s.stats();
    assert_eq!(stats.session_logins, 2);
    assert_eq!(stats.session_requests, 4 + 3 + 1);
    assert_eq!(stats.session_rejections, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_timeout_kills_even_a_busy_session() {
    let s = start().await;
    let c = client();
    let token = login_ok(&s, &c).await;
    for _ in 0..4 {
        s.advance(Duration::from_secs(800));
        assert_session_ok(&s, &c, &token).await;
    }
    // 3200 s: keep-alive does not extend the absolute timeout either.
    s.advance(Duration::from_secs(399));
    let rb = with_session(c.post(s.session_keepalive_url()), Auth::Vmware, &token);
    assert_eq!(rb.send().await.unwrap().status(), StatusCode::OK);
    assert_session_ok(&s, &c, &token).await;
    s.advance(Duration::from_secs(1)); // 3600 s after login
    assert_session_expired(&s, &c, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_extends_idle_only() {
    let s = start_with(ServerConfig {
        session_idle_timeout: Duration::from_secs(300),
        session_absolute_timeout: Duration::from_secs(2000),
        ..ServerConfig::default()
    })
    .await;
    let c = client();
    let (_, body) = json(login(&s, &c, "alice", "wonderland").await).await;
    assert_eq!(body["session"]["expires_in"], 300);
    let token = str_of(&body["session"], "id").to_owned();
    for auth in ALL_AUTH {
        s.advance(Duration::from_secs(250));
        let resp = with_session(c.post(s.session_keepalive_url()), auth, &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-token-expires-in"], "300");
        let (status, body) = json(resp).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({ "expires_in": 300 })),
            "{auth:?}"
        );
    }
    // 750 s after login, 0 s idle.
    s.advance(Duration::from_secs(299));
    assert_session_ok(&s, &c, &token).await;
    s.advance(Duration::from_secs(300));
    let resp = with_session(c.post(s.session_keepalive_url()), Auth::Vmware, &token)
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!((status, body), (StatusCode::UNAUTHORIZED, expired_body()));
    let stats = s.stats();
    assert_eq!(stats.session_keepalives, 3);
    assert_eq!(stats.session_rejections, 1);

    // Session timeouts can be changed at run time, for new sessions.
    s.control(Control {
        session_idle_timeout_s: Some(60),
        session_absolute_timeout_s: Some(100),
        ..Control::default()
    });
    let resp = login(&s, &c, "alice", "wonderland").await;
    assert_eq!(resp.headers()["x-token-expires-in"], "60");
    let token = json(resp).await.1["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.advance(Duration::from_secs(59));
    assert_session_ok(&s, &c, &token).await;
    s.advance(Duration::from_secs(41));
    assert_session_expired(&s, &c, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_deletes_the_session() {
    let s = start().await;
    let c = client();
    for auth in ALL_AUTH {
        let token = login_ok(&s, &c).await;
        let other = login_ok(&s, &c).await;
        let resp = with_session(c.post(s.session_logout_url()), auth, &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{auth:?}");
        assert!(resp.bytes().await.unwrap().is_empty());
        assert_session_expired(&s, &c, &token).await;
        let again = with_session(c.post(s.session_logout_url()), auth, &token);
        let (status, body) = json(again.send().await.unwrap()).await;
        assert_eq!((status, body), (StatusCode::UNAUTHORIZED, expired_body()));
        assert_session_ok(&s, &c, &other).await;
    }
    let stats = s.stats();
    assert_eq!(stats.session_logins, 6);
    assert_eq!(stats.session_logouts, 3);
    assert_eq!(stats.session_rejections, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_expiry_and_revoke_all_hit_sessions() {
    let s = start().await;
    let c = client();
    let old = login_ok(&s, &c).await;
    s.control(Control {
        early_expiry_s: Some(30),
        ..Control::default()
    });
    let early = login_ok(&s, &c).await;
    s.advance(Duration::from_secs(30));
    assert_session_ok(&s, &c, &old).await;
    assert_session_expired(&s, &c, &early).await;

    s.control(Control {
        revoke_all: Some(true),
        early_expiry_s: Some(0),
        ..Control::default()
    });
    assert_session_expired(&s, &c, &old).await;
    let fresh = login_ok(&s, &c).await;
    s.advance(Duration::from_secs(60));
    assert_session_ok(&s, &c, &fresh).await;
}

// ---------------------------------------------------------------------------------------------
// Token exchange

async fn exchange(s: &TestServer, c: &Client, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut pairs = vec![("grant_type", TOKEN_EXCHANGE)];
    pairs.extend_from_slice(extra);
    post_basic(c, &s.token_url(), &pairs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_issues_a_session_usable_on_both_resources() {
    let s = start().await;
    let c = client();
    let resp = exchange(
        &s,
        &c,
        &[
            ("subject_token", "PHNhbWw6QXNzZXJ0aW9uLz4"),
            ("subject_token_type", SAML2),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("audience", "https://vcenter.example"),
            ("resource", "https://vcenter.example/api"),
        ],
    )
    .await;
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["x-token-expires-in"], "900");
    let (status, body) = json(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = str_of(&body, "access_token").to_owned();

    // As a bearer token and as a session token; every use slides the shared idle timer.
    let resp = c.get(s.resource_url()).bearer_auth(&token).send().await;
    let (status, body) = json(resp.unwrap()).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "ok": true, "client_id": CLIENT }))
    );
    for auth in ALL_AUTH {
        s.advance(Duration::from_secs(800));
        let (status, _) = use_session(&s, &c, auth, &token).await;
        assert_eq!(status, StatusCode::OK, "{auth:?}");
    }
    s.advance(Duration::from_secs(800));
    assert_eq!(resource_status(&s, &c, &token).await, StatusCode::OK);
    // Idle expiry shows on both.
    s.advance(Duration::from_secs(900));
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_session_expired(&s, &c, &token).await;

    // Absolute timeout (3600 s) despite use.
    let (_, body) = json(
        exchange(
            &s,
            &c,
            &[
                ("subject_token", "eyJhbGciOi"),
                ("subject_token_type", SAML2),
            ],
        )
        .await,
    )
    .await;
    let token = str_of(&body, "access_token").to_owned();
    for _ in 0..4 {
        s.advance(Duration::from_secs(890));
        assert_eq!(resource_status(&s, &c, &token).await, StatusCode::OK);
    }
    s.advance(Duration::from_secs(40));
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );

    let stats = s.stats();
    assert_eq!(stats.grants["token_exchange"], 2);
    assert_eq!(stats.tokens_issued, 2);
    assert_eq!(stats.session_logins, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_subject_types_and_logout_and_revocation() {
    let s = start().await;
    let c = client();
    for ty in ["saml2", "saml1", "jwt", "access_token"] {
        let ty = format!("urn:ietf:params:oauth:token-type:{ty}");
        let (status, body) = json(
            post_form(
                &c,
                &s.token_url(),
                &[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("client_id", CLIENT),
                    ("client_secret", SECRET),
                    ("subject_token", "subject"),
                    ("subject_token_type", &ty),
                    ("scope", "read"),
                ],
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{ty}: {body}");
        assert_eq!(body["scope"], "read");
        assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
    }

    // Logout via the session API deletes an exchanged token everywhere.
    let body = json(
        exchange(
            &s,
            &c,
            &[("subject_token", "x"), ("subject_token_type", SAML2)],
        )
        .await,
    )
    .await
    .1;
    let token = str_of(&body, "access_token").to_owned();
    let resp = with_session(c.post(s.session_logout_url()), Auth::ZSession, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );

    // RFC 7009 revocation too.
    let body = json(
        exchange(
            &s,
            &c,
            &[("subject_token", "x"), ("subject_token_type", SAML2)],
        )
        .await,
    )
    .await
    .1;
    let token = str_of(&body, "access_token").to_owned();
    let resp = post_basic(&c, &s.revoke_url(), &[("token", &token)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_session_expired(&s, &c, &token).await;
    assert_eq!(s.stats().grants["token_exchange"], 6);
}

/// Extra form parameters of a token exchange request.
type Params<'a> = &'a [(&'a str, &'a str)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_failures() {
    let s = start().await;
    let c = client();
    let cases: [(Params<'_>, StatusCode, &str); 6] = [
        (
            &[("subject_token", "invalid"), ("subject_token_type", SAML2)],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            &[("subject_token", ""), ("subject_token_type", SAML2)],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            &[("subject_token_type", SAML2)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            &[("subject_token", "x")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            &[
                ("subject_token", "x"),
                ("subject_token_type", "urn:example:unknown"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            &[
                ("subject_token", "x"),
                ("subject_token_type", SAML2),
                ("requested_token_type", "urn:example:unknown"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (extra, status, error) in cases {
        let resp = exchange(&s, &c, extra).await;
        assert!(resp.headers().get("x-token-expires-in").is_none());
        let (got, body) = json(resp).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "{extra:?}"
        );
    }
    // Client authentication is required as for the other grants.
    let (status, body) = json(
        post_form(
            &c,
            &s.token_url(),
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("client_id", CLIENT),
                ("client_secret", "wrong"),
                ("subject_token", "x"),
                ("subject_token_type", SAML2),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let stats = s.stats();
    assert_eq!(stats.token_errors, 7);
    assert_eq!(stats.tokens_issued, 0);
    assert!(!stats.grants.contains_key("token_exchange"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_also_served_under_a_longer_path() {
    let s = start().await;
    let c = client();
    let resp = c
        .post(format!("{}/extra/segments?p=1", s.session_login_url()))
        .json(&serde_json::json!({"username": "alice", "password": "wonderland"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.stats().session_logins, 1);
}
