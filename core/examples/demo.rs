//! The tokenlease lifecycle in half a minute, against the bundled test token server.
//!
//! A batch job uploads 300 records through tokenlease's authorized HTTP client while the
//! server issues 8-second tokens with rotating refresh tokens. Along the way the token
//! endpoint goes down for 3 s and the server revokes every token early. tokenlease
//! refreshes in the background (rotating the refresh token each time), serves the cached
//! token through the outage, and re-authenticates once when the revoked token is rejected.
//! The job must end with 0 failed records.
//!
//! Run: `./scripts/demo` (or `cargo run -p tokenlease --example demo`)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokenlease::client::{Attempts, AuthorizedClient};
use tokenlease::Event;
use tokenlease_test_server::{Control, Outage, OutageMode, ServerConfig, TestServer};

const RECORDS: u64 = 300;

/// Prints above the progress bar, or plainly when output isn't a terminal (CI logs).
fn say(progress: &ProgressBar, line: impl Into<String>) {
    let line = line.into();
    if progress.is_hidden() {
        println!("{line}");
    } else {
        progress.println(line);
    }
}
const PAUSE_BETWEEN_RECORDS: Duration = Duration::from_millis(80);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestServer::start_background(ServerConfig {
        default_ttl: Duration::from_secs(8),
        refresh_for_client_credentials: true,
        max_lifetime: Some(Duration::from_secs(300)),
        ..ServerConfig::default()
    })?;
    let config = format!(
        r#"{{"key": "demo",
            "source": {{"type": "oauth2", "token_url": "{}", "revocation_url": "{}",
                        "client_id": "demo-client", "client_secret": "demo-secret",
                        "grant": {{"type": "client_credentials"}}}}}}"#,
        server.token_url(),
        server.revoke_url()
    );
    let client = AuthorizedClient::from_config(&config)?;
    let progress = ProgressBar::new(RECORDS);
    progress.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} records  {msg}")?
            .progress_chars("=> "),
    );
    say(
        &progress,
        format!("test token server on {} (8-second tokens)", server.url()),
    );

    let installed = Arc::new(AtomicU64::new(0));
    let events = (progress.clone(), installed.clone());
    client.manager().add_listener(Arc::new(move |_key: &str, event: &Event| {
        let (progress, installed) = &events;
        match event {
            Event::RefreshSucceeded { generation, .. } => {
                installed.fetch_add(1, Ordering::Relaxed);
                say(progress, format!("  token generation {generation} installed"));
            }
            Event::RefreshFailed { kind, consecutive_failures, .. } => say(progress, format!(
                "  refresh failed ({kind}), attempt {consecutive_failures}: still serving the cached token"
            )),
            Event::Invalidated { generation } => say(progress, format!(
                "  the API rejected generation {generation}: invalidated, refreshing once"
            )),
            _ => {}
        }
    }));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (mut failures, mut retried) = (0u64, 0u64);
    for record in 1..=RECORDS {
        match record {
            60 => {
                say(&progress, "  [fault] token endpoint down for 3 s");
                server.control(Control {
                    outage: Some(Outage {
                        mode: OutageMode::Status503,
                        duration_ms: Some(3000),
                    }),
                    ..Control::default()
                });
            }
            180 => {
                say(&progress, "  [fault] the server revokes every token early");
                server.control(Control {
                    revoke_all: Some(true),
                    ..Control::default()
                });
            }
            _ => {}
        }
        let request = client
            .request(reqwest::Method::POST, &server.resource_url())
            .body(format!("{{\"record\": {record}}}"))
            .build()?;
        match runtime.block_on(client.execute_counted(request)) {
            Ok((response, attempts)) if response.status().is_success() => {
                if attempts == Attempts::RetriedAfterRejection {
                    retried += 1;
                }
            }
            Ok((response, _)) => {
                failures += 1;
                say(
                    &progress,
                    format!("record {record}: the API answered {}", response.status()),
                );
            }
            Err(err) => {
                failures += 1;
                say(&progress, format!("record {record}: {err}"));
            }
        }
        let status = client.manager().status();
        progress.set_message(format!(
            "failures {failures}  token generation {}  {:.1} s",
            status.generation,
            started.elapsed().as_secs_f64()
        ));
        progress.inc(1);
        if progress.is_hidden() && record % 50 == 0 {
            say(
                &progress,
                format!("progress: {record}/{RECORDS} records, {failures} failures"),
            );
        }
        std::thread::sleep(PAUSE_BETWEEN_RECORDS);
    }
    progress.finish();
    runtime.block_on(client.manager().revoke())?;

    let stats = server.stats();
    let status = client.manager().status();
    let token_reads = RECORDS + retried;
    println!(
        "SUMMARY records={RECORDS} failures={failures} token_requests={} refresh_token_grants={} \
         tokens_installed={} served_from_cache={} served_stale={} retried_after_rejection={retried} \
         elapsed={:.1}s",
        stats.token_requests,
        stats.grants.get("refresh_token").copied().unwrap_or(0),
        installed.load(Ordering::Relaxed),
        token_reads.saturating_sub(status.counters.waits),
        status.counters.served_stale,
        started.elapsed().as_secs_f64(),
    );
    if failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}
