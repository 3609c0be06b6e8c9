//! One process of a fleet sharing a token store: builds a manager (OAuth2 client
//! credentials + a file or Redis store), runs N threads calling `token_blocking()` in a loop
//! for a while, and prints what happened.
//!
//! ```text
//! cargo run --example fleet_worker -- --token-url http://127.0.0.1:PORT/oauth/token \
//!     --store file:/tmp/fleet-tokens --threads 16 --duration-ms 10000
//! ```
//!
//! Options: `--store file:DIR`, `--store redis:URL` (feature `redis`) or `--store memory`
//! (no sharing, for comparison), `--threads N`,
//! `--duration-ms MS` (0: one call), `--pause-us US` between calls of one thread,
//! `--key KEY`, `--advisory-ms MS` and `--mandatory-ms MS` (refresh windows),
//! `--lease-ttl-ms MS`, `--lease-wait-ms MS`. With `TOKENLEASE_FLEET_KEY` (base64 of 32
//! bytes) set, records are encrypted (and so keep their refresh token).
//!
//! Output, one line each: `fleet-worker key=value ...` (counts), `fleet-token HASH
//! EXPIRES_MS` per distinct token seen (a hash, never the value), `fleet-requested HASH
//! EXPIRES_MS` per token this process received from the token endpoint (served or not: a
//! background refresh that ends as the run stops is never served), `fleet-error KIND
//! MESSAGE` for the first errors. The integration tests (`tests/fleet.rs`) and the fleet
//! benchmark include this file as a module and run it in child processes.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokenlease::oauth2::ClientCredentials;
use tokenlease::{Manager, Policy, Store};

/// What one worker process does.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub token_url: String,
    pub store: String,
    pub key: String,
    pub threads: usize,
    pub duration: Duration,
    pub pause: Duration,
    pub advisory: Duration,
    pub mandatory: Duration,
    pub lease_ttl: Duration,
    pub lease_wait: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            token_url: String::new(),
            store: String::new(),
            key: "fleet".to_owned(),
            threads: 16,
            duration: Duration::from_secs(10),
            pause: Duration::from_millis(2),
            advisory: Duration::from_secs(1),
            mandatory: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            lease_wait: Duration::from_secs(10),
        }
    }
}

impl WorkerOptions {
    /// Parses `--name value` pairs.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut options = Self::default();
        let mut args = args.into_iter();
        while let Some(name) = args.next() {
            let value = args.next().ok_or_else(|| format!("{name} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{name}: not a number"))
            };
            match name.as_str() {
                "--token-url" => options.token_url = value.clone(),
                "--store" => options.store = value.clone(),
                "--key" => options.key = value.clone(),
                "--threads" => options.threads = number()? as usize,
                "--duration-ms" => options.duration = Duration::from_millis(number()?),
                "--pause-us" => options.pause = Duration::from_micros(number()?),
                "--advisory-ms" => options.advisory = Duration::from_millis(number()?),
                "--mandatory-ms" => options.mandatory = Duration::from_millis(number()?),
                "--lease-ttl-ms" => options.lease_ttl = Duration::from_millis(number()?),
                "--lease-wait-ms" => options.lease_wait = Duration::from_millis(number()?),
                other => return Err(format!("unknown option {other}")),
            }
        }
        if options.token_url.is_empty() || options.store.is_empty() {
            return Err("--token-url and --store are required".to_owned());
        }
        Ok(options)
    }

    /// The options as command-line arguments (inverse of [`WorkerOptions::parse`]).
    pub fn to_args(&self) -> Vec<String> {
        let ms = |d: Duration| d.as_millis().to_string();
        [
            ("--token-url", self.token_url.clone()),
            ("--store", self.store.clone()),
            ("--key", self.key.clone()),
            ("--threads", self.threads.to_string()),
            ("--duration-ms", ms(self.duration)),
            ("--pause-us", self.pause.as_micros().to_string()),
            ("--advisory-ms", ms(self.advisory)),
            ("--mandatory-ms", ms(self.mandatory)),
            ("--lease-ttl-ms", ms(self.lease_ttl)),
            ("--lease-wait-ms", ms(self.lease_wait)),
        ]
        .into_iter()
        .flat_map(|(name, value)| [name.to_owned(), value])
        .collect()
    }
}

/// What one worker process saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerReport {
    pub pid: u32,
    pub ok: u64,
    pub errors: u64,
    /// Errors while a token this process had already received was still valid.
    pub errors_with_valid_token: u64,
    pub fetches: u64,
    pub refreshes: u64,
    pub store_loads: u64,
    pub store_errors: u64,
    /// Time to the first token, µs (store read at start-up, or a fetch).
    pub first_token_us: u64,
    /// Distinct tokens seen: hash of the value → expiry (wall ms).
    pub tokens: HashMap<u64, u64>,
    /// Tokens this process received from the token endpoint: hash → expiry (wall ms).
    pub requested: HashMap<u64, u64>,
    /// The first few errors, as `KIND message`.
    pub error_samples: Vec<String>,
}

impl WorkerReport {
    /// The report as printed lines.
    pub fn to_lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "fleet-worker pid={} ok={} errors={} errors_with_valid_token={} fetches={} refreshes={} store_loads={} store_errors={} first_token_us={}",
            self.pid,
            self.ok,
            self.errors,
            self.errors_with_valid_token,
            self.fetches,
            self.refreshes,
            self.store_loads,
            self.store_errors,
            self.first_token_us
        )];
        let mut tokens: Vec<_> = self.tokens.iter().collect();
        tokens.sort_by_key(|(_, expires)| **expires);
        lines.extend(
            tokens
                .into_iter()
                .map(|(hash, expires)| format!("fleet-token {hash:016x} {expires}")),
        );
        let mut requested: Vec<_> = self.requested.iter().collect();
        requested.sort_by_key(|(_, expires)| **expires);
        lines.extend(
            requested
                .into_iter()
                .map(|(hash, expires)| format!("fleet-requested {hash:016x} {expires}")),
        );
        lines.extend(
            self.error_samples
                .iter()
                .map(|sample| format!("fleet-error {sample}")),
        );
        lines
    }

    /// Parses a worker's output (other lines are ignored); `None` without a summary line.
    pub fn parse(output: &str) -> Option<Self> {
        let mut report = WorkerReport::default();
        let mut found = false;
        for line in output.lines() {
            if let Some(rest) = line.strip_prefix("fleet-worker ") {
                found = true;
                for pair in rest.split_whitespace() {
                    let (name, value) = pair.split_once('=')?;
                    let value: u64 = value.parse().ok()?;
                    match name {
                        "pid" => report.pid = value as u32,
                        "ok" => report.ok = value,
                        "errors" => report.errors = value,
                        "errors_with_valid_token" => report.errors_with_valid_token = value,
                        "fetches" => report.fetches = value,
                        "refreshes" => report.refreshes = value,
                        "store_loads" => report.store_loads = value,
                        "store_errors" => report.store_errors = value,
                        "first_token_us" => report.first_token_us = value,
                        _ => {}
                    }
                }
            } else if let Some(rest) = line.strip_prefix("fleet-token ") {
                let (hash, expires) = rest.split_once(' ')?;
                report.tokens.insert(
                    u64::from_str_radix(hash, 16).ok()?,
                    expires.trim().parse().ok()?,
                );
            } else if let Some(rest) = line.strip_prefix("fleet-requested ") {
                let (hash, expires) = rest.split_once(' ')?;
                report.requested.insert(
                    u64::from_str_radix(hash, 16).ok()?,
                    expires.trim().parse().ok()?,
                );
            } else if let Some(rest) = line.strip_prefix("fleet-error ") {
                report.error_samples.push(rest.to_owned());
            }
        }
        found.then_some(report)
    }
}

fn wall_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn open_store(spec: &str) -> tokenlease::Result<Arc<dyn Store>> {
    let key = match std::env::var("TOKENLEASE_FLEET_KEY") {
        Ok(_) => Some(tokenlease::EncryptionKey::from_env("TOKENLEASE_FLEET_KEY")?),
        Err(_) => None,
    };
    if spec == "memory" {
        // Peers without a shared store: each process fetches for itself.
        return Ok(Arc::new(tokenlease::MemoryStore::new()));
    }
    if let Some(dir) = spec.strip_prefix("file:") {
        return Ok(Arc::new(match key {
            Some(key) => tokenlease::FileStore::open_encrypted(dir, key)?,
            None => tokenlease::FileStore::open(dir)?,
        }));
    }
    #[cfg(feature = "redis")]
    if let Some(url) = spec.strip_prefix("redis:") {
        return Ok(Arc::new(match key {
            Some(key) => tokenlease::RedisStore::open_encrypted(url, Some("fleet:"), key)?,
            None => tokenlease::RedisStore::open(url, Some("fleet:"))?,
        }));
    }
    Err(tokenlease::Error::new(
        tokenlease::ErrorKind::Configuration,
        format!("unknown store {spec:?} (file:DIR or redis:URL)"),
    ))
}

fn value_hash(value: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The worker's source: the OAuth2 client-credentials source, recording every token the
/// token endpoint handed out to this process (whether or not a caller ever gets it).
#[derive(Debug)]
pub struct RecordingSource {
    inner: tokenlease::oauth2::OAuth2Source,
    /// Hash of the value → expiry (wall ms, when the endpoint said).
    pub requested: Mutex<HashMap<u64, u64>>,
    /// Source calls running now.
    pub running: AtomicU64,
}

impl RecordingSource {
    fn record(
        &self,
        result: tokenlease::Result<tokenlease::FetchedToken>,
    ) -> tokenlease::Result<tokenlease::FetchedToken> {
        if let Ok(token) = &result {
            let expires = match token.lifetime {
                tokenlease::Lifetime::ExpiresIn(lifetime) => wall_ms(SystemTime::now() + lifetime),
                tokenlease::Lifetime::ExpiresAt(at) => wall_ms(at),
                tokenlease::Lifetime::Unknown => 0,
            };
            self.requested
                .lock()
                .unwrap()
                .insert(value_hash(token.value.expose()), expires);
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

#[async_trait::async_trait]
impl tokenlease::Source for RecordingSource {
    async fn fetch(&self) -> tokenlease::Result<tokenlease::FetchedToken> {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.record(self.inner.fetch().await)
    }

    async fn refresh(
        &self,
        refresh_token: &tokenlease::SecretString,
    ) -> tokenlease::Result<tokenlease::FetchedToken> {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.record(self.inner.refresh(refresh_token).await)
    }
}

/// Builds the manager a worker uses.
pub fn build_manager(options: &WorkerOptions) -> tokenlease::Result<Manager> {
    Ok(build_recording_manager(options)?.0)
}

/// Builds the manager a worker uses, with its recording source.
pub fn build_recording_manager(
    options: &WorkerOptions,
) -> tokenlease::Result<(Manager, Arc<RecordingSource>)> {
    let source = Arc::new(RecordingSource {
        inner: ClientCredentials::new(&options.token_url, "demo-client", "demo-secret")?,
        requested: Mutex::new(HashMap::new()),
        running: AtomicU64::new(0),
    });
    let policy = Policy::builder()
        .advisory_window(0.25, options.advisory, options.advisory)
        .mandatory_window(0.1, options.mandatory, options.mandatory)
        .lease(options.lease_ttl, options.lease_wait)
        .build()?;
    let manager = Manager::builder_from_arc(source.clone())
        .key(options.key.clone())
        .policy(policy)
        .store(open_store(&options.store)?)
        .build();
    Ok((manager, source))
}

/// Runs the worker: threads calling `token_blocking()` until the duration has passed.
pub fn run_worker(options: &WorkerOptions) -> tokenlease::Result<WorkerReport> {
    let started = Instant::now();
    let (manager, source) = build_recording_manager(options)?;
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let errors_with_valid_token = AtomicU64::new(0);
    let valid_until_ms = AtomicU64::new(0);
    let first_token_us = AtomicU64::new(0);
    let tokens = Mutex::new(HashMap::new());
    let samples = Mutex::new(Vec::new());
    let deadline = started + options.duration;
    std::thread::scope(|scope| {
        for _ in 0..options.threads.max(1) {
            scope.spawn(|| {
                let mut last_hash = 0u64;
                loop {
                    match manager.token_blocking() {
                        Ok(token) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let _ = first_token_us.compare_exchange(
                                0,
                                started.elapsed().as_micros().max(1) as u64,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                            let mut hasher = DefaultHasher::new();
                            token.value().expose().hash(&mut hasher);
                            let hash = hasher.finish();
                            if hash != last_hash {
                                last_hash = hash;
                                let expires = wall_ms(token.expires_at_wall());
                                valid_until_ms.fetch_max(expires, Ordering::Relaxed);
                                tokens.lock().unwrap().insert(hash, expires);
                            }
                        }
                        Err(err) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if wall_ms(SystemTime::now()) < valid_until_ms.load(Ordering::Relaxed) {
                                errors_with_valid_token.fetch_add(1, Ordering::Relaxed);
                            }
                            let mut samples = samples.lock().unwrap();
                            if samples.len() < 5 {
                                // With its cause ("expired ... caused by ..."), never a secret.
                                samples.push(format!("{:?} {err}", err.kind()));
                            }
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(options.pause);
                }
            });
        }
    });
    // No new refresh after this; one already under way finishes (and is recorded) first.
    manager.close();
    let settle = Instant::now() + Duration::from_secs(15);
    // ...and so does its save (exiting mid-write would leave a temp file behind).
    while (source.running.load(Ordering::SeqCst) > 0 || manager.status().refreshing)
        && Instant::now() < settle
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let counters = manager.status().counters;
    let requested = source.requested.lock().unwrap().clone();
    Ok(WorkerReport {
        pid: std::process::id(),
        ok: ok.into_inner(),
        errors: errors.into_inner(),
        errors_with_valid_token: errors_with_valid_token.into_inner(),
        fetches: counters.fetches,
        refreshes: counters.refreshes,
        store_loads: counters.store_loads,
        store_errors: counters.store_errors,
        first_token_us: first_token_us.into_inner(),
        tokens: tokens.into_inner().unwrap(),
        requested,
        error_samples: samples.into_inner().unwrap(),
    })
}

/// Parses `args`, runs the worker and prints its report; the process's exit code.
pub fn worker_main(args: impl IntoIterator<Item = String>) -> i32 {
    let options = match WorkerOptions::parse(args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("fleet_worker: {message}");
            return 2;
        }
    };
    match run_worker(&options) {
        Ok(report) => {
            for line in report.to_lines() {
                println!("{line}");
            }
            0
        }
        Err(err) => {
            eprintln!("fleet_worker: {err}");
            1
        }
    }
}

/// Environment variable that turns a test or bench binary including this file into a
/// worker: its value is the worker's arguments, one per line.
pub const WORKER_ENV: &str = "TOKENLEASE_FLEET_WORKER";

/// If this process was started as a worker (see [`WORKER_ENV`]), runs it and exits.
pub fn run_if_worker() {
    if let Ok(args) = std::env::var(WORKER_ENV) {
        let code = worker_main(args.lines().map(str::to_owned));
        std::process::exit(code);
    }
}

/// Starts this same executable as a worker (stdout piped). `harness_args` select the entry
/// that calls [`run_if_worker`] (a test binary needs its test's name).
pub fn spawn_self_as_worker(
    options: &WorkerOptions,
    harness_args: &[&str],
    envs: &[(&str, String)],
) -> std::io::Result<std::process::Child> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args(harness_args)
        .env(WORKER_ENV, options.to_args().join("\n"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    for (name, value) in envs {
        command.env(name, value);
    }
    command.spawn()
}

/// Waits for a worker and parses its report.
pub fn collect(child: std::process::Child) -> WorkerReport {
    let output = child.wait_with_output().expect("wait for a fleet worker");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fleet worker failed: {:?}\n{stdout}",
        output.status
    );
    WorkerReport::parse(&stdout).unwrap_or_else(|| panic!("no report in worker output:\n{stdout}"))
}

#[allow(dead_code)]
fn main() {
    std::process::exit(worker_main(std::env::args().skip(1)));
}
