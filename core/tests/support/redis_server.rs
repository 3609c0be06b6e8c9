//! A throwaway `redis-server` for tests (plain text or TLS only), on 127.0.0.1 with no
//! persistence, stopped on drop. Shared by `fleet.rs` and `redis_store.rs`.

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
        let child = Command::new("redis-server")
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
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            return true;
        }
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
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
