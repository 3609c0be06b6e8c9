//! The `tokenlease` command end to end: the test token server over loopback, the binary run
//! as scripts, `kubectl` and `git` run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use tokenlease_test_server::{ServerConfig, TestServer};

const BINARY: &str = env!("CARGO_BIN_EXE_tokenlease");
const STORE_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A temporary directory for one test's configuration and cache, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tokenlease-cli-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A client-credentials configuration for the test server (no store: the CLI's default).
    fn config(&self, server: &TestServer, secret: &str) -> PathBuf {
        let path = self.path("config.json");
        std::fs::write(
            &path,
            serde_json::json!({"source": {"type": "oauth2", "token_url": server.token_url(),
                "client_id": "demo-client", "client_secret": secret,
                "revocation_url": server.revoke_url()}})
            .to_string(),
        )
        .unwrap();
        path
    }

    /// The command with this scratch directory as its cache and a store key.
    fn command(&self) -> Command {
        let mut command = Command::new(BINARY);
        command
            .env("TOKENLEASE_CACHE_DIR", self.path("cache"))
            .env("TOKENLEASE_STORE_KEY", STORE_KEY)
            .env_remove("TOKENLEASE_CONFIG");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("the binary runs")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

fn token(scratch: &Scratch, config: &Path) -> String {
    let out = scratch.run(&["token", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_loop_of_invocations_makes_one_token_request() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let scratch = Scratch::new("loop");
    let config = scratch.config(&server, "demo-secret");
    let first = token(&scratch, &config);
    for _ in 0..200 {
        assert_eq!(token(&scratch, &config), first);
    }
    assert_eq!(server.stats().token_requests, 1, "the store is reused");
}

#[test]
fn fifty_concurrent_cold_invocations_make_one_token_request() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let scratch = Scratch::new("cold");
    let config = scratch.config(&server, "demo-secret");
    let children: Vec<_> = (0..50)
        .map(|_| {
            scratch
                .command()
                .args(["token", "--config", config.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let tokens: std::collections::BTreeSet<String> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout)
        })
        .collect();
    assert_eq!(tokens.len(), 1, "every invocation printed the one token");
    assert_eq!(
        server.stats().token_requests,
        1,
        "the file lease made one request"
    );
}

#[test]
fn formats_json_header_and_kubectl_exec_credential() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let scratch = Scratch::new("formats");
    let config = scratch.config(&server, "demo-secret");
    let config_arg = config.to_str().unwrap();
    let raw = token(&scratch, &config);
    let out = scratch.run(&["token", "--config", config_arg, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["access_token"], raw.as_str());
    assert_eq!(json["token_type"], "Bearer");
    assert!(json["expires_in"].as_u64().unwrap() > 3000);
    let out = scratch.run(&["token", "--config", config_arg, "--format", "header"]);
    assert_eq!(text(&out.stdout), format!("authorization: Bearer {raw}"));

    let out = scratch.run(&[
        "token",
        "--config",
        config_arg,
        "--format",
        "k8s-exec-credential",
    ]);
    let credential: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(credential["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(credential["kind"], "ExecCredential");
    assert_eq!(credential["status"]["token"], raw.as_str());
    let stamp = credential["status"]["expirationTimestamp"]
        .as_str()
        .unwrap();
    assert!(stamp.len() == 20 && stamp.ends_with('Z'), "{stamp}");

    // kubectl itself runs the command as its exec credential plugin and sends the token
    // (to a TLS cluster: kubectl runs exec plugins only for those). Where kubectl is not
    // installed, the checks of the ExecCredential fields above are what remains (said so).
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        eprintln!(
            "NOT RUN: kubectl is not installed; the ExecCredential JSON was checked field by field"
        );
        return;
    }
    let certificate = scratch.path("api.pem");
    let key = scratch.path("api.key");
    let openssl = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .output()
        .expect("openssl");
    assert!(openssl.status.success(), "{}", text(&openssl.stderr));
    let mut api = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_api.py"))
        .args([
            certificate.to_str().unwrap(),
            key.to_str().unwrap(),
            &raw,
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the test API");
    let port = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(api.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().to_owned()
    };
    let kubeconfig = scratch.path("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n\
             \x20   certificate-authority: {ca}\n\
             users:\n- name: tokenlease\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n\
             \x20     command: {BINARY}\n      args: [token, --config, {config_arg}, --format, k8s-exec-credential]\n\
             \x20     interactiveMode: Never\n      env:\n      - name: TOKENLEASE_CACHE_DIR\n        value: {cache}\n\
             \x20     - name: TOKENLEASE_STORE_KEY\n        value: {STORE_KEY}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: tokenlease\ncurrent-context: test\n",
            ca = certificate.display(),
            cache = scratch.path("cache").display(),
        ),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .args([
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "get",
            "--raw",
            "/api/resource",
        ])
        .output();
    let _ = api.kill();
    let _ = api.wait();
    let out = out.expect("kubectl runs");
    assert!(out.status.success(), "kubectl: {}", text(&out.stderr));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        body["ok"], true,
        "kubectl sent the token the command printed"
    );
    assert_eq!(
        server.stats().token_requests,
        1,
        "kubectl's invocation reused the store"
    );
}

#[test]
fn exec_passes_the_token_and_returns_the_commands_status() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let scratch = Scratch::new("exec");
    let config = scratch.config(&server, "demo-secret");
    let raw = token(&scratch, &config);
    let out = scratch.run(&[
        "exec",
        "--config",
        config.to_str().unwrap(),
        "--env",
        "API_TOKEN",
        "--",
        "sh",
        "-c",
        &format!("test \"$API_TOKEN\" = '{raw}' && exit 7; exit 3"),
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
}

#[test]
fn git_fills_credentials_from_the_helper_and_a_rejection_replaces_the_token() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let scratch = Scratch::new("git");
    let config = scratch.config(&server, "demo-secret");
    let helper = format!("!{BINARY} git-credential --config {}", config.display());
    let git = |operation: &str, input: &str| {
        let mut child = Command::new("git")
            .args([
                "-c",
                "credential.helper=",
                "-c",
                &format!("credential.helper={helper}"),
            ])
            .args(["credential", operation])
            .env("HOME", scratch.path("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("TOKENLEASE_CACHE_DIR", scratch.path("cache"))
            .env("TOKENLEASE_STORE_KEY", STORE_KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("git runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "git credential {operation}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let filled = git("fill", "protocol=https\nhost=git.example\n\n");
    let password = filled
        .lines()
        .find_map(|line| line.strip_prefix("password="))
        .expect("git got a password")
        .to_owned();
    assert!(filled.contains("username=x-access-token"), "{filled}");
    assert_eq!(password, token(&scratch, &config));
    // The server refused it: git erases it, the helper replaces the token now.
    git(
        "reject",
        &format!(
            "protocol=https\nhost=git.example\nusername=x-access-token\npassword={password}\n\n"
        ),
    );
    assert_eq!(server.stats().token_requests, 2);
    assert_ne!(token(&scratch, &config), password);
}

#[test]
fn failures_exit_with_the_error_kind_and_never_print_the_secret() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let scratch = Scratch::new("fail");
    let config = scratch.config(&server, "wrong-secret-value");
    let out = scratch.run(&["token", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(11), "invalid_credentials");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("wrong-secret-value"), "{stderr}");
    assert!(out.stdout.is_empty());
    let out = scratch.run(&[
        "token",
        "--config",
        scratch.path("missing.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(18), "configuration");
    let out = scratch.run(&["token"]);
    assert_eq!(out.status.code(), Some(2), "usage: no --config");
    for sub in [
        "token",
        "status",
        "revoke",
        "login",
        "exec",
        "git-credential",
    ] {
        let out = scratch.run(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
    }
}

#[test]
fn status_and_revoke() {
    let server = TestServer::start_background(ServerConfig::default()).unwrap();
    let scratch = Scratch::new("revoke");
    let config = scratch.config(&server, "demo-secret");
    let config_arg = config.to_str().unwrap();
    let raw = token(&scratch, &config);
    let out = scratch.run(&["status", "--config", config_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains(&raw),
        "status never shows the token"
    );
    let out = scratch.run(&["revoke", "--config", config_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.stats().revocations, 1);
    // Logged out: the next invocation gets a new token.
    assert_ne!(token(&scratch, &config), raw);
    assert_eq!(server.stats().token_requests, 2);
}
