//! Session APIs in the wire formats of two vendors this library is specified against, on the
//! same session store (idle and absolute timeouts on the server clock) as `/session/...`:
//!
//! - vSphere Automation sessions: `POST /api/session` with HTTP basic auth (or
//!   `Authorization: SIGN token="<access token of this server>"`, standing for a SAML token
//!   from another identity system) answers the
//!   session id as a bare JSON string (201); `GET /api/session` says who the session
//!   belongs to; `DELETE /api/session` ends it; `GET /api/vcenter/vm` is an API call. The
//!   session travels in `vmware-api-session-id`; a dead one is 401
//!   `{"error_type": "UNAUTHENTICATED"}`.
//! - Zuora's SOAP API at `POST /apps/services/a/{version}`: `login` (username and password
//!   in the body) answers `Session` and `ServerUrl`; other calls carry the session in the
//!   `SessionHeader` of the SOAP header; a wrong password is HTTP 500 with a `LoginFault`
//!   (`INVALID_VALUE`), a dead session HTTP 500 with an `INVALID_SESSION` fault.
//!   Namespace prefixes are whatever the client chose: elements are matched by local name.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::json;

use crate::state::{SessionUse, Shared};

type Shr = std::sync::Arc<Shared>;

const VMWARE_SESSION: &str = "vmware-api-session-id";

fn unauthenticated() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error_type": "UNAUTHENTICATED", "messages": [] })),
    )
        .into_response()
}

fn vmware_session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(VMWARE_SESSION)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

pub(crate) async fn vsphere_create(State(shared): State<Shr>, headers: HeaderMap) -> Response {
    // vSphere also logs in with a token from another identity system (`SIGN token=...` for
    // a SAML token); here: an access token of this server's own token endpoint.
    if let Some(token) = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().strip_prefix("SIGN token="))
    {
        return match shared.session_for_token(token.trim_matches('"')) {
            Some(session) => (StatusCode::CREATED, Json(json!(session.token))).into_response(),
            None => unauthenticated(),
        };
    }
    let Some((user, password)) = basic_credentials(&headers) else {
        return unauthenticated();
    };
    match shared.session_login(&user, &password) {
        Some(session) => (StatusCode::CREATED, Json(json!(session.token))).into_response(),
        None => unauthenticated(),
    }
}

pub(crate) async fn vsphere_get(State(shared): State<Shr>, headers: HeaderMap) -> Response {
    match shared.session_use(vmware_session(&headers), SessionUse::Resource) {
        Some(_) => {
            Json(json!({ "user": "VSPHERE.LOCAL\\alice", "created_time": "2026-12-01T00:00:00Z" }))
                .into_response()
        }
        None => unauthenticated(),
    }
}

pub(crate) async fn vsphere_delete(State(shared): State<Shr>, headers: HeaderMap) -> Response {
    match shared.session_use(vmware_session(&headers), SessionUse::Logout) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => unauthenticated(),
    }
}

pub(crate) async fn vsphere_vms(State(shared): State<Shr>, headers: HeaderMap) -> Response {
    match shared.session_use(vmware_session(&headers), SessionUse::Resource) {
        Some(_) => Json(json!([{ "vm": "vm-42", "name": "build-agent" }])).into_response(),
        None => unauthenticated(),
    }
}

const SOAP_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const ZUORA_API: &str = "http://api.zuora.com/";
const ZUORA_FAULT: &str = "http://fault.api.zuora.com/";

fn soap(status: StatusCode, body: String) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/xml; charset=utf-8")],
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"#
        ),
    )
        .into_response()
}

fn soap_fault(code: &str, message: &str, detail: &str) -> Response {
    soap(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            r#"<soapenv:Fault xmlns:fns="{ZUORA_FAULT}"><faultcode>fns:{code}</faultcode><faultstring>{message}</faultstring><detail><fns:{detail}><fns:FaultCode>{code}</fns:FaultCode><fns:FaultMessage>{message}</fns:FaultMessage></fns:{detail}></detail></soapenv:Fault>"#
        ),
    )
}

/// The text of the first element with this local name, in any namespace.
fn element_text<'a>(document: &'a roxmltree::Document<'_>, local: &str) -> Option<&'a str> {
    document
        .descendants()
        .find(|node| node.is_element() && node.tag_name().name() == local)
        .and_then(|node| node.text())
        .map(str::trim)
}

fn has_element(document: &roxmltree::Document<'_>, local: &str) -> bool {
    document
        .descendants()
        .any(|node| node.is_element() && node.tag_name().name() == local)
}

pub(crate) async fn zuora_soap(
    State(shared): State<Shr>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return soap_fault(
            "INVALID_VALUE",
            "the request is not UTF-8",
            "UnexpectedErrorFault",
        );
    };
    let Ok(document) = roxmltree::Document::parse(text) else {
        return soap_fault(
            "INVALID_VALUE",
            "the request is not XML",
            "UnexpectedErrorFault",
        );
    };
    if has_element(&document, "login") {
        let (Some(user), Some(password)) = (
            element_text(&document, "username"),
            element_text(&document, "password"),
        ) else {
            return soap_fault(
                "INVALID_VALUE",
                "username and password are required",
                "LoginFault",
            );
        };
        let Some(session) = shared.session_login(user, password) else {
            return soap_fault(
                "INVALID_VALUE",
                "Invalid login. User name and password do not match.",
                "LoginFault",
            );
        };
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("127.0.0.1");
        let server_url = format!("http://{host}{}", uri.path());
        return soap(
            StatusCode::OK,
            format!(
                r#"<ns1:loginResponse xmlns:ns1="{ZUORA_API}"><ns1:result><ns1:Session>{}</ns1:Session><ns1:ServerUrl>{server_url}</ns1:ServerUrl></ns1:result></ns1:loginResponse>"#,
                session.token
            ),
        );
    }
    let session = element_text(&document, "session");
    let logout = has_element(&document, "logout");
    let kind = if logout {
        SessionUse::Logout
    } else {
        SessionUse::Resource
    };
    if shared.session_use(session, kind).is_none() {
        return soap_fault("INVALID_SESSION", "Invalid session", "UnexpectedErrorFault");
    }
    if logout {
        return soap(
            StatusCode::OK,
            format!(r#"<ns1:logoutResponse xmlns:ns1="{ZUORA_API}"/>"#),
        );
    }
    soap(
        StatusCode::OK,
        format!(
            r#"<ns1:queryResponse xmlns:ns1="{ZUORA_API}"><ns1:result><ns1:done>true</ns1:done><ns1:size>1</ns1:size><ns1:records><ns2:Id xmlns:ns2="http://object.api.zuora.com/">2c92c0f8</ns2:Id></ns1:records></ns1:result></ns1:queryResponse>"#
        ),
    )
}
