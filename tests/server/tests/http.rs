//! Grants, client authentication, the resource and revocation, over real loopback HTTP.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use tokenlease_test_server::{ServerConfig, Stats, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_basic_and_post() {
    let s = start().await;
    let c = client();

    let resp = post_basic(&c, &s.token_url(), &[("grant_type", "client_credentials")]).await;
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let (status, basic) = json(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(basic["token_type"], "Bearer");
    assert_eq!(basic["expires_in"], 3600);
    assert!(str_of(&basic, "access_token").len() >= 32);
    assert!(basic.get("refresh_token").is_none(), "{basic}");
    assert!(basic.get("scope").is_none(), "{basic}");

    let (status, post) = json(
        post_form(
            &c,
            &s.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
                ("scope", "read  write"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(post["scope"], "read write");
    assert_ne!(post["access_token"], basic["access_token"]);

    let resp = c
        .get(s.resource_url())
        .bearer_auth(str_of(&post, "access_token"))
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"ok": true, "client_id": CLIENT}));

    let stats = s.stats();
    assert_eq!(stats.token_requests, 2);
    assert_eq!(stats.tokens_issued, 2);
    assert_eq!(stats.grants["client_credentials"], 2);
    assert_eq!(stats.token_errors, 0);
    assert_eq!(stats.resource_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_is_401_invalid_client() {
    let s = start().await;
    let c = client();
    let cc = [("grant_type", "client_credentials")];

    let resp = c
        .post(s.token_url())
        .basic_auth(CLIENT, Some("wrong"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&cc))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let (_, body) = json(resp).await;
    assert_eq!(body["error"], "invalid_client");

    let (status, body) = json(
        post_form(
            &c,
            &s.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "nobody"),
                ("client_secret", SECRET),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");

    let (status, body) = json(post_form(&c, &s.token_url(), &cc).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");

    let stats = s.stats();
    assert_eq!(stats.token_requests, 3);
    assert_eq!(stats.token_errors, 3);
    assert_eq!(stats.tokens_issued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests() {
    let s = start().await;
    let c = client();

    let (status, body) = json(post_basic(&c, &s.token_url(), &[]).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    let (status, body) =
        json(post_basic(&c, &s.token_url(), &[("grant_type", "authorization_code")]).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");

    let (status, body) =
        json(post_basic(&c, &s.token_url(), &[("grant_type", "refresh_token")]).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    let (status, body) = json(
        post_basic(
            &c,
            &s.token_url(),
            &[("grant_type", "password"), ("username", "alice")],
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    let (status, body) = json(
        c.post(s.token_url())
            .basic_auth(CLIENT, Some(SECRET))
            .header("content-type", "application/json")
            .body(r#"{"grant_type":"client_credentials"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_grant_issues_refresh_token() {
    let s = start().await;
    let c = client();
    let t = password_grant(&s, &c).await;
    assert!(str_of(&t, "refresh_token").len() >= 32);
    assert_eq!(
        resource_status(&s, &c, str_of(&t, "access_token")).await,
        StatusCode::OK
    );

    let (status, body) = json(
        post_basic(
            &c,
            &s.token_url(),
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "looking-glass"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(s.stats().grants.get("password"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_and_reuse_revokes_family() {
    let s = start().await;
    let c = client();
    let t1 = password_grant(&s, &c).await;
    let r1 = str_of(&t1, "refresh_token");

    let (status, t2) = refresh(&s, &c, r1).await;
    assert_eq!(status, StatusCode::OK, "{t2}");
    let r2 = str_of(&t2, "refresh_token");
    assert_ne!(r1, r2);
    let a2 = str_of(&t2, "access_token");
    assert_eq!(resource_status(&s, &c, a2).await, StatusCode::OK);

    // An unrelated family is not affected by the reuse below.
    let other = password_grant(&s, &c).await;

    // Reusing the rotated token: invalid_grant, and the whole family dies.
    let (status, body) = refresh(&s, &c, r1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(resource_status(&s, &c, a2).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resource_status(&s, &c, str_of(&t1, "access_token")).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = refresh(&s, &c, r2).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    assert_eq!(
        resource_status(&s, &c, str_of(&other, "access_token")).await,
        StatusCode::OK
    );
    let (status, _) = refresh(&s, &c, str_of(&other, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = refresh(&s, &c, "not-a-token").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let stats = s.stats();
    assert_eq!(stats.grants["refresh_token"], 2);
    assert_eq!(stats.grants["password"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_without_rotation_keeps_the_token() {
    let s = start_with(ServerConfig {
        rotate_refresh_tokens: false,
        ..ServerConfig::default()
    })
    .await;
    let c = client();
    let t = password_grant(&s, &c).await;
    let r = str_of(&t, "refresh_token");
    for _ in 0..2 {
        let (status, body) = refresh(&s, &c, r).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.get("refresh_token").is_none(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_scope_is_kept_and_cannot_grow() {
    let s = start().await;
    let c = client();
    let (status, t) = json(
        post_basic(
            &c,
            &s.token_url(),
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "wonderland"),
                ("scope", "read write"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t["scope"], "read write");
    let (status, t2) = refresh(&s, &c, str_of(&t, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t2["scope"], "read write");

    let (status, body) = json(
        post_basic(
            &c,
            &s.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_of(&t2, "refresh_token")),
                ("scope", "admin"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_ttls_and_client_credentials_refresh() {
    let s = start_with(ServerConfig {
        scope_ttls: HashMap::from([
            ("short".to_owned(), Duration::from_secs(60)),
            ("shorter".to_owned(), Duration::from_secs(30)),
        ]),
        refresh_for_client_credentials: true,
        ..ServerConfig::default()
    })
    .await;
    let c = client();
    let (_, t) = json(
        post_basic(
            &c,
            &s.token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "short shorter other"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(t["expires_in"], 30);
    assert!(t.get("refresh_token").is_some(), "{t}");
    let (_, t) = json(
        post_basic(
            &c,
            &s.token_url(),
            &[("grant_type", "client_credentials"), ("scope", "other")],
        )
        .await,
    )
    .await;
    assert_eq!(t["expires_in"], 3600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_401_shape_and_post() {
    let s = start().await;
    let c = client();

    let resp = c.get(s.resource_url()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{challenge}"
    );
    let (_, body) = json(resp).await;
    assert_eq!(body["error"], "invalid_token");

    let resp = c
        .get(s.resource_url())
        .bearer_auth("made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));

    let t = client_credentials(&s, &c).await;
    let (status, body) = json(
        c.post(s.resource_url())
            .bearer_auth(str_of(&t, "access_token"))
            .body(vec![7u8; 1234])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"ok": true, "received": 1234}));

    let stats = s.stats();
    assert_eq!(stats.resource_requests, 3);
    assert_eq!(stats.resource_rejections, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation() {
    let s = start().await;
    let c = client();

    // Access token.
    let t = client_credentials(&s, &c).await;
    let a = str_of(&t, "access_token");
    let resp = post_basic(&c, &s.revoke_url(), &[("token", a)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resource_status(&s, &c, a).await, StatusCode::UNAUTHORIZED);

    // Refresh token: the family goes.
    let t = password_grant(&s, &c).await;
    let (_, t2) = refresh(&s, &c, str_of(&t, "refresh_token")).await;
    let resp = post_form(
        &c,
        &s.revoke_url(),
        &[
            ("token", str_of(&t2, "refresh_token")),
            ("token_type_hint", "refresh_token"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resource_status(&s, &c, str_of(&t2, "access_token")).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = refresh(&s, &c, str_of(&t2, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Unknown token: still 200; bad client: 401.
    let resp = post_basic(&c, &s.revoke_url(), &[("token", "unknown")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, body) = json(post_form(&c, &s.revoke_url(), &[("token", "unknown")]).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );

    assert_eq!(s.stats().revocations, 3);
}

#[test]
fn background_server_from_sync_code() {
    let s = TestServer::start_background(ServerConfig::default()).unwrap();
    let url = s.url();
    assert_eq!(s.token_url(), format!("{url}/oauth/token"));
    assert_eq!(s.resource_url(), format!("{url}/api/resource"));
    assert_eq!(s.revoke_url(), format!("{url}/oauth/revoke"));
    assert_eq!(url, format!("http://127.0.0.1:{}", s.port()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client();
        let t = client_credentials(&s, &c).await;
        assert_eq!(
            resource_status(&s, &c, str_of(&t, "access_token")).await,
            StatusCode::OK
        );
        // Keep an idle keep-alive connection open across the drop.
        let resp = c.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "ok");
    });
    assert_eq!(s.stats().tokens_issued, 1);
    let started = Instant::now();
    drop(s);
    assert!(started.elapsed() < Duration::from_secs(3));
    let port = url.rsplit(':').next().unwrap();
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_server_dropped_inside_a_runtime() {
    let s = TestServer::start_background(ServerConfig::default()).unwrap();
    let c = client();
    client_credentials(&s, &c).await;
    let started = Instant::now();
    s.shutdown();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_and_max_lifetime_stop_the_server() {
    let s = start().await;
    let port = s.port();
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());

    let s = start_with(ServerConfig {
        max_lifetime: Some(Duration::from_millis(300)),
        ..ServerConfig::default()
    })
    .await;
    let port = s.port();
    let c = fresh_client();
    assert!(c.get(format!("{}/health", s.url())).send().await.is_ok());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_endpoint_matches_in_process_stats() {
    let s = start().await;
    let c = client();
    client_credentials(&s, &c).await;
    let resp = c.get(format!("{}/stats", s.url())).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stats: Stats = resp.json().await.unwrap();
    assert_eq!(stats, s.stats());
    assert_eq!(stats.tokens_issued, 1);

    let resp = c.get(format!("{}/health", s.url())).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");
}
