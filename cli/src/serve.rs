//! `tokenlease serve`: the tokens of several credentials for local clients, one manager per
//! credential shared by all of them, over a Unix domain socket (0600) and optionally over
//! loopback HTTP guarded by a per-start secret header.
//!
//! - `GET /v1/token/{name}`: `{"access_token", "token_type", "expires_at", "generation"}`.
//! - `POST /v1/token/{name}/invalidate` with `{"generation": N}`: the client got a 401 with
//!   that token; one shared refresh follows (a late report of an older token changes nothing).
//! - `GET /metrics` (Prometheus text), `GET /healthz`.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections, request headers within
//! [`HEADER_TIMEOUT`], bodies of at most [`MAX_BODY_BYTES`]; a stalled client holds its own
//! connection only. SIGTERM/SIGINT stop it; SIGHUP re-reads the credential files, keeping the
//! managers (and cached tokens) of those that did not change.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::RwLock;
use tokenlease::{Error, ErrorKind, Manager, SecretString};

/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body read (an invalidation is a few bytes).
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// The header a loopback HTTP client must send with the per-start secret.
pub const SECRET_HEADER: &str = "x-tokenlease-agent";

/// Upper bounds (seconds) of the refresh latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What the events of one manager say: failures by kind, refresh latencies.
#[derive(Default)]
struct Observed {
    failures: parking_lot::Mutex<BTreeMap<&'static str, u64>>,
    refresh_started: parking_lot::Mutex<Option<std::time::Instant>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl tokenlease::EventListener for Observed {
    fn on_event(&self, _key: &str, event: &tokenlease::Event) {
        match event {
            tokenlease::Event::RefreshStarted { .. } => {
                *self.refresh_started.lock() = Some(std::time::Instant::now());
            }
            tokenlease::Event::RefreshSucceeded {
                from_store: false, ..
            } => {
                if let Some(started) = self.refresh_started.lock().take() {
                    let seconds = started.elapsed().as_secs_f64();
                    for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
                        if seconds <= bound {
                            bucket.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    self.latency_count.fetch_add(1, Ordering::Relaxed);
                    self.latency_sum_micros
                        .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
                }
            }
            tokenlease::Event::RefreshFailed { kind, .. } => {
                *self.failures.lock().entry(kind.name()).or_insert(0) += 1;
                self.refresh_started.lock().take();
            }
            _ => {}
        }
    }
}

/// One served credential.
struct Credential {
    manager: Manager,
    file: PathBuf,
    text: String,
    served: AtomicU64,
    /// Sum of the ages (ms) of the tokens served, for the mean age at serve time.
    served_age_ms: AtomicU64,
    observed: Arc<Observed>,
}

/// Makes a manager from a configuration file's path and text.
pub type BuildManager = Box<dyn Fn(&Path, &str) -> tokenlease::Result<Manager> + Send + Sync>;

/// What the agent serves.
pub struct Agent {
    credentials: RwLock<BTreeMap<String, Arc<Credential>>>,
    build: BuildManager,
}

impl Agent {
    /// An agent for `credentials` (name → configuration file); `build` makes a manager from
    /// a file's path and text.
    pub fn new(credentials: &[(String, PathBuf)], build: BuildManager) -> tokenlease::Result<Self> {
        let agent = Self {
            credentials: RwLock::new(BTreeMap::new()),
            build,
        };
        let mut loaded = BTreeMap::new();
        for (name, file) in credentials {
            loaded.insert(name.clone(), Arc::new(agent.load(file)?));
        }
        *agent.credentials.write() = loaded;
        Ok(agent)
    }

    fn load(&self, file: &Path) -> tokenlease::Result<Credential> {
        let text = std::fs::read_to_string(file).map_err(|err| {
            Error::new(
                ErrorKind::Configuration,
                format!("cannot read {}: {}", file.display(), err.kind()),
            )
        })?;
        let manager = (self.build)(file, &text)?;
        let observed = Arc::new(Observed::default());
        manager.add_listener(observed.clone());
        Ok(Credential {
            manager,
            file: file.to_owned(),
            text,
            served: AtomicU64::new(0),
            served_age_ms: AtomicU64::new(0),
            observed,
        })
    }

    /// Re-reads every credential file: a changed one gets a new manager, an unchanged one
    /// keeps its manager and cached token; a file that no longer loads keeps the old one
    /// (and says so).
    pub fn reload(&self) {
        let current: Vec<(String, Arc<Credential>)> = self
            .credentials
            .read()
            .iter()
            .map(|(name, credential)| (name.clone(), credential.clone()))
            .collect();
        for (name, credential) in current {
            let text = std::fs::read_to_string(&credential.file).unwrap_or_default();
            if text == credential.text {
                continue;
            }
            match self.load(&credential.file) {
                Ok(fresh) => {
                    self.credentials
                        .write()
                        .insert(name.clone(), Arc::new(fresh));
                    tracing::info!(credential = %name, "configuration reloaded");
                }
                Err(err) => tracing::warn!(
                    credential = %name,
                    error = %err,
                    "configuration not reloaded; the previous one stays"
                ),
            }
        }
    }

    fn credential(&self, name: &str) -> Option<Arc<Credential>> {
        self.credentials.read().get(name).cloned()
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (request.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
            (&Method::GET, ["metrics"]) => text(StatusCode::OK, &self.metrics()),
            (&Method::GET, ["v1", "token", name]) => self.token(name).await,
            (&Method::POST, ["v1", "token", name, "invalidate"]) => {
                let name = (*name).to_owned();
                self.invalidate(&name, request).await
            }
            (_, ["v1", "token", ..] | ["metrics"] | ["healthz"]) => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "wrong method",
            ),
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }

    async fn token(&self, name: &str) -> Response<Full<Bytes>> {
        let Some(credential) = self.credential(name) else {
            return unknown(name);
        };
        credential.served.fetch_add(1, Ordering::Relaxed);
        match credential.manager.token().await {
            Ok(token) => {
                let age = tokenlease::clock::system_clock()
                    .now()
                    .saturating_duration_since(token.obtained_at());
                credential.served_age_ms.fetch_add(
                    u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "access_token": token.value().expose(),
                        "token_type": token.token_type(),
                        "expires_at": crate::rfc3339(token.expires_at_wall()),
                        "generation": token.generation(),
                    }),
                )
            }
            Err(err) => {
                let status = if err.is_transient() || err.kind() == ErrorKind::Expired {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                };
                json_error(status, err.kind().name(), err.message())
            }
        }
    }

    async fn invalidate(&self, name: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(credential) = self.credential(name) else {
            return unknown(name);
        };
        let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the request body is larger than 4 KiB",
                )
            }
        };
        let generation = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value["generation"].as_u64());
        let Some(generation) = generation else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give {\"generation\": N} of the rejected token",
            );
        };
        let invalidated = credential.manager.invalidate_generation(generation);
        json(
            StatusCode::OK,
            &serde_json::json!({ "invalidated": invalidated }),
        )
    }

    /// Prometheus text format.
    fn metrics(&self) -> String {
        let credentials = self.credentials.read();
        // Events reach the listeners on core's event thread: let the queued ones land
        // (bounded) so a scrape right after a refresh counts it.
        if let Some(credential) = credentials.values().next() {
            credential.manager.flush_events(Duration::from_millis(200));
        }
        let mut out = String::new();
        let mut family =
            |name: &str, kind: &str, help: &str, value: &dyn Fn(&Credential) -> f64| {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                for (credential_name, credential) in credentials.iter() {
                    out.push_str(&format!(
                        "{name}{{credential=\"{}\"}} {}\n",
                        escape_label(credential_name),
                        value(credential)
                    ));
                }
            };
        family(
            "tokenlease_agent_requests_total",
            "counter",
            "Token requests served to clients.",
            &|c| c.served.load(Ordering::Relaxed) as f64,
        );
        family(
            "tokenlease_fetches_total",
            "counter",
            "Tokens obtained with the primary grant.",
            &|c| c.manager.status().counters.fetches as f64,
        );
        family(
            "tokenlease_refreshes_total",
            "counter",
            "Tokens obtained with a refresh token.",
            &|c| c.manager.status().counters.refreshes as f64,
        );
        family(
            "tokenlease_failures_total",
            "counter",
            "Failed refreshes.",
            &|c| c.manager.status().counters.failures as f64,
        );
        family(
            "tokenlease_served_stale_total",
            "counter",
            "Reads served a token in its refresh window.",
            &|c| c.manager.status().counters.served_stale as f64,
        );
        family(
            "tokenlease_token_age_at_serve_seconds_sum",
            "counter",
            "Sum of the ages of the tokens served (divide by the requests for the mean).",
            &|c| c.served_age_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        family(
            "tokenlease_token_expires_in_seconds",
            "gauge",
            "Seconds until the cached token expires (0: none).",
            &|c| {
                c.manager
                    .status()
                    .expires_at
                    .and_then(|at| at.duration_since(SystemTime::now()).ok())
                    .map_or(0.0, |left| left.as_secs_f64())
            },
        );
        out.push_str("# HELP tokenlease_failures_by_kind_total Failed refreshes by error kind.\n");
        out.push_str("# TYPE tokenlease_failures_by_kind_total counter\n");
        for (name, credential) in credentials.iter() {
            for (kind, count) in credential.observed.failures.lock().iter() {
                out.push_str(&format!(
                    "tokenlease_failures_by_kind_total{{credential=\"{}\",kind=\"{kind}\"}} {count}\n",
                    escape_label(name)
                ));
            }
        }
        out.push_str(
            "# HELP tokenlease_refresh_seconds How long refreshes that reached the source took.\n",
        );
        out.push_str("# TYPE tokenlease_refresh_seconds histogram\n");
        for (name, credential) in credentials.iter() {
            let label = escape_label(name);
            let observed = &credential.observed;
            for (bucket, bound) in observed.latency_buckets.iter().zip(LATENCY_BUCKETS) {
                out.push_str(&format!(
                    "tokenlease_refresh_seconds_bucket{{credential=\"{label}\",le=\"{bound}\"}} {}\n",
                    bucket.load(Ordering::Relaxed)
                ));
            }
            let count = observed.latency_count.load(Ordering::Relaxed);
            out.push_str(&format!(
                "tokenlease_refresh_seconds_bucket{{credential=\"{label}\",le=\"+Inf\"}} {count}\n\
                 tokenlease_refresh_seconds_sum{{credential=\"{label}\"}} {}\n\
                 tokenlease_refresh_seconds_count{{credential=\"{label}\"}} {count}\n",
                observed.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            ));
        }
        out
    }
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unknown(name: &str) -> Response<Full<Bytes>> {
    json_error(
        StatusCode::NOT_FOUND,
        "unknown_credential",
        &format!(
            "no credential named {:?}",
            name.chars().take(64).collect::<String>()
        ),
    )
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "text/plain; version=0.0.4".parse().unwrap());
    response
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("cache-control", "no-store".parse().unwrap());
    response
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({ "error": error, "message": message }),
    )
}

/// Serves one connection; over HTTP, a request without the secret header is refused.
async fn serve_connection<S>(agent: Arc<Agent>, stream: S, secret: Option<Arc<SecretString>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let agent = agent.clone();
        let secret = secret.clone();
        async move {
            if let Some(secret) = &secret {
                let given = request
                    .headers()
                    .get(SECRET_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("");
                if !secret.matches(given) {
                    return Ok::<_, Infallible>(json_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "send the agent's secret in x-tokenlease-agent",
                    ));
                }
            }
            Ok(agent.handle(request).await)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Where the agent listens.
pub struct Listeners {
    /// The Unix domain socket (created 0600 in a 0700 directory).
    pub socket: PathBuf,
    /// Loopback HTTP port (0: any), with the secret file written next to the socket.
    pub http_port: Option<u16>,
}

/// Structured logs (JSON lines on stderr; `TOKENLEASE_LOG` filters, default `info`). Token
/// values never reach a log: core logs keys, kinds and endpoints only.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOKENLEASE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(agent: Arc<Agent>, listeners: Listeners) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::signal::unix::{signal, SignalKind};
    let dir = listeners
        .socket
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let _ = std::fs::remove_file(&listeners.socket);
    let unix = tokio::net::UnixListener::bind(&listeners.socket)?;
    std::fs::set_permissions(&listeners.socket, std::fs::Permissions::from_mode(0o600))?;
    println!("TOKENLEASE_AGENT_SOCKET={}", listeners.socket.display());
    let http = match listeners.http_port {
        Some(port) => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            let secret = {
                use rand_secret::fresh;
                fresh()
            };
            let secret_file = dir.join("agent.secret");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&secret_file)?;
                file.write_all(secret.expose().as_bytes())?;
            }
            println!("TOKENLEASE_AGENT_HTTP=http://{}", listener.local_addr()?);
            println!("TOKENLEASE_AGENT_SECRET_FILE={}", secret_file.display());
            Some((listener, Arc::new(secret)))
        }
        None => None,
    };
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut connections = tokio::task::JoinSet::new();
    tracing::info!(
        socket = %listeners.socket.display(),
        credentials = agent.credentials.read().len(),
        http = http.is_some(),
        "serving"
    );
    loop {
        let slot = tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                agent.reload();
                continue;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                agent.reload();
            }
            accepted = unix.accept() => {
                if let Ok((stream, _)) = accepted {
                    let agent = agent.clone();
                    connections.spawn(async move {
                        serve_connection(agent, stream, None).await;
                        drop(slot);
                    });
                }
            }
            accepted = async {
                match &http {
                    Some((listener, _)) => listener.accept().await.map(|(stream, _)| stream),
                    None => std::future::pending().await,
                }
            } => {
                if let (Ok(stream), Some((_, secret))) = (accepted, &http) {
                    let agent = agent.clone();
                    let secret = secret.clone();
                    connections.spawn(async move {
                        serve_connection(agent, stream, Some(secret)).await;
                        drop(slot);
                    });
                }
            }
        }
    }
    tracing::info!("stopping");
    connections.abort_all();
    let _ = std::fs::remove_file(&listeners.socket);
    if http.is_some() {
        let _ = std::fs::remove_file(dir.join("agent.secret"));
    }
    Ok(())
}

/// A per-start secret: 256 random bits, base64url.
mod rand_secret {
    use tokenlease::SecretString;

    pub(super) fn fresh() -> SecretString {
        let mut bytes = [0u8; 32];
        let mut file = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
        std::io::Read::read_exact(&mut file, &mut bytes).expect("random bytes");
        SecretString::new(
            bytes
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>(),
        )
    }
}
