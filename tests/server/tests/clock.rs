//! The server clock (advance, time scale), TTL knobs, access idle/absolute timeouts,
//! `X-Token-Expires-In` and discovery, over real loopback HTTP.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tokenlease_test_server::{Control, ServerConfig, Stats};

fn date_of(resp: &reqwest::Response) -> SystemTime {
    httpdate::parse_http_date(resp.headers()["date"].to_str().unwrap()).unwrap()
}

fn ahead_of_now(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

async fn cc_with_scope(
    s: &tokenlease_test_server::TestServer,
    c: &reqwest::Client,
    scope: &str,
) -> reqwest::Response {
    post_basic(
        c,
        &s.token_url(),
        &[("grant_type", "client_credentials"), ("scope", scope)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advance_moves_the_date_header_and_server_time() {
    let s = start().await;
    let c = client();
    let health = format!("{}/health", s.url());
    let resp = c.get(&health).send().await.unwrap();
    assert!(ahead_of_now(date_of(&resp)).abs() <= 2);

    s.advance(Duration::from_secs(3600));
    let resp = c.get(&health).send().await.unwrap();
    let ahead = ahead_of_now(date_of(&resp));
    assert!((3598..=3602).contains(&ahead), "{ahead}");
    assert!((3598..=3602).contains(&ahead_of_now(s.server_time())));

    // Over HTTP, combined with the date skew.
    let resp = c
        .post(format!("{}/control", s.url()))
        .json(&json!({ "advance_s": 1800, "date_skew_s": -600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ahead = ahead_of_now(date_of(&resp));
    assert!((4798..=4802).contains(&ahead), "{ahead}");
    let resp = c.get(s.resource_url()).send().await.unwrap();
    let ahead = ahead_of_now(date_of(&resp));
    assert!((4798..=4802).contains(&ahead), "{ahead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_expire_on_the_server_clock() {
    let s = start().await;
    let c = client();
    let token = str_of(&client_credentials(&s, &c).await, "access_token").to_owned();
    s.advance(Duration::from_secs(3598));
    assert_eq!(resource_status(&s, &c, &token).await, StatusCode::OK);
    s.advance(Duration::from_secs(2));
    let resp = c.get(s.resource_url()).bearer_auth(&token).send().await;
    let (status, body) = json(resp.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_description"], "the access token expired");

    // Early expiry counts on the server clock too.
    s.control(Control {
        early_expiry_s: Some(60),
        ..Control::default()
    });
    let body = client_credentials(&s, &c).await;
    assert_eq!(body["expires_in"], 3600);
    let token = str_of(&body, "access_token").to_owned();
    s.advance(Duration::from_secs(59));
    assert_eq!(resource_status(&s, &c, &token).await, StatusCode::OK);
    s.advance(Duration::from_secs(1));
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_scale_runs_the_server_clock_faster() {
    // Config: one real millisecond is 100 server seconds.
    let s = start_with(ServerConfig {
        time_scale: 100_000.0,
        ..ServerConfig::default()
    })
    .await;
    let c = client();
    let token = str_of(&client_credentials(&s, &c).await, "access_token").to_owned();
    tokio::time::sleep(Duration::from_millis(100)).await; // ≥ 10 000 server seconds
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(ahead_of_now(s.server_time()) >= 10_000);
    drop(s);

    // Control: normal speed first, then fast; server time already elapsed is kept.
    let s = start().await;
    s.advance(Duration::from_secs(500));
    let token = str_of(&client_credentials(&s, &c).await, "access_token").to_owned();
    assert_eq!(resource_status(&s, &c, &token).await, StatusCode::OK);
    s.control(Control {
        time_scale: Some(100_000.0),
        ..Control::default()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );
    s.control(Control {
        time_scale: Some(1.0),
        ..Control::default()
    });
    let t1 = s.server_time();
    assert!(ahead_of_now(t1) >= 10_500);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let elapsed = s.server_time().duration_since(t1).unwrap();
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    // Nonsense scales are ignored.
    for bad in [0.0, -1.0, f64::NAN] {
        s.control(Control {
            time_scale: Some(bad),
            ..Control::default()
        });
    }
    let t2 = s.server_time();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.server_time().duration_since(t2).unwrap() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_ttls_and_x_token_expires_in() {
    let s = start_with(ServerConfig {
        scope_ttls: HashMap::from([("batch".to_owned(), Duration::from_secs(900))]),
        ..ServerConfig::default()
    })
    .await;
    let c = client();

    let resp = cc_with_scope(&s, &c, "read batch").await;
    assert_eq!(resp.headers()["x-token-expires-in"], "900");
    let body = json(resp).await.1;
    assert_eq!(body["expires_in"], 900);
    let batch = str_of(&body, "access_token").to_owned();
    let resp = cc_with_scope(&s, &c, "read").await;
    assert_eq!(resp.headers()["x-token-expires-in"], "3600");
    let read = str_of(&json(resp).await.1, "access_token").to_owned();
    s.advance(Duration::from_secs(900));
    assert_eq!(
        resource_status(&s, &c, &batch).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(resource_status(&s, &c, &read).await, StatusCode::OK);

    // Password and refresh grants carry the header and keep the scope TTL.
    let resp = post_basic(
        &c,
        &s.token_url(),
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "wonderland"),
            ("scope", "batch"),
        ],
    )
    .await;
    assert_eq!(resp.headers()["x-token-expires-in"], "900");
    let pw = json(resp).await.1;
    let resp = post_basic(
        &c,
        &s.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", str_of(&pw, "refresh_token")),
        ],
    )
    .await;
    assert_eq!(resp.headers()["x-token-expires-in"], "900");
    assert_eq!(json(resp).await.1["expires_in"], 900);

    // Changed at run time; `{}`-style replacement drops the old entries.
    s.control(Control {
        scope_ttls_s: Some(HashMap::from([
            ("read".to_owned(), 300),
            ("write".to_owned(), 120),
            ("ignored".to_owned(), 0),
        ])),
        ..Control::default()
    });
    for (scope, ttl) in [
        ("batch", 3600),
        ("read", 300),
        ("read write", 120),
        ("ignored", 3600),
    ] {
        let resp = cc_with_scope(&s, &c, scope).await;
        assert_eq!(
            resp.headers()["x-token-expires-in"],
            ttl.to_string().as_str()
        );
        assert_eq!(json(resp).await.1["expires_in"], ttl, "{scope}");
    }
    let resp = c
        .post(format!("{}/control", s.url()))
        .json(&json!({ "scope_ttls_s": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        json(cc_with_scope(&s, &c, "read").await).await.1["expires_in"],
        3600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_idle_timeout_overrides_the_ttl() {
    let s = start_with(ServerConfig {
        access_idle_timeout: Some(Duration::from_secs(900)),
        ..ServerConfig::default()
    })
    .await;
    let c = client();
    let body = client_credentials(&s, &c).await;
    assert_eq!(body["expires_in"], 3600);
    let busy = str_of(&body, "access_token").to_owned();
    let idle = str_of(&client_credentials(&s, &c).await, "access_token").to_owned();
    for _ in 0..3 {
        s.advance(Duration::from_secs(800));
        assert_eq!(resource_status(&s, &c, &busy).await, StatusCode::OK);
    }
    // `idle` was never used: 2400 s since issuance.
    assert_eq!(
        resource_status(&s, &c, &idle).await,
        StatusCode::UNAUTHORIZED
    );
    s.advance(Duration::from_secs(900));
    assert_eq!(
        resource_status(&s, &c, &busy).await,
        StatusCode::UNAUTHORIZED
    );

    // Cleared at run time (0), then set again over HTTP.
    s.control(Control {
        access_idle_timeout_s: Some(0),
        ..Control::default()
    });
    let token = str_of(&client_credentials(&s, &c).await, "access_token").to_owned();
    s.advance(Duration::from_secs(3000));
    assert_eq!(resource_status(&s, &c, &token).await, StatusCode::OK);
    let resp = c
        .post(format!("{}/control", s.url()))
        .json(&json!({ "access_idle_timeout_s": 100 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    s.advance(Duration::from_secs(100));
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_absolute_timeout_caps_the_ttl() {
    let s = start_with(ServerConfig {
        access_absolute_timeout: Some(Duration::from_secs(1800)),
        ..ServerConfig::default()
    })
    .await;
    let c = client();
    let body = client_credentials(&s, &c).await;
    assert_eq!(body["expires_in"], 3600);
    let token = str_of(&body, "access_token").to_owned();
    s.advance(Duration::from_secs(1799));
    assert_eq!(resource_status(&s, &c, &token).await, StatusCode::OK);
    s.advance(Duration::from_secs(1));
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );

    s.control(Control {
        access_absolute_timeout_s: Some(0),
        ..Control::default()
    });
    let token = str_of(&client_credentials(&s, &c).await, "access_token").to_owned();
    s.advance(Duration::from_secs(3599));
    assert_eq!(resource_status(&s, &c, &token).await, StatusCode::OK);
    s.control(Control {
        access_absolute_timeout_s: Some(600),
        ..Control::default()
    });
    assert_eq!(
        resource_status(&s, &c, &token).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_document() {
    let s = start().await;
    let c = client();
    let (status, body) = json(c.get(s.discovery_url()).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["issuer"], s.url());
    assert_eq!(body["token_endpoint"], s.token_url());
    assert_eq!(body["revocation_endpoint"], s.revoke_url());
    assert_eq!(
        body["grant_types_supported"],
        json!([
            "client_credentials",
            "refresh_token",
            "password",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    assert_eq!(
        body["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    // The advertised token endpoint works.
    let resp = post_basic(
        &c,
        body["token_endpoint"].as_str().unwrap(),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[test]
fn old_stats_json_still_parses() {
    let old = json!({
        "token_requests": 1, "tokens_issued": 1, "grants": {"client_credentials": 1},
        "token_errors": 0, "resource_requests": 0, "resource_rejections": 0, "revocations": 0
    });
    let stats: Stats = serde_json::from_value(old).unwrap();
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.session_logins, 0);
    assert_eq!(stats.session_rejections, 0);
}
