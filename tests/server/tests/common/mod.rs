//! Shared helpers for the HTTP tests.

#![allow(dead_code)]

use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use tokenlease_test_server::{ServerConfig, TestServer};

pub const CLIENT: &str = "demo-client";
pub const SECRET: &str = "demo-secret";

pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A client that never reuses connections.
pub fn fresh_client() -> Client {
    Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

pub async fn start() -> TestServer {
    start_with(ServerConfig::default()).await
}

pub async fn start_with(config: ServerConfig) -> TestServer {
    TestServer::start(config).await.expect("start server")
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// POSTs a form without client authentication.
pub async fn post_form(c: &Client, url: &str, pairs: &[(&str, &str)]) -> Response {
    c.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send()
        .await
        .expect("send")
}

/// POSTs a form with client_secret_basic.
pub async fn post_basic(c: &Client, url: &str, pairs: &[(&str, &str)]) -> Response {
    c.post(url)
        .basic_auth(CLIENT, Some(SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send()
        .await
        .expect("send")
}

pub async fn json(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.json::<Value>().await.expect("json body");
    (status, body)
}

pub async fn client_credentials(s: &TestServer, c: &Client) -> Value {
    let (status, body) =
        json(post_basic(c, &s.token_url(), &[("grant_type", "client_credentials")]).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

pub async fn password_grant(s: &TestServer, c: &Client) -> Value {
    let (status, body) = json(
        post_basic(
            c,
            &s.token_url(),
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "wonderland"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

pub async fn refresh(s: &TestServer, c: &Client, refresh_token: &str) -> (StatusCode, Value) {
    json(
        post_basic(
            c,
            &s.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await,
    )
    .await
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// GET /api/resource with a bearer token; returns the status.
pub async fn resource_status(s: &TestServer, c: &Client, token: &str) -> StatusCode {
    c.get(s.resource_url())
        .bearer_auth(token)
        .send()
        .await
        .expect("send")
        .status()
}
