//! The `tokenlease-test-server` binary: URL line, lifetime, signals, flags.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tokenlease-test-server");

fn spawn(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn binary");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim_end()
        .strip_prefix("TOKENLEASE_TEST_SERVER_URL=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, url)
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("binary did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_url_serves_and_exits_after_max_lifetime() {
    let (mut child, url) = spawn(&["--max-lifetime-s", "1", "--default-ttl-s", "42"]);
    let c = client();
    let resp = c.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "ok");
    let resp = c
        .post(format!("{url}/oauth/token"))
        .basic_auth("demo-client", Some("demo-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 42);
    drop(c);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rotation_flag() {
    let (mut child, url) = spawn(&["--no-rotation"]);
    let c = client();
    let resp = c
        .post(format!("{url}/oauth/token"))
        .basic_auth("demo-client", Some("demo-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=password&username=alice&password=wonderland")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    let refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    let resp = c
        .post(format!("{url}/oauth/token"))
        .basic_auth("demo-client", Some("demo-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&refresh_token={refresh_token}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_time_scale_flags() {
    let (mut child, url) = spawn(&[
        "--session-idle-timeout-s",
        "60",
        "--session-absolute-timeout-s",
        "120",
        "--time-scale",
        "2.5",
    ]);
    let c = client();
    let resp = c
        .post(format!("{url}/session/login"))
        .json(&serde_json::json!({"username": "alice", "password": "wonderland"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-token-expires-in"], "60");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["session"]["expires_in"], 60);
    let _ = child.kill();
    let _ = child.wait();
    for bad in ["0", "-1", "nan", "x"] {
        let out = Command::new(BIN)
            .args(["--time-scale", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
}

#[cfg(unix)]
#[test]
fn exits_zero_on_sigterm() {
    let (mut child, _url) = spawn(&[]);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
}

#[test]
fn rejects_unknown_arguments() {
    let status = Command::new(BIN)
        .arg("--bogus")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}
