//! HTTP routes and the accept loop.

// Error paths return ready-made responses; their size is irrelevant for a test server.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, DATE, PRAGMA, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::state::{Fault, GrantError, SessionUse, Shared, TokenCheck, TokenResponse};
use crate::Control;

/// How long a `Timeout`-mode outage holds a request at most.
const TIMEOUT_HOLD: Duration = Duration::from_secs(30);
/// How long shutdown waits for open connections before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The RFC 8693 grant type.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Lifetime header on token, login and keep-alive responses.
const X_TOKEN_EXPIRES_IN: &str = "x-token-expires-in";
/// Session token header set on login responses (and accepted on session requests).
const X_SESSION_TOKEN: &str = "x-session-token";
/// vSphere-style session header.
const VMWARE_SESSION: &str = "vmware-api-session-id";
/// Chunk size of `/fault/stream` bodies.
const STREAM_CHUNK: usize = 16 * 1024;
/// Pause between two `/fault/stream` chunks (~16 MB/s).
const STREAM_PACE: Duration = Duration::from_millis(1);

type Shr = Arc<Shared>;

/// Per-connection handle that lets a handler close its connection without a response.
#[derive(Clone)]
struct ConnKill(Arc<Notify>);

fn router(shared: Shr) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/api/resource", get(resource_get).post(resource_post))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/session/login", post(session_login))
        .route("/session/login/*rest", post(session_login))
        .route(
            "/session/resource",
            get(session_resource).post(session_resource),
        )
        .route("/session/keepalive", post(session_keepalive))
        .route("/session/logout", post(session_logout))
        .route(
            "/api/session",
            post(crate::vendors::vsphere_create)
                .get(crate::vendors::vsphere_get)
                .delete(crate::vendors::vsphere_delete),
        )
        .route("/api/vcenter/vm", get(crate::vendors::vsphere_vms))
        .route(
            "/apps/services/a/:version",
            post(crate::vendors::zuora_soap),
        )
        .route("/fault/stream/*rest", any(fault_stream))
        .route("/fault/status/:code/*rest", any(fault_status))
        .route("/stats", get(stats))
        .route("/control", post(control))
        .route("/health", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(shared)
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Accepts connections until `stop` turns true (or its sender is dropped) or `max_lifetime`
/// elapses, then shuts connections down gracefully (aborting them after a short grace period).
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Shr,
    mut stop: watch::Receiver<bool>,
    max_lifetime: Option<Duration>,
) {
    let app = router(shared.clone());
    let (conn_stop_tx, conn_stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let deadline = max_lifetime.map(|d| tokio::time::Instant::now() + d);
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            _ = sleep_until_opt(deadline) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_conn(stream, app.clone(), shared.clone(), conn_stop_rx.clone()));
                }
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
    shared.begin_shutdown();
    drop(listener);
    let _ = conn_stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

async fn serve_conn(stream: TcpStream, app: Router, shared: Shr, mut stop: watch::Receiver<bool>) {
    let kill = Arc::new(Notify::new());
    let conn_kill = ConnKill(kill.clone());
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let shared = shared.clone();
        let conn_kill = conn_kill.clone();
        async move {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(conn_kill);
            let mut resp = match app.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            if let Ok(date) = HeaderValue::from_str(&shared.http_date()) {
                resp.headers_mut().insert(DATE, date);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            // Dropping `conn` closes the socket without a response.
            _ = kill.notified() => break,
            _ = async { let _ = stop.wait_for(|s| *s).await; }, if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn with_no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    with_no_store(
        (
            status,
            Json(json!({ "error": error, "error_description": description })),
        )
            .into_response(),
    )
}

fn invalid_request(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

fn invalid_client(basic_attempted: bool, description: &str) -> Response {
    let mut resp = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", description);
    if basic_attempted {
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tokenlease-test-server\""),
        );
    }
    resp
}

fn grant_error(e: GrantError) -> Response {
    let status = if e.error == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    oauth_error(status, e.error, &e.description)
}

fn token_ok(shared: &Shared, body: TokenResponse) -> Response {
    let expires_in = body.expires_in();
    let mut resp = match shared.expires_in_json() {
        None => with_no_store((StatusCode::OK, Json(body)).into_response()),
        Some(replacement) => {
            let mut json = serde_json::to_value(&body).unwrap_or_default();
            json["expires_in"] = replacement;
            with_no_store((StatusCode::OK, Json(json)).into_response())
        }
    };
    resp.headers_mut()
        .insert(X_TOKEN_EXPIRES_IN, HeaderValue::from(expires_in));
    resp
}

/// Parsed `application/x-www-form-urlencoded` body.
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Requires a form content type and parses the body; duplicated parameters are an error
/// (RFC 6749 §3.2).
fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<Form, Response> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(invalid_request(
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(k2, _)| k2 == k) {
            return Err(invalid_request(&format!("parameter {k:?} repeated")));
        }
    }
    Ok(Form(pairs))
}

/// Decodes `%XX` escapes and `+` (the form-encoding RFC 6749 §2.3.1 asks clients to apply to
/// Basic credentials).
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Authenticates the client via HTTP Basic or `client_id`/`client_secret` form fields.
/// Returns the client id.
fn authenticate(shared: &Shared, headers: &HeaderMap, form: &Form) -> Result<String, Response> {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, creds)| creds.trim().to_owned());
    if let Some(creds) = basic {
        if form.get("client_secret").is_some() {
            return Err(invalid_request("use only one client authentication method"));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(creds.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((raw_id, raw_secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(invalid_client(true, "malformed Basic credentials"));
        };
        let candidates = [
            Some((raw_id.to_owned(), raw_secret.to_owned())),
            form_decode(raw_id).zip(form_decode(raw_secret)),
        ];
        for (id, secret) in candidates.into_iter().flatten() {
            if shared.client_valid(&id, &secret) {
                if form.get("client_id").is_some_and(|f| f != id) {
                    return Err(invalid_request(
                        "client_id does not match Basic credentials",
                    ));
                }
                return Ok(id);
            }
        }
        return Err(invalid_client(true, "client authentication failed"));
    }
    match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => {
            if shared.client_valid(id, secret) {
                Ok(id.to_owned())
            } else {
                Err(invalid_client(false, "client authentication failed"))
            }
        }
        (Some(_), None) => Err(invalid_client(false, "client_secret missing")),
        _ => Err(invalid_client(true, "client authentication required")),
    }
}

fn normalize_scope(scope: Option<&str>) -> Option<String> {
    let joined = scope?.split_whitespace().collect::<Vec<_>>().join(" ");
    (!joined.is_empty()).then_some(joined)
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

async fn token(
    State(shared): State<Shr>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let latency = shared.begin_token_request();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = match shared.token_fault() {
        Fault::None => token_grant(&shared, &headers, &body).unwrap_or_else(|e| e),
        Fault::Status503 => oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "injected outage",
        ),
        Fault::Timeout => {
            let start = Instant::now();
            while shared.timeout_outage_active()
                && !shared.is_shutting_down()
                && start.elapsed() < TIMEOUT_HOLD
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "injected outage (timeout)",
            )
        }
        Fault::Drop => match kill {
            Some(Extension(ConnKill(kill))) => {
                shared.count_token_error();
                kill.notify_one();
                // The connection task drops this future together with the connection.
                std::future::pending::<Response>().await
            }
            None => oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "injected outage (drop)",
            ),
        },
        Fault::RateLimited { retry_after_s } => {
            let mut resp = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                "injected rate limit",
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
            resp
        }
        Fault::FailNext(error) => {
            let status = match error.as_str() {
                "temporarily_unavailable" | "server_error" => StatusCode::SERVICE_UNAVAILABLE,
                "invalid_client" => StatusCode::UNAUTHORIZED,
                _ => StatusCode::BAD_REQUEST,
            };
            oauth_error(status, &error, "injected failure")
        }
    };
    if !resp.status().is_success() {
        shared.count_token_error();
    }
    resp
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn token_grant(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let form = parse_form(headers, body)?;
    // The assertion authenticates the client itself (RFC 7523 §3).
    if form.get("grant_type") == Some(JWT_BEARER) {
        let Some(assertion) = form.get("assertion") else {
            return Err(invalid_request("missing assertion"));
        };
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("127.0.0.1");
        return shared
            .grant_jwt_bearer(assertion, &format!("http://{host}/oauth/token"))
            .map(|body| token_ok(shared, body))
            .map_err(grant_error);
    }
    let client_id = authenticate(shared, headers, &form)?;
    let Some(grant_type) = form.get("grant_type") else {
        return Err(invalid_request("missing grant_type"));
    };
    let scope = normalize_scope(form.get("scope"));
    let result = match grant_type {
        "client_credentials" => Ok(shared.grant_client_credentials(&client_id, scope)),
        "refresh_token" => {
            let Some(refresh_token) = form.get("refresh_token") else {
                return Err(invalid_request("missing refresh_token"));
            };
            shared.grant_refresh(&client_id, refresh_token, scope)
        }
        "password" => {
            let (Some(username), Some(password)) = (form.get("username"), form.get("password"))
            else {
                return Err(invalid_request("missing username or password"));
            };
            shared.grant_password(&client_id, username, password, scope)
        }
        TOKEN_EXCHANGE => {
            let (Some(subject_token), Some(subject_token_type)) =
                (form.get("subject_token"), form.get("subject_token_type"))
            else {
                return Err(invalid_request(
                    "missing subject_token or subject_token_type",
                ));
            };
            // `audience` and `resource` are accepted and not restricted.
            shared.grant_token_exchange(
                &client_id,
                subject_token,
                subject_token_type,
                form.get("requested_token_type"),
                scope,
            )
        }
        other => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other:?} is not supported"),
            ))
        }
    };
    result
        .map(|body| token_ok(shared, body))
        .map_err(grant_error)
}

// ---------------------------------------------------------------------------------------------
// Revocation endpoint (RFC 7009)

async fn revoke(State(shared): State<Shr>, headers: HeaderMap, body: Bytes) -> Response {
    let result = (|| {
        let form = parse_form(&headers, &body)?;
        let client_id = authenticate(&shared, &headers, &form)?;
        let Some(token) = form.get("token") else {
            return Err(invalid_request("missing token"));
        };
        shared.revoke(&client_id, token);
        Ok(with_no_store(StatusCode::OK.into_response()))
    })();
    result.unwrap_or_else(|e| e)
}

// ---------------------------------------------------------------------------------------------
// Protected resource

fn invalid_token(description: &str) -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "invalid_token", "error_description": description })),
    )
        .into_response();
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    resp
}

/// Validates the bearer token; returns the client id or the `401` response.
fn check_bearer(shared: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let result = match token {
        None => Err(invalid_token("missing bearer token")),
        Some(token) => match shared.check_access(token) {
            TokenCheck::Valid { client_id } => Ok(client_id),
            TokenCheck::Unknown => Err(invalid_token("unknown access token")),
            TokenCheck::Expired => Err(invalid_token("the access token expired")),
            TokenCheck::Revoked => Err(invalid_token("the access token was revoked")),
        },
    };
    shared.count_resource(result.is_err());
    result
}

async fn resource_get(State(shared): State<Shr>, headers: HeaderMap) -> Response {
    match check_bearer(&shared, &headers) {
        Ok(client_id) => Json(json!({ "ok": true, "client_id": client_id })).into_response(),
        Err(resp) => resp,
    }
}

async fn resource_post(State(shared): State<Shr>, headers: HeaderMap, body: Bytes) -> Response {
    match check_bearer(&shared, &headers) {
        Ok(_) => Json(json!({ "ok": true, "received": body.len() })).into_response(),
        Err(resp) => resp,
    }
}

// ---------------------------------------------------------------------------------------------
// Oversized and endless bodies, fixed statuses

/// A paced body of `x` bytes after a prefix: endless, or `remaining` bytes in all.
struct StreamBody {
    shared: Shr,
    prefix: Bytes,
    remaining: Option<u64>,
    chunk: Bytes,
    pace: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.remaining == Some(0) || this.shared.is_shutting_down() {
            return Poll::Ready(None);
        }
        let mut data = if this.prefix.is_empty() {
            if this.pace.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = tokio::time::Instant::now() + STREAM_PACE;
            this.pace.as_mut().reset(next);
            this.chunk.clone()
        } else {
            std::mem::take(&mut this.prefix)
        };
        if let Some(remaining) = &mut this.remaining {
            let len = usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
            data.truncate(len);
            *remaining -= len as u64;
        }
        this.shared.count_streamed(data.len());
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn fault_stream(State(shared): State<Shr>, RawQuery(query): RawQuery) -> Response {
    let params = query_params(query.as_deref());
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let status = param("status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let prefix = Bytes::from(param("prefix").unwrap_or("").to_owned());
    let length = param("length").and_then(|l| l.parse::<u64>().ok());
    let body = StreamBody {
        shared,
        prefix,
        remaining: length,
        chunk: Bytes::from(vec![b'x'; STREAM_CHUNK]),
        pace: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(length) = length {
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    resp
}

async fn fault_status(Path((code, _rest)): Path<(u16, String)>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "fault": "INJECTED", "status": status.as_u16() })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Test plumbing

async fn stats(State(shared): State<Shr>) -> Response {
    Json(shared.stats()).into_response()
}

async fn control(State(shared): State<Shr>, body: Bytes) -> Response {
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Control::default())
    } else {
        serde_json::from_slice::<Control>(&body)
    };
    match parsed {
        Ok(c) => {
            shared.apply_control(&c);
            Json(shared.stats()).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_request", "error_description": e.to_string() })),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery

async fn discovery(State(shared): State<Shr>) -> Response {
    let base = shared.base_url();
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/oauth/token"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "grant_types_supported": [
            "client_credentials",
            "refresh_token",
            "password",
            TOKEN_EXCHANGE,
        ],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Session API (vendor style, not OAuth2)

#[derive(serde::Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// Formats `t` as RFC 3339 UTC with whole seconds, e.g. `2024-05-01T12:00:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn invalid_session() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "fault": "INVALID_SESSION", "message": "Token Expired" })),
    )
        .into_response()
}

/// The session token from `vmware-api-session-id: T`, `Authorization: ZSession T` or
/// `X-Session-Token: T`.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    let plain = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    plain(VMWARE_SESSION)
        .or_else(|| {
            headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("zsession"))
                .map(|(_, t)| t.trim())
                .filter(|t| !t.is_empty())
        })
        .or_else(|| plain(X_SESSION_TOKEN))
}

async fn session_login(State(shared): State<Shr>, body: Bytes) -> Response {
    let login = match serde_json::from_slice::<LoginBody>(&body) {
        Ok(login) => login,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "fault": "INVALID_REQUEST", "message": e.to_string() })),
            )
                .into_response()
        }
    };
    let Some(session) = shared.session_login(&login.username, &login.password) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "fault": "INVALID_LOGIN" })),
        )
            .into_response();
    };
    let mut resp = with_no_store(
        Json(json!({
            "session": {
                "id": session.token,
                "expires_in": session.expires_in,
                "absolute_expires_at": rfc3339(session.absolute_expires_at),
            }
        }))
        .into_response(),
    );
    let h = resp.headers_mut();
    h.insert(X_TOKEN_EXPIRES_IN, HeaderValue::from(session.expires_in));
    if let Ok(v) = HeaderValue::from_str(&session.token) {
        h.insert(X_SESSION_TOKEN, v);
    }
    resp
}

async fn session_resource(State(shared): State<Shr>, headers: HeaderMap) -> Response {
    match shared.session_use(session_token(&headers), SessionUse::Resource) {
        Some(_) => Json(json!({ "ok": true })).into_response(),
        None => invalid_session(),
    }
}

async fn session_keepalive(State(shared): State<Shr>, headers: HeaderMap) -> Response {
    match shared.session_use(session_token(&headers), SessionUse::KeepAlive) {
        Some(idle) => {
            let mut resp = Json(json!({ "expires_in": idle.as_secs() })).into_response();
            resp.headers_mut()
                .insert(X_TOKEN_EXPIRES_IN, HeaderValue::from(idle.as_secs()));
            resp
        }
        None => invalid_session(),
    }
}

async fn session_logout(State(shared): State<Shr>, headers: HeaderMap) -> Response {
    match shared.session_use(session_token(&headers), SessionUse::Logout) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => invalid_session(),
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(rfc3339(t), "2000-02-29T01:02:03Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59Z");
    }
}
