//! `tokenlease serve` end to end: the agent binary and the test token server over loopback,
//! clients over the Unix socket (raw HTTP/1.1, as any language would) and loopback HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokenlease_test_server::{ServerConfig, TestServer};

const BINARY: &str = env!("CARGO_BIN_EXE_tokenlease");

struct Agent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    http: Option<(String, String)>,
}

impl Agent {
    fn start(server: &TestServer, extra: &[&str]) -> Agent {
        Self::start_with_cache(server, extra, None)
    }

    /// With `cache`, the store directory is shared (agents on one host, or a network
    /// file system).
    fn start_with_cache(server: &TestServer, extra: &[&str], cache: Option<&Path>) -> Agent {
        let config = serde_json::json!({"source": {"type": "oauth2",
            "token_url": server.token_url(), "client_id": "demo-client",
            "client_secret": "demo-secret"}});
        Self::launch(&config, extra, cache)
    }

    /// An agent serving `config` as credential `api`, with its own directories: socket,
    /// cache (unless `cache` is given), runtime, home and XDG directories.
    fn launch(config: &serde_json::Value, extra: &[&str], cache: Option<&Path>) -> Agent {
        let dir = std::env::temp_dir().join(format!(
            "tokenlease-agent-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config_file = dir.join("api.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let config = config_file;
        let socket = dir.join("run").join("agent.sock");
        let mut child = Command::new(BINARY)
            .arg("serve")
            .arg("--credential")
            .arg(format!("api={}", config.display()))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env(
                "TOKENLEASE_CACHE_DIR",
                cache.map_or_else(|| dir.join("cache"), Path::to_owned),
            )
            .env(
                "TOKENLEASE_STORE_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            )
            .env("TOKENLEASE_KEYRING", "off")
            .env("HOME", dir.join("home"))
            .env("XDG_CACHE_HOME", dir.join("xdg-cache"))
            .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
            .env("XDG_RUNTIME_DIR", dir.join("xdg-run"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the agent starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut http_url = None;
        let mut secret_file = None;
        let wanted = if extra.contains(&"--http-port") { 3 } else { 1 };
        for _ in 0..wanted {
            let line = lines
                .next()
                .expect("the agent says where it listens")
                .unwrap();
            if let Some(url) = line.strip_prefix("TOKENLEASE_AGENT_HTTP=") {
                http_url = Some(url.to_owned());
            } else if let Some(file) = line.strip_prefix("TOKENLEASE_AGENT_SECRET_FILE=") {
                secret_file = Some(file.to_owned());
            }
        }
        let http =
            http_url.map(|url| (url, std::fs::read_to_string(secret_file.unwrap()).unwrap()));
        Agent {
            child,
            dir,
            socket,
            http,
        }
    }

    /// One HTTP/1.1 request over the Unix socket: status and body.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let stream = UnixStream::connect(&self.socket).expect("the socket accepts");
        exchange(stream, method, path, body, "")
    }

    fn token(&self) -> (String, u64) {
        let (status, body) = self.request("GET", "/v1/token/api", "");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            json["access_token"].as_str().unwrap().to_owned(),
            json["generation"].as_u64().unwrap(),
        )
    }

    fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn exchange<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: &str,
    extra: &str,
) -> (u16, String) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn clients_share_one_manager_invalidate_by_generation_and_bad_input_is_refused() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let agent = Agent::start(&server, &[]);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&agent.socket)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "only the user reaches the socket");
    }
    // 1,000 concurrent clients on a cold manager: one token request.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(1000));
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let socket = agent.socket.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let stream = UnixStream::connect(&socket).unwrap();
                exchange(stream, "GET", "/v1/token/api", "", "")
            })
        })
        .collect();
    let mut tokens = std::collections::BTreeSet::new();
    for client in clients {
        let (status, body) = client.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        tokens.insert(json["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(server.stats().token_requests, 1, "one shared refresh");

    // A client got a 401: it reports the generation; one refresh follows.
    let (first, generation) = agent.token();
    let (status, body) = agent.request(
        "POST",
        "/v1/token/api/invalidate",
        &format!("{{\"generation\": {generation}}}"),
    );
    assert_eq!((status, body.contains("true")), (200, true), "{body}");
    let (second, newer) = agent.token();
    assert_ne!(first, second);
    // A late report of the older token changes nothing.
    let (_, body) = agent.request(
        "POST",
        "/v1/token/api/invalidate",
        &format!("{{\"generation\": {generation}}}"),
    );
    assert!(body.contains("false"), "{body}");
    assert_eq!(agent.token().1, newer);
    assert_eq!(server.stats().token_requests, 2);

    // Bad input: an unknown name, a malformed body, a wrong method, an unknown path.
    let (status, body) = agent.request("GET", "/v1/token/nope", "");
    assert_eq!(status, 404);
    assert!(body.contains("unknown_credential"), "{body}");
    assert_eq!(
        agent
            .request("POST", "/v1/token/api/invalidate", "{\"gen\": 1}")
            .0,
        400
    );
    assert_eq!(
        agent
            .request("POST", "/v1/token/api/invalidate", &"x".repeat(8192))
            .0,
        413
    );
    assert_eq!(agent.request("DELETE", "/v1/token/api", "").0, 405);
    assert_eq!(agent.request("GET", "/etc/passwd", "").0, 404);

    // A client that connects and stalls blocks no one.
    let _stalled = UnixStream::connect(&agent.socket).unwrap();
    let started = Instant::now();
    agent.token();
    assert!(started.elapsed() < Duration::from_secs(5));

    // Metrics and health.
    let (status, metrics) = agent.request("GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tokenlease_agent_requests_total{credential=\"api\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenlease_fetches_total{credential=\"api\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenlease_refresh_seconds_count{credential=\"api\"} 2"),
        "two timed refreshes: {metrics}"
    );
    assert!(
        metrics.contains("tokenlease_token_age_at_serve_seconds_sum"),
        "{metrics}"
    );
    assert!(!metrics.contains(&second), "never a token in the metrics");
    assert_eq!(agent.request("GET", "/healthz", "").0, 200);
}

#[test]
fn loopback_http_needs_the_secret_and_signals_reload_and_stop() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let mut agent = Agent::start(&server, &["--http-port", "0"]);
    let (url, secret) = agent.http.clone().expect("an HTTP listener");
    let address = url.trim_start_matches("http://").to_owned();
    let http = |extra: &str| {
        let stream = std::net::TcpStream::connect(&address).unwrap();
        exchange(stream, "GET", "/v1/token/api", "", extra)
    };
    assert_eq!(
        http("").0,
        401,
        "no secret: refused (a browser page cannot read tokens)"
    );
    assert_eq!(http("x-tokenlease-agent: wrong\r\n").0, 401);
    let (status, body) = http(&format!("x-tokenlease-agent: {secret}\r\n"));
    assert_eq!(status, 200, "{body}");

    // SIGHUP re-reads the configuration; the cached token stays.
    let (token, _) = agent.token();
    agent.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(agent.token().0, token);
    assert_eq!(server.stats().token_requests, 1);

    // SIGTERM: a clean exit, the socket removed.
    agent.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent stops on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!Path::new(&agent.socket).exists(), "the socket is removed");
}

#[test]
fn agents_sharing_a_store_make_one_token_request_per_lifetime() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let cache = std::env::temp_dir().join(format!(
        "tokenlease-agents-shared-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let agents: Vec<Agent> = (0..3)
        .map(|_| Agent::start_with_cache(&server, &[], Some(&cache)))
        .collect();
    // Cold, all at once: the file store's lease lets one agent fetch; the others adopt it.
    let threads: Vec<_> = agents
        .iter()
        .map(|agent| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || {
                let stream = UnixStream::connect(&socket).unwrap();
                exchange(stream, "GET", "/v1/token/api", "", "")
            })
        })
        .collect();
    let mut tokens = std::collections::BTreeSet::new();
    for thread in threads {
        let (status, body) = thread.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        tokens.insert(json["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1, "every agent serves the one token");
    assert_eq!(server.stats().token_requests, 1);
    drop(agents);
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn logs_are_json_lines_without_tokens() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "tokenlease-agent-logs-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("api.json");
    let write_config = |scopes: &str| {
        std::fs::write(
            &config,
            serde_json::json!({"source": {"type": "oauth2", "token_url": server.token_url(),
                "client_id": "demo-client", "client_secret": "demo-secret", "scopes": [scopes]}})
            .to_string(),
        )
        .unwrap();
    };
    write_config("read");
    let log = dir.join("agent.log");
    let socket = dir.join("agent.sock");
    let mut child = Command::new(BINARY)
        .arg("serve")
        .arg("--credential")
        .arg(format!("api={}", config.display()))
        .arg("--socket")
        .arg(&socket)
        .env("TOKENLEASE_CACHE_DIR", dir.join("cache"))
        // No keyring entry left behind per run (the store key does not matter here).
        .env("TOKENLEASE_KEYRING", "off")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let (status, body) = exchange(
        UnixStream::connect(&socket).unwrap(),
        "GET",
        "/v1/token/api",
        "",
        "",
    );
    assert_eq!(status, 200);
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    // A changed file is reloaded on SIGHUP, and that is logged.
    write_config("write");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("configuration reloaded")
    {
        assert!(Instant::now() < deadline, "the reload was logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(entry.get("level").is_some(), "{line}");
    }
    assert!(!text.contains(&token), "no token in the logs");
    assert!(!text.contains("demo-secret"), "no secret in the logs");
    let _ = std::fs::remove_dir_all(dir);
}

#[allow(dead_code)]
#[path = "../../core/tests/support/redis_server.rs"]
mod redis_server;

/// Several hosts sharing one Redis store: three agents that share nothing but the Redis
/// URL and key prefix (each its own cache, runtime, home and XDG directories, socket and
/// configuration file). The "hosts" are simulated: three processes on this machine whose
/// only common state is the Redis server (and the token server they all call). 1,000
/// concurrent clients spread over the three agents, cold and then at each token's expiry:
/// exactly one token request per token lifetime at the server.
#[test]
fn agents_on_several_hosts_sharing_redis_make_one_token_request_per_lifetime() {
    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_secs(6);
    let server = TestServer::start_background(ServerConfig {
        default_ttl: ttl,
        ..ServerConfig::default()
    })
    .unwrap();
    let prefix = format!(
        "tokenlease-agents-{}-{}:",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    // Refresh 1.5 s before expiry (jitter up to 0.15 s), callers wait from 0.6 s before.
    let config = serde_json::json!({
        "source": {"type": "oauth2", "token_url": server.token_url(),
            "client_id": "demo-client", "client_secret": "demo-secret"},
        "policy": {"advisory_fraction": 0.25, "advisory_min_s": 1.0,
            "mandatory_fraction": 0.1, "mandatory_min_s": 0.5},
        "store": {"type": "redis", "url": redis.url(), "prefix": prefix},
    });
    let agents: Vec<Agent> = (0..3).map(|_| Agent::launch(&config, &[], None)).collect();
    let sockets: Vec<PathBuf> = agents.iter().map(|agent| agent.socket.clone()).collect();

    // 1,000 clients at once, round robin over the agents: the one token they all got and
    // its expiry.
    let burst = |phase: &str| -> (String, SystemTime) {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(1000));
        let clients: Vec<_> = (0..1000)
            .map(|client| {
                let socket = sockets[client % sockets.len()].clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let stream = UnixStream::connect(&socket).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    exchange(stream, "GET", "/v1/token/api", "", "")
                })
            })
            .collect();
        let mut tokens = std::collections::BTreeMap::new();
        for client in clients {
            let (status, body) = client.join().unwrap();
            assert_eq!(status, 200, "{phase}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            tokens.insert(
                json["access_token"].as_str().unwrap().to_owned(),
                json["expires_at"].as_str().unwrap().to_owned(),
            );
        }
        assert_eq!(tokens.len(), 1, "{phase}: every client got the one token");
        let (token, expires_at) = tokens.into_iter().next().unwrap();
        let expires_at = tokenlease::session::parse_rfc3339(&expires_at).unwrap();
        (token, expires_at)
    };
    // Past a token's expiry: the agents give it in whole seconds, so up to 1 s after.
    let wait_past = |expires_at: SystemTime| {
        let until = expires_at + Duration::from_secs(1);
        if let Ok(left) = until.duration_since(SystemTime::now()) {
            assert!(left < ttl + Duration::from_secs(2), "{left:?}");
            std::thread::sleep(left);
        }
    };

    let (first, expires_at) = burst("cold");
    assert_eq!(server.stats().token_requests, 1, "cold: one request");
    let stored = redis.command(&["KEYS", &format!("{prefix}*")]).unwrap();
    assert!(
        stored.starts_with('*') && !stored.starts_with("*0"),
        "the token is in Redis under the prefix: {stored}"
    );
    for agent in &agents {
        assert!(
            !agent.dir.join("cache").join("cli-store").exists(),
            "no agent used a file store"
        );
    }

    wait_past(expires_at);
    let (second, expires_at) = burst("first expiry");
    assert_ne!(second, first);
    assert_eq!(
        server.stats().token_requests,
        2,
        "the three agents made one request for the second lifetime"
    );

    wait_past(expires_at);
    let (third, _) = burst("second expiry");
    assert_ne!(third, second);
    assert_eq!(
        server.stats().token_requests,
        3,
        "and one for the third lifetime"
    );
    drop(agents);
}
