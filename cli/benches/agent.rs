//! Agent latency over the Unix socket at 1, 16 and 256 concurrent clients (each a thread
//! sending GET /v1/token/api on its own connection, request after request), next to a cold
//! token request with curl (a new process, a TCP connection and a client-credentials grant).
//! Run: `cargo bench -p tokenlease-cli --bench agent` (a short smoke run under `cargo test`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokenlease_test_server::{ServerConfig, TestServer};

fn get(socket: &std::path::Path) -> Duration {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .write_all(b"GET /v1/token/api HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let per_client = if measuring { 2_000 } else { 20 };
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("tokenlease-agent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("api.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"source": {{"type": "oauth2", "token_url": "{}", "client_id": "demo-client", "client_secret": "demo-secret"}}}}"#,
            server.token_url()
        ),
    )
    .unwrap();
    let socket = dir.join("agent.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_tokenlease"))
        .args(["serve", "--credential"])
        .arg(format!("api={}", config.display()))
        .arg("--socket")
        .arg(&socket)
        .env("TOKENLEASE_CACHE_DIR", dir.join("cache"))
        // Plaintext mode, as before the keyring: no keyring entry left behind per run.
        .env("TOKENLEASE_KEYRING", "off")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap();
    get(&socket);
    for clients in [1usize, 16, 256] {
        let requests = (per_client * 16 / clients).max(20);
        let started = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let socket = socket.clone();
                std::thread::spawn(move || (0..requests).map(|_| get(&socket)).collect::<Vec<_>>())
            })
            .collect();
        let mut latencies: Vec<Duration> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "BENCH agent unix socket, {clients:>3} clients: p50 {:>7.1} µs, p99 {:>8.1} µs, {:>7.0} requests/s",
            percentile(&latencies, 0.5).as_secs_f64() * 1e6,
            percentile(&latencies, 0.99).as_secs_f64() * 1e6,
            latencies.len() as f64 / elapsed.as_secs_f64()
        );
    }
    let mut cold = Vec::new();
    for _ in 0..if measuring { 200 } else { 5 } {
        let started = Instant::now();
        let out = Command::new("curl")
            .args(["-s", "-XPOST", "-d", "grant_type=client_credentials"])
            .args(["-u", "demo-client:demo-secret"])
            .arg(server.token_url())
            .output()
            .unwrap();
        assert!(out.status.success());
        cold.push(started.elapsed());
    }
    cold.sort();
    println!(
        "BENCH cold curl of the token endpoint (process + TCP + grant): p50 {:.1} µs, p99 {:.1} µs",
        percentile(&cold, 0.5).as_secs_f64() * 1e6,
        percentile(&cold, 0.99).as_secs_f64() * 1e6
    );
    assert_eq!(
        server.stats().token_requests as usize,
        1 + cold.len(),
        "the agent fetched once"
    );
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(dir);
}
