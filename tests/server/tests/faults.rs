//! Every `Control` knob, observed over real loopback HTTP.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use reqwest::StatusCode;
use tokenlease_test_server::{Control, FailNext, Outage, OutageMode, RateLimit, Stats};

fn outage(mode: OutageMode, duration_ms: Option<u64>) -> Control {
    Control {
        outage: Some(Outage { mode, duration_ms }),
        ..Control::default()
    }
}

async fn cc_status(s: &tokenlease_test_server::TestServer, c: &reqwest::Client) -> StatusCode {
    post_basic(c, &s.token_url(), &[("grant_type", "client_credentials")])
        .await
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_503_with_and_without_duration() {
    let s = start().await;
    let c = client();
    s.control(outage(OutageMode::Status503, Some(300)));
    let (status, body) =
        json(post_basic(&c, &s.token_url(), &[("grant_type", "client_credentials")]).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "temporarily_unavailable");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);

    s.control(outage(OutageMode::Status503, None));
    assert_eq!(cc_status(&s, &c).await, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cc_status(&s, &c).await, StatusCode::SERVICE_UNAVAILABLE);

    // The resource is not affected by token endpoint faults.
    s.control(Control {
        clear_outage: Some(true),
        ..Control::default()
    });
    let t = client_credentials(&s, &c).await;
    s.control(outage(OutageMode::Status503, None));
    assert_eq!(
        resource_status(&s, &c, str_of(&t, "access_token")).await,
        StatusCode::OK
    );

    // Clearing via HTTP.
    let resp = c
        .post(format!("{}/control", s.url()))
        .body(r#"{"clear_outage": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);

    let stats = s.stats();
    assert_eq!(stats.token_requests, 6);
    assert_eq!(stats.token_errors, 3);
    assert_eq!(stats.tokens_issued, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mode_closes_the_connection() {
    let s = start().await;
    let c = fresh_client();
    s.control(outage(OutageMode::Drop, None));
    let started = Instant::now();
    let err = c
        .post(s.token_url())
        .basic_auth(CLIENT, Some(SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("grant_type", "client_credentials")]))
        .send()
        .await
        .expect_err("the connection must be dropped");
    assert!(!err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = s.stats();
    assert!(stats.token_requests >= 1);
    assert_eq!(stats.token_errors, stats.token_requests);

    s.control(Control {
        clear_outage: Some(true),
        ..Control::default()
    });
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_mode_holds_the_request() {
    let s = start().await;
    let c = fresh_client();

    // A client with a short timeout gives up.
    s.control(outage(OutageMode::Timeout, Some(900)));
    let started = Instant::now();
    let err = c
        .post(s.token_url())
        .timeout(Duration::from_millis(300))
        .basic_auth(CLIENT, Some(SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("grant_type", "client_credentials")]))
        .send()
        .await
        .expect_err("must time out");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(290));

    // A patient client gets a 503 once the outage ends.
    let (status, body) =
        json(post_basic(&c, &s.token_url(), &[("grant_type", "client_credentials")]).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "temporarily_unavailable");
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(850), "{held:?}");
    assert!(held < Duration::from_secs(5), "{held:?}");

    // clear_outage releases held requests.
    s.control(outage(OutageMode::Timeout, None));
    let token_url = s.token_url();
    let c2 = c.clone();
    let held = tokio::spawn(async move {
        let started = Instant::now();
        let status = post_basic(&c2, &token_url, &[("grant_type", "client_credentials")])
            .await
            .status();
        (status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.control(Control {
        clear_outage: Some(true),
        ..Control::default()
    });
    let (status, elapsed) = held.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_429_with_retry_after() {
    let s = start().await;
    let c = client();
    s.control(Control {
        rate_limit: Some(RateLimit {
            duration_ms: Some(400),
            retry_after_s: 7,
        }),
        ..Control::default()
    });
    let resp = post_basic(&c, &s.token_url(), &[("grant_type", "client_credentials")]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    let (_, body) = json(resp).await;
    assert_eq!(body["error"], "slow_down");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);

    s.control(Control {
        rate_limit: Some(RateLimit {
            duration_ms: None,
            retry_after_s: 1,
        }),
        ..Control::default()
    });
    assert_eq!(cc_status(&s, &c).await, StatusCode::TOO_MANY_REQUESTS);
    s.control(Control {
        clear_rate_limit: Some(true),
        ..Control::default()
    });
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_added() {
    let s = start().await;
    let c = client();
    s.control(Control {
        latency_ms: Some(300),
        ..Control::default()
    });
    let started = Instant::now();
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(290));
    s.control(Control {
        latency_ms: Some(0),
        ..Control::default()
    });
    let started = Instant::now();
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_expiry_kills_tokens_before_expires_in() {
    let s = start().await;
    let c = client();
    s.control(Control {
        early_expiry_s: Some(1),
        ..Control::default()
    });
    let t = client_credentials(&s, &c).await;
    assert_eq!(t["expires_in"], 3600);
    let a = str_of(&t, "access_token");
    assert_eq!(resource_status(&s, &c, a).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = c.get(s.resource_url()).bearer_auth(a).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));

    s.control(Control {
        early_expiry_s: Some(0),
        ..Control::default()
    });
    let t = client_credentials(&s, &c).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        resource_status(&s, &c, str_of(&t, "access_token")).await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_invalidates_everything_issued_so_far() {
    let s = start().await;
    let c = client();
    let cc = client_credentials(&s, &c).await;
    let pw = password_grant(&s, &c).await;
    s.control(Control {
        revoke_all: Some(true),
        ..Control::default()
    });
    assert_eq!(
        resource_status(&s, &c, str_of(&cc, "access_token")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        resource_status(&s, &c, str_of(&pw, "access_token")).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = refresh(&s, &c, str_of(&pw, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let pw = password_grant(&s, &c).await;
    assert_eq!(
        resource_status(&s, &c, str_of(&pw, "access_token")).await,
        StatusCode::OK
    );
    let (status, _) = refresh(&s, &c, str_of(&pw, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
}

fn date_of(resp: &reqwest::Response) -> SystemTime {
    httpdate::parse_http_date(resp.headers()["date"].to_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_skew_is_visible_in_the_date_header() {
    let s = start().await;
    let c = client();
    let resp = c.get(format!("{}/health", s.url())).send().await.unwrap();
    let now = SystemTime::now();
    let d = date_of(&resp);
    let diff = now.duration_since(d).unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_secs(3), "{diff:?}");

    s.control(Control {
        date_skew_s: Some(-3600),
        ..Control::default()
    });
    for resp in [
        c.get(format!("{}/health", s.url())).send().await.unwrap(),
        post_basic(&c, &s.token_url(), &[("grant_type", "client_credentials")]).await,
        c.get(s.resource_url()).send().await.unwrap(),
    ] {
        let behind = SystemTime::now().duration_since(date_of(&resp)).unwrap();
        assert!(
            behind > Duration::from_secs(3590) && behind < Duration::from_secs(3610),
            "{behind:?}"
        );
    }

    s.control(Control {
        date_skew_s: Some(600),
        ..Control::default()
    });
    let resp = c.get(format!("{}/health", s.url())).send().await.unwrap();
    let ahead = date_of(&resp).duration_since(SystemTime::now()).unwrap();
    assert!(ahead > Duration::from_secs(590), "{ahead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_next_token_requests() {
    let s = start().await;
    let c = client();
    let fail = |count, error: &str| Control {
        fail_next_token_requests: Some(FailNext {
            count,
            error: error.to_owned(),
        }),
        ..Control::default()
    };

    s.control(fail(2, "invalid_grant"));
    for _ in 0..2 {
        let (status, body) =
            json(post_basic(&c, &s.token_url(), &[("grant_type", "client_credentials")]).await)
                .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
    }
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);

    for (error, expected) in [
        ("server_error", StatusCode::SERVICE_UNAVAILABLE),
        ("temporarily_unavailable", StatusCode::SERVICE_UNAVAILABLE),
        ("invalid_client", StatusCode::UNAUTHORIZED),
    ] {
        s.control(fail(1, error));
        let (status, body) =
            json(post_basic(&c, &s.token_url(), &[("grant_type", "client_credentials")]).await)
                .await;
        assert_eq!(status, expected);
        assert_eq!(body["error"], error);
    }
    assert_eq!(cc_status(&s, &c).await, StatusCode::OK);
    let stats = s.stats();
    assert_eq!(stats.token_requests, 7);
    assert_eq!(stats.token_errors, 5);
    assert_eq!(stats.tokens_issued, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_rotation_knobs() {
    let s = start().await;
    let c = client();
    s.control(Control {
        default_ttl_s: Some(5),
        rotate_refresh_tokens: Some(false),
        ..Control::default()
    });
    let t = password_grant(&s, &c).await;
    assert_eq!(t["expires_in"], 5);
    let (status, body) = refresh(&s, &c, str_of(&t, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["expires_in"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoint_and_reset_stats() {
    let s = start().await;
    let c = client();
    client_credentials(&s, &c).await;
    let _ = c.get(s.resource_url()).send().await.unwrap();

    let resp = c
        .post(format!("{}/control", s.url()))
        .header("content-type", "application/json")
        .body(r#"{"latency_ms": 0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stats: Stats = resp.json().await.unwrap();
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.resource_rejections, 1);

    let resp = c
        .post(format!("{}/control", s.url()))
        .body(r#"{"no_such_knob": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let text = resp.text().await.unwrap();
    assert!(text.contains("no_such_knob"), "{text}");

    let resp = c
        .post(format!("{}/control", s.url()))
        .body(r#"{"reset_stats": true}"#)
        .send()
        .await
        .unwrap();
    let stats: Stats = resp.json().await.unwrap();
    assert_eq!(stats, Stats::default());
    assert_eq!(s.stats(), Stats::default());

    s.control(Control {
        reset_stats: Some(true),
        ..Control::default()
    });
    client_credentials(&s, &c).await;
    assert_eq!(s.stats().tokens_issued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_releases_held_requests() {
    let s = start().await;
    let c = fresh_client();
    s.control(outage(OutageMode::Timeout, None));
    let token_url = s.token_url();
    let held = tokio::spawn(async move {
        let started = Instant::now();
        let result = c
            .post(token_url)
            .basic_auth(CLIENT, Some(SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("grant_type", "client_credentials")]))
            .send()
            .await
            .map(|r| r.status());
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    let (result, elapsed) = held.await.unwrap();
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    if let Ok(status) = result {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}

#[test]
fn test_server_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + std::fmt::Debug>() {}
    assert_send_sync::<tokenlease_test_server::TestServer>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_route_sends_a_paced_endless_or_sized_body_with_any_status() {
    let s = start().await;
    let c = client();
    // Endless: read 1 MiB of it (prefix first), then hang up.
    let mut resp = c
        .post(format!(
            "{}/fault/stream/any/path?status=401&prefix=Token%20Expired",
            s.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.content_length(), None);
    let mut read = Vec::new();
    while read.len() < 1024 * 1024 {
        read.extend_from_slice(&resp.chunk().await.unwrap().expect("endless"));
    }
    drop(resp);
    assert!(read.starts_with(b"Token Expiredxxx"));
    assert!(read[13..].iter().all(|&b| b == b'x'));
    assert!(s.stats().streamed_bytes >= 1024 * 1024);

    // Sized: exactly `length` bytes, declared.
    let resp = c
        .get(format!("{}/fault/stream/x?length=100000", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.content_length(), Some(100_000));
    assert_eq!(resp.bytes().await.unwrap().len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_route_answers_the_status_in_its_path() {
    let s = start().await;
    let c = client();
    for (code, method) in [(404, "GET"), (500, "POST"), (503, "DELETE")] {
        let resp = c
            .request(
                method.parse().unwrap(),
                format!("{}/fault/status/{code}/keepalive/some-token?t=x", s.url()),
            )
            .send()
            .await
            .unwrap();
        let (status, body) = json(resp).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(body["fault"], "INJECTED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_json_replaces_the_lifetime_in_token_responses() {
    let s = start().await;
    let c = client();
    for (text, expected) in [
        (r#""3600""#, serde_json::json!("3600")),
        ("99999999999999", serde_json::json!(99_999_999_999_999u64)),
    ] {
        s.control(Control {
            expires_in_json: Some(text.to_owned()),
            ..Control::default()
        });
        let body = client_credentials(&s, &c).await;
        assert_eq!(body["expires_in"], expected);
    }
    s.control(Control {
        expires_in_json: Some(String::new()),
        ..Control::default()
    });
    assert_eq!(client_credentials(&s, &c).await["expires_in"], 3600);
}
