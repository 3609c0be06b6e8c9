//! `tokenlease-test-server`: runs the loopback OAuth2 test server for other languages' tests.
//!
//! Usage: `tokenlease-test-server [--port N] [--max-lifetime-s N] [--default-ttl-s N] [--no-rotation]
//! [--time-scale F] [--session-idle-timeout-s N] [--session-absolute-timeout-s N]
//! [--jwt-bearer-keys FILE]`
//!
//! `--jwt-bearer-keys FILE`: a JSON array of `{"issuer": ISS, "public_key_pem": PEM}` the
//! JWT-bearer grant accepts (see `ServerConfig::jwt_bearer_keys`).
//!
//! Prints exactly one first line `TOKENLEASE_TEST_SERVER_URL=http://127.0.0.1:PORT` to stdout,
//! then serves until the maximum lifetime elapses (`0` = no limit) or SIGTERM/SIGINT arrives,
//! and exits 0.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use tokenlease_test_server::{ServerConfig, TestServer};

const USAGE: &str = "usage: tokenlease-test-server [--port N] [--max-lifetime-s N] \
                     [--default-ttl-s N] [--no-rotation] [--time-scale F] \
                     [--session-idle-timeout-s N] [--session-absolute-timeout-s N] \
                     [--jwt-bearer-keys FILE]";

struct Args {
    port: u16,
    max_lifetime_s: u64,
    default_ttl_s: u64,
    rotation: bool,
    time_scale: f64,
    session_idle_timeout_s: u64,
    session_absolute_timeout_s: u64,
    jwt_bearer_keys: Vec<(String, String)>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        port: 0,
        max_lifetime_s: 600,
        default_ttl_s: 3600,
        rotation: true,
        time_scale: 1.0,
        session_idle_timeout_s: 900,
        session_absolute_timeout_s: 3600,
        jwt_bearer_keys: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--port" => {
                let v = value("--port")?;
                args.port = v.parse().map_err(|_| format!("bad --port {v:?}"))?;
            }
            "--max-lifetime-s" => {
                let v = value("--max-lifetime-s")?;
                args.max_lifetime_s = v
                    .parse()
                    .map_err(|_| format!("bad --max-lifetime-s {v:?}"))?;
            }
            "--default-ttl-s" => {
                let v = value("--default-ttl-s")?;
                args.default_ttl_s = v
                    .parse()
                    .map_err(|_| format!("bad --default-ttl-s {v:?}"))?;
            }
            "--no-rotation" => args.rotation = false,
            "--time-scale" => {
                let v = value("--time-scale")?;
                args.time_scale = v
                    .parse()
                    .ok()
                    .filter(|f: &f64| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| format!("bad --time-scale {v:?}"))?;
            }
            "--session-idle-timeout-s" => {
                let v = value("--session-idle-timeout-s")?;
                args.session_idle_timeout_s = v
                    .parse()
                    .map_err(|_| format!("bad --session-idle-timeout-s {v:?}"))?;
            }
            "--session-absolute-timeout-s" => {
                let v = value("--session-absolute-timeout-s")?;
                args.session_absolute_timeout_s = v
                    .parse()
                    .map_err(|_| format!("bad --session-absolute-timeout-s {v:?}"))?;
            }
            "--jwt-bearer-keys" => {
                let path = value("--jwt-bearer-keys")?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|err| format!("cannot read --jwt-bearer-keys {path:?}: {err}"))?;
                let keys: Vec<serde_json::Value> = serde_json::from_str(&text)
                    .map_err(|err| format!("--jwt-bearer-keys {path:?}: {err}"))?;
                for key in keys {
                    let (Some(issuer), Some(pem)) =
                        (key["issuer"].as_str(), key["public_key_pem"].as_str())
                    else {
                        return Err(format!(
                            "--jwt-bearer-keys {path:?}: each entry needs issuer and public_key_pem"
                        ));
                    };
                    args.jwt_bearer_keys
                        .push((issuer.to_owned(), pem.to_owned()));
                }
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(args))
}

/// Resolves on SIGTERM or SIGINT. Handlers are installed when this is called (before the URL
/// line is printed), so a signal sent right after reading the line is never missed.
#[cfg(unix)]
fn termination() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn termination() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn run(args: Args) -> std::io::Result<()> {
    let max_lifetime = (args.max_lifetime_s > 0).then(|| Duration::from_secs(args.max_lifetime_s));
    let config = ServerConfig {
        default_ttl: Duration::from_secs(args.default_ttl_s),
        rotate_refresh_tokens: args.rotation,
        time_scale: args.time_scale,
        session_idle_timeout: Duration::from_secs(args.session_idle_timeout_s),
        session_absolute_timeout: Duration::from_secs(args.session_absolute_timeout_s),
        jwt_bearer_keys: args.jwt_bearer_keys,
        // The lifetime is enforced below, together with the signals.
        max_lifetime: None,
        ..ServerConfig::default()
    };
    let terminated = termination()?;
    let server = TestServer::start_on_port(config, args.port).await?;
    {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the server.
        let _ = writeln!(out, "TOKENLEASE_TEST_SERVER_URL={}", server.url());
        let _ = out.flush();
    }
    let lifetime = async {
        match max_lifetime {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = lifetime => {}
        _ = terminated => {}
    }
    server.shutdown();
    // Let in-flight connections finish their graceful shutdown briefly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tokenlease-test-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokenlease-test-server: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenlease-test-server: {e}");
            ExitCode::FAILURE
        }
    }
}
