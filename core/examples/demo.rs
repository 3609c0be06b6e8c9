//! The tokenlease lifecycle in half a minute, against the bundled test token server.
//!
//! A batch job calls a protected API 300 times while tokens live 8 seconds. Along the
//! way the token endpoint goes down for 3 s, and the server revokes every token early.
//! tokenlease refreshes in the background (rotating refresh tokens), serves the cached
//! token through the outage, and re-authenticates once when the revoked token is rejected.
//!
//! Run: `cargo run -p tokenlease --example demo`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenlease::http::{is_token_rejected, ClientCredentials};
use tokenlease::{Event, Manager, Rejection, RetryError, Token};
use tokenlease_test_server::{Control, Outage, OutageMode, ServerConfig, TestServer};

const RECORDS: usize = 300;
const PAUSE_BETWEEN_RECORDS: Duration = Duration::from_millis(80);

#[derive(Debug)]
enum ApiError {
    TokenRejected,
    Failed(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::TokenRejected => f.write_str("the API rejected the token"),
            ApiError::Failed(message) => f.write_str(message),
        }
    }
}

impl Rejection for ApiError {
    fn is_token_rejected(&self) -> bool {
        matches!(self, ApiError::TokenRejected)
    }
}

fn upload(
    client: &reqwest::blocking::Client,
    url: &str,
    token: &Token,
    record: usize,
) -> Result<(), ApiError> {
    let response = client
        .post(url)
        .header(
            "authorization",
            format!("{} {}", token.token_type(), token.value().expose()),
        )
        .body(format!("{{\"record\":{record}}}"))
        .send()
        .map_err(|err| ApiError::Failed(err.to_string()))?;
    if is_token_rejected(response.status(), response.headers()) {
        return Err(ApiError::TokenRejected);
    }
    if !response.status().is_success() {
        return Err(ApiError::Failed(format!(
            "API answered {}",
            response.status()
        )));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestServer::start_background(ServerConfig {
        default_ttl: Duration::from_secs(8),
        refresh_for_client_credentials: true,
        max_lifetime: Some(Duration::from_secs(300)),
        ..ServerConfig::default()
    })?;
    println!("test token server on {}", server.url());

    let refreshes_seen = Arc::new(AtomicU64::new(0));
    let counter = refreshes_seen.clone();
    let source = ClientCredentials::new(&server.token_url(), "demo-client", "demo-secret")?
        .revocation_url(&server.revoke_url())?;
    let manager = Manager::builder(source)
        .key("demo")
        .listener(Arc::new(move |_key: &str, event: &Event| match event {
            Event::RefreshSucceeded { generation, .. } => {
                counter.fetch_add(1, Ordering::Relaxed);
                println!("  [event] token generation {generation} installed");
            }
            Event::RefreshFailed { kind, consecutive_failures, .. } => {
                println!("  [event] refresh failed ({kind}), attempt {consecutive_failures}; still serving the cached token");
            }
            Event::Invalidated { generation } => {
                println!("  [event] generation {generation} rejected by the API; refreshing once")
            }
            _ => {}
        }))
        .build();

    let client = reqwest::blocking::Client::new();
    let api = format!("{}/api/resource", server.url());
    let started = Instant::now();
    let mut failures = 0usize;
    for record in 1..=RECORDS {
        match record {
            60 => {
                println!("  [fault] token endpoint down for 3 s");
                server.control(Control {
                    outage: Some(Outage {
                        mode: OutageMode::Status503,
                        duration_ms: Some(3000),
                    }),
                    ..Control::default()
                });
            }
            180 => {
                println!("  [fault] server revokes every token early");
                server.control(Control {
                    revoke_all: Some(true),
                    ..Control::default()
                });
            }
            _ => {}
        }
        match manager.with_retry_blocking(|token| upload(&client, &api, token, record)) {
            Ok(()) => {}
            Err(RetryError::Token(err)) => {
                failures += 1;
                eprintln!("record {record}: no token: {err}");
            }
            Err(RetryError::Operation(err)) => {
                failures += 1;
                eprintln!("record {record}: {err}");
            }
        }
        if record % 50 == 0 {
            println!(
                "progress: {record}/{RECORDS} records, {failures} failures, {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(PAUSE_BETWEEN_RECORDS);
    }

    manager.revoke_blocking()?;
    let stats = server.stats();
    let status = manager.status();
    println!(
        "SUMMARY records={RECORDS} failures={failures} token_requests={} refresh_token_grants={} \
         tokens_installed={} served_stale={} invalidations={} waits={} elapsed={:.1}s",
        stats.token_requests,
        stats.grants.get("refresh_token").copied().unwrap_or(0),
        refreshes_seen.load(Ordering::Relaxed),
        status.counters.served_stale,
        status.counters.invalidations,
        status.counters.waits,
        started.elapsed().as_secs_f64(),
    );
    if failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}
