//! A throwaway `redis-server` for tests (plain text or TLS only), on 127.0.0.1 with no
//! persistence, stopped on drop (and by the kernel should the test process die first).
//! Shared by `fleet.rs`, `redis_store.rs` and the command's `cli/tests/agent.rs`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn installed() -> bool {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must run the Redis tests: install redis-server (scripts/test-all does)"
        );
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED: redis-server is not installed; these Redis tests did     !!!\n\
             !!! not run. Install it with: apt-get install -y redis-server           !!!\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
    }
    installed
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A throwaway `redis-server` on 127.0.0.1 (no persistence), stopped on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    tls: bool,
}

impl RedisServer {
    /// A plain-text server; `None` (after a loud message) without `redis-server`.
    pub fn start() -> Option<Self> {
        installed().then(|| Self::start_on(free_port()))
    }

    /// A plain-text server on `port` (e.g. to bring one back where it was).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, false, &["--port".to_owned(), port.to_string()])
    }

    /// A server speaking only TLS (`--port 0`), with `server.pem`, `server.key` and
    /// `ca.pem` from `cert_dir`; clients need no certificate of their own. `None` as for
    /// [`RedisServer::start`].
    pub fn start_tls(cert_dir: &Path) -> Option<Self> {
        if !installed() {
            return None;
        }
        let port = free_port();
        let path = |name: &str| cert_dir.join(name).display().to_string();
        let args = [
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path("server.pem"),
            "--tls-key-file".to_owned(),
            path("server.key"),
            "--tls-ca-cert-file".to_owned(),
            path("ca.pem"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        Some(Self::spawn(port, true, &args))
    }

    fn spawn(port: u16, tls: bool, listen: &[String]) -> Self {
        let mut command = Command::new("redis-server");
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: one async-signal-safe prctl call between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut server = RedisServer { child, port, tls };
        wait_for("redis-server to answer", Duration::from_secs(10), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server exited at start ({status}); built without TLS?");
            }
            server.ready()
        });
        server
    }

    /// PING answered (plain), or the TLS port accepting connections.
    fn ready(&self) -> bool {
        if self.tls {
            return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        self.command(&["PING"]).as_deref() == Some("+PONG\r\n")
    }

    /// One command in RESP on a plain-text server; the raw answer (bounded in time).
    pub fn command(&self, words: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", words.len());
        for word in words {
            request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = vec![0u8; 64 * 1024];
        let read = stream.read(&mut answer).ok()?;
        Some(String::from_utf8_lossy(&answer[..read]).into_owned())
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }
}

impl RedisServer {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
