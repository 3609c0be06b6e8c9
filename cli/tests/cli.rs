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
    // The number: a thousand invocations while the token is valid, no new request.
    for _ in 0..1_000 {
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

/// The default store's key from the kernel keyring (Linux): `TOKENLEASE_STORE_KEY` unset,
/// `TOKENLEASE_KEYRING` on. Each test has its own cache directory, so its own keyring entry,
/// which it removes at the end (also when it fails). Where the machine's keyring is
/// unavailable, the tests say `NOT RUN: kernel keyring unavailable (...)` and check the
/// fallback (plaintext mode) instead.
#[cfg(target_os = "linux")]
mod keyring {
    use super::*;
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    /// The keyrings the command may use (see `cli/src/store_key.rs`).
    fn rings() -> Vec<KeyRing> {
        [
            KeyRing::get_persistent(KeyRingIdentifier::User).ok(),
            KeyRing::from_special_id(KeyRingIdentifier::User, false).ok(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The payload of the entry `name`, if there is one.
    fn entry_payload(name: &str) -> Option<Vec<u8>> {
        rings()
            .iter()
            .find_map(|ring| ring.search(name).ok())
            .map(|key| key.read_to_vec().expect("the entry is readable"))
    }

    /// The entry name the command uses for a cache directory.
    fn entry_name(cache: &Path) -> String {
        let canonical = std::fs::canonicalize(cache).unwrap();
        let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("tokenlease:store-key:{hex}")
    }

    /// Removes a keyring entry when dropped (the test passed or not).
    struct Entry(String);

    impl Drop for Entry {
        fn drop(&mut self) {
            for ring in rings() {
                while let Ok(key) = ring.search(&self.0) {
                    if key.invalidate().is_err() {
                        break;
                    }
                }
            }
        }
    }

    impl Scratch {
        /// The command without `TOKENLEASE_STORE_KEY`, keyring on.
        fn keyring_command(&self) -> Command {
            let mut command = self.command();
            command
                .env_remove("TOKENLEASE_STORE_KEY")
                .env("TOKENLEASE_KEYRING", "on");
            command
        }

        fn status(&self, command: &mut Command, config: &Path) -> serde_json::Value {
            let out = command
                .args(["status", "--config", config.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            serde_json::from_slice(&out.stdout).unwrap()
        }

        /// Every record file of the default store, concatenated.
        fn store_files(&self) -> String {
            let dir = self.path("cache").join("cli-store");
            let mut all = String::new();
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|ext| ext == "token") {
                    all.push_str(&std::fs::read_to_string(path).unwrap());
                }
            }
            all
        }
    }

    fn run_ok(mut command: Command, args: &[&str]) -> Output {
        let out = command.args(args).output().expect("the binary runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    }

    fn refreshing_server() -> TestServer {
        TestServer::start_background(ServerConfig {
            refresh_for_client_credentials: true,
            ..ServerConfig::default()
        })
        .unwrap()
    }

    /// Plaintext mode: the token is in the store file as it is, without a refresh token.
    fn assert_plaintext_mode(scratch: &Scratch, status: &serde_json::Value, raw: &str) {
        assert_eq!(status["store_key"], "none", "{status}");
        assert_eq!(status["has_refresh_token"], false, "{status}");
        assert!(
            scratch.store_files().contains(raw),
            "plaintext mode keeps the access token as it is"
        );
    }

    /// The first invocation with the keyring on (no key anywhere yet: the keyring gets
    /// one): its token, the entry (removed when dropped) and the status. `None` where no
    /// keyring is usable, after checking that the fallback is the plaintext mode.
    fn first_keyring_invocation(
        scratch: &Scratch,
        config: &Path,
    ) -> Option<(String, Entry, serde_json::Value)> {
        let token = text(
            &run_ok(
                scratch.keyring_command(),
                &["token", "--config", config.to_str().unwrap()],
            )
            .stdout,
        );
        let entry = Entry(entry_name(&scratch.path("cache")));
        let status = scratch.status(&mut scratch.keyring_command(), config);
        if keyring_unavailable(&status).is_some() {
            assert_plaintext_mode(scratch, &status, &token);
            return None;
        }
        Some((token, entry, status))
    }

    /// `Some(errno)` with a `NOT RUN` line when the command found no usable keyring.
    fn keyring_unavailable(status: &serde_json::Value) -> Option<String> {
        if status["store_key"] == "keyring" {
            return None;
        }
        let detail = status["store_key_detail"].as_str().unwrap_or_default();
        let errno = detail
            .rsplit_once('(')
            .map_or(detail, |(_, errno)| errno.trim_end_matches(')'))
            .to_owned();
        eprintln!("NOT RUN: kernel keyring unavailable ({errno}); checked the fallback instead");
        Some(errno)
    }

    /// Runs `command` with the keyring system calls refused (`EPERM`), as a container's
    /// seccomp profile does (spawning fails where the filter cannot be installed).
    fn deny_keyring(command: &mut Command) {
        use std::os::unix::process::CommandExt;
        let refuse = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
        let statement = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jump_if = |nr: libc::c_long, jt: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf: 0,
            k: nr as u32,
        };
        // seccomp_data.nr is at offset 0; the three keyring calls jump to the last line.
        let filter = [
            statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            jump_if(libc::SYS_add_key, 3),
            jump_if(libc::SYS_request_key, 2),
            jump_if(libc::SYS_keyctl, 1),
            statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
            statement(libc::BPF_RET | libc::BPF_K, refuse),
        ];
        // SAFETY: between fork and exec the closure makes two prctl calls (async-signal-safe)
        // on a filter built before the fork.
        unsafe {
            command.pre_exec(move || {
                let program = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &program as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Runs `command` in a new (anonymous) session keyring, as another login session would:
    /// the key must not depend on the session keyring of the process that made it.
    fn new_session_keyring(command: &mut Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: one keyctl system call between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // KEYCTL_JOIN_SESSION_KEYRING (1) with no name: a new anonymous session keyring.
                if libc::syscall(libc::SYS_keyctl, 1, std::ptr::null::<libc::c_char>()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    #[test]
    fn the_kernel_keyring_keeps_the_store_key_across_invocations() {
        let server = refreshing_server();
        let scratch = Scratch::new("keyring");
        let config = scratch.config(&server, "demo-secret");
        let config_arg = config.to_str().unwrap();
        let Some((raw, entry, status)) = first_keyring_invocation(&scratch, &config) else {
            return;
        };
        assert_eq!(status["keyring_entry"], entry.0.as_str(), "{status}");
        let payload = entry_payload(&entry.0).expect("the entry is in the user's keyring");
        assert_eq!(payload.len(), 44, "base64 of 32 bytes");
        assert!(!status
            .to_string()
            .contains(std::str::from_utf8(&payload).unwrap()));
        let stored = scratch.store_files();
        assert!(stored.contains("xchacha20poly1305"), "sealed");
        assert!(
            !stored.contains(&raw),
            "the token is not in the store file as it is"
        );
        assert_eq!(status["has_refresh_token"], true, "{status}");
        assert_eq!(status["state"], "Fresh", "{status}");

        // 2nd invocation: a fresh process in another session keyring reads the same key.
        let mut second = scratch.keyring_command();
        new_session_keyring(&mut second);
        let out = run_ok(second, &["token", "--config", config_arg]);
        assert_eq!(text(&out.stdout), raw);
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        assert_eq!(
            server.stats().token_requests,
            1,
            "the sealed store was read"
        );
        assert_eq!(
            entry_payload(&entry.0).unwrap(),
            payload,
            "the key was kept"
        );
    }

    #[test]
    fn concurrent_first_invocations_make_one_keyring_key() {
        let server = refreshing_server();
        let scratch = Scratch::new("keyring-cold");
        let config = scratch.config(&server, "demo-secret");
        let config_arg = config.to_str().unwrap();
        // The key is made under a lock: while another process holds it, no invocation gets
        // past making the key (without the lock they would all be done within the second).
        let cache = scratch.path("cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        let held =
            tokenlease::file_store::lock_in_dir(&cache, "store-key.lock", Duration::from_secs(1))
                .unwrap();
        let mut children: Vec<_> = (0..20)
            .map(|_| {
                scratch
                    .keyring_command()
                    .args(["token", "--config", config_arg])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let mut done = 0;
        for child in &mut children {
            done += usize::from(child.try_wait().unwrap().is_some());
        }
        drop(held);
        let outputs: Vec<Output> = children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect();
        let _cleanup = Entry(entry_name(&scratch.path("cache")));
        let mut tokens = std::collections::BTreeSet::new();
        for out in &outputs {
            assert!(out.status.success(), "{}", text(&out.stderr));
            tokens.insert(text(&out.stdout));
        }
        let status = scratch.status(&mut scratch.keyring_command(), &config);
        if keyring_unavailable(&status).is_some() {
            assert_plaintext_mode(&scratch, &status, tokens.first().unwrap());
            return;
        }
        assert_eq!(done, 0, "no invocation made a key while the lock was held");
        // Two keys would show: a sibling sealing with the other key cannot read the
        // record, and fetches again.
        assert_eq!(tokens.len(), 1);
        assert_eq!(server.stats().token_requests, 1);
        assert_eq!(status["has_refresh_token"], true, "{status}");
        let out = run_ok(
            scratch.keyring_command(),
            &["token", "--config", config_arg],
        );
        assert_eq!(text(&out.stdout), *tokens.first().unwrap());
        assert_eq!(server.stats().token_requests, 1);
    }

    #[test]
    fn a_replaced_keyring_key_empties_the_store_and_says_so() {
        let server = refreshing_server();
        let scratch = Scratch::new("keyring-replaced");
        let config = scratch.config(&server, "demo-secret");
        let config_arg = config.to_str().unwrap();
        let Some((first, entry, _)) = first_keyring_invocation(&scratch, &config) else {
            return;
        };
        // The entry gets another key (as after a reboot emptied the keyring).
        let key = rings()
            .iter()
            .find_map(|ring| ring.search(&entry.0).ok())
            .unwrap();
        key.update(b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
            .unwrap();
        let status = scratch.status(&mut scratch.keyring_command(), &config);
        assert_eq!(status["state"], "Empty", "{status}");
        assert!(
            status["store_error"]
                .as_str()
                .unwrap()
                .contains("sealed with another key than the keyring's"),
            "{status}"
        );
        let out = run_ok(
            scratch.keyring_command(),
            &["token", "--config", config_arg],
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("sealed with another key than the keyring's")
                && stderr.contains("treated as empty"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one notice: {stderr}");
        let second = text(&out.stdout);
        assert_ne!(second, first, "a new token");
        assert_eq!(server.stats().token_requests, 2);
        // The new token was sealed with the new key: the next invocation reads it.
        let out = run_ok(
            scratch.keyring_command(),
            &["token", "--config", config_arg],
        );
        assert_eq!(text(&out.stdout), second);
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        assert_eq!(server.stats().token_requests, 2);
    }

    #[test]
    fn opting_out_of_the_keyring_is_plaintext_mode() {
        let server = refreshing_server();
        let scratch = Scratch::new("keyring-off");
        let config = scratch.config(&server, "demo-secret");
        let mut off = scratch.keyring_command();
        off.env("TOKENLEASE_KEYRING", "off");
        let raw = text(&run_ok(off, &["token", "--config", config.to_str().unwrap()]).stdout);
        let mut off = scratch.keyring_command();
        off.env("TOKENLEASE_KEYRING", "off");
        let status = scratch.status(&mut off, &config);
        assert_plaintext_mode(&scratch, &status, &raw);
        assert!(
            status["store_key_detail"]
                .as_str()
                .unwrap()
                .contains("TOKENLEASE_KEYRING=off"),
            "{status}"
        );
        let name = entry_name(&scratch.path("cache"));
        let _cleanup = Entry(name.clone());
        assert!(entry_payload(&name).is_none(), "no keyring entry was made");
        // A misspelt opt-out is refused, not taken as `on`.
        let mut typo = scratch.keyring_command();
        typo.env("TOKENLEASE_KEYRING", "of");
        let out = typo
            .args(["status", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(18), "configuration");
        assert!(text(&out.stderr).contains("TOKENLEASE_KEYRING"));
        assert!(entry_payload(&name).is_none());
    }

    #[test]
    fn the_environment_key_beats_the_keyring() {
        let server = refreshing_server();
        let scratch = Scratch::new("keyring-env");
        let config = scratch.config(&server, "demo-secret");
        let mut command = scratch.keyring_command();
        command.env("TOKENLEASE_STORE_KEY", STORE_KEY);
        let raw = text(&run_ok(command, &["token", "--config", config.to_str().unwrap()]).stdout);
        let name = entry_name(&scratch.path("cache"));
        let _cleanup = Entry(name.clone());
        let mut command = scratch.keyring_command();
        command.env("TOKENLEASE_STORE_KEY", STORE_KEY);
        let status = scratch.status(&mut command, &config);
        assert_eq!(status["store_key"], "env", "{status}");
        assert_eq!(
            status["store_key_detail"], "TOKENLEASE_STORE_KEY",
            "{status}"
        );
        assert_eq!(status["has_refresh_token"], true, "{status}");
        assert!(!scratch.store_files().contains(&raw), "sealed");
        assert!(entry_payload(&name).is_none(), "the keyring was not used");
        assert_eq!(server.stats().token_requests, 1);
    }

    #[test]
    fn a_refused_keyring_is_plaintext_mode_with_a_notice() {
        let server = refreshing_server();
        let scratch = Scratch::new("keyring-refused");
        let config = scratch.config(&server, "demo-secret");
        let config_arg = config.to_str().unwrap();
        let mut command = scratch.keyring_command();
        deny_keyring(&mut command);
        let started = std::time::Instant::now();
        let out = match command.args(["token", "--config", config_arg]).output() {
            Ok(out) => out,
            Err(err) => {
                eprintln!("NOT RUN: cannot install a seccomp filter here ({err})");
                return;
            }
        };
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let raw = text(&out.stdout);
        let mut command = scratch.keyring_command();
        deny_keyring(&mut command);
        let status = scratch.status(&mut command, &config);
        assert_plaintext_mode(&scratch, &status, &raw);
        let detail = status["store_key_detail"].as_str().unwrap();
        assert!(
            detail.contains("kernel keyring is unavailable (EPERM)"),
            "{detail}"
        );
        // On a terminal, one line says so (`script` gives the command a terminal).
        let mut terminal = Command::new("script");
        terminal
            .args(["-qec"])
            .arg(format!("'{BINARY}' token --config '{config_arg}'"))
            .arg("/dev/null")
            .env("TOKENLEASE_CACHE_DIR", scratch.path("cache"))
            .env_remove("TOKENLEASE_STORE_KEY")
            .env("TOKENLEASE_KEYRING", "on");
        deny_keyring(&mut terminal);
        match terminal.output() {
            Ok(out) => {
                let shown = String::from_utf8_lossy(&out.stdout).replace('\r', "");
                assert!(out.status.success(), "{shown}");
                let notices: Vec<&str> = shown
                    .lines()
                    .filter(|line| line.contains("store key"))
                    .collect();
                assert_eq!(notices.len(), 1, "{shown}");
                assert!(
                    notices[0].contains("no store key")
                        && notices[0].contains("EPERM")
                        && notices[0].contains("without their refresh tokens"),
                    "{shown}"
                );
                assert!(shown.contains(&raw), "{shown}");
            }
            Err(err) => eprintln!("NOT RUN: the terminal notice (no `script` command: {err})"),
        }
        assert_eq!(server.stats().token_requests, 1);
    }
}
