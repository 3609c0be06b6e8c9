//! The device authorization grant (RFC 8628) for CLIs, TVs and other devices without a
//! browser: the device shows a short code and a URL, the user approves on another device,
//! and the device polls the token endpoint until the login is done.
//!
//! ```no_run
//! # async fn demo() -> tokenlease::Result<()> {
//! use tokenlease::Manager;
//! let manager = Manager::from_config(
//!     r#"{"source": {"type": "oauth2", "issuer": "https://idp.example", "client_id": "my-cli",
//!                    "grant": {"type": "user_login"}, "scopes": ["openid", "offline_access"]}}"#,
//! )?;
//! let device = manager.start_device_login().await?;
//! println!("open {} and enter {}", device.verification_uri(), device.user_code());
//! let token = manager.complete_device_login(&device).await?; // polls; `device.cancel()` stops it
//! # let _ = token; Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{redact_foreign_text, Error, ErrorKind, Result};
use crate::secret::SecretString;

/// RFC 8628 §3.2: the interval a client uses when the server names none.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628 §3.5: how much longer to wait after each `slow_down`.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// A server asking for a longer interval than this is not followed beyond it.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// A device code is never polled for longer than this, whatever `expires_in` says.
pub const MAX_DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(30 * 60);
const MAX_USER_CODE_CHARS: usize = 64;
const MAX_URI_CHARS: usize = 2048;

/// A device login in progress: what to show the user, and the secret device code the
/// device polls with. Cheap to clone; clones share the cancellation.
#[derive(Clone)]
pub struct DeviceAuthorization {
    device_code: SecretString,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: Duration,
    interval: Duration,
    issued_at: tokio::time::Instant,
    cancel: Arc<Cancellation>,
}

#[derive(Debug, Default)]
struct Cancellation {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("device_code", &"[redacted]")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish()
    }
}

#[derive(Deserialize)]
struct DeviceAuthorizationResponse {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default, alias = "verification_url_complete")]
    verification_uri_complete: Option<String>,
    expires_in: serde_json::Value,
    #[serde(default)]
    interval: Option<serde_json::Value>,
}

impl DeviceAuthorization {
    /// Parses and checks a device authorization response (RFC 8628 §3.2).
    pub(crate) fn from_response(endpoint: &str, body: &[u8]) -> Result<Self> {
        let protocol = |what: &str| {
            Error::new(
                ErrorKind::Protocol,
                format!("{endpoint}: the device authorization response {what}"),
            )
        };
        let response: DeviceAuthorizationResponse = serde_json::from_slice(body).map_err(|_| {
            protocol(
                "is not a JSON object with device_code, user_code, verification_uri and expires_in",
            )
        })?;
        let seconds =
            |value: &serde_json::Value| value.as_u64().or_else(|| value.as_str()?.parse().ok());
        let expires_in = seconds(&response.expires_in)
            .filter(|&seconds| seconds > 0)
            .ok_or_else(|| protocol("has no positive expires_in"))?;
        let interval = match &response.interval {
            None => DEFAULT_POLL_INTERVAL,
            Some(value) => Duration::from_secs(
                seconds(value).ok_or_else(|| protocol("has an interval that is not a number"))?,
            ),
        };
        crate::lifecycle::token::check_token_text(&response.device_code)
            .map_err(|_| protocol("has an empty, over-long or non-printable device_code"))?;
        let printable = |text: &str, limit: usize| {
            !text.is_empty()
                && text.chars().count() <= limit
                && text.chars().all(|c| !c.is_control())
        };
        if !printable(&response.user_code, MAX_USER_CODE_CHARS) {
            return Err(protocol(
                "has an empty, over-long or non-printable user_code",
            ));
        }
        let web_uri = |uri: &str| {
            printable(uri, MAX_URI_CHARS)
                && url::Url::parse(uri).is_ok_and(|url| matches!(url.scheme(), "https" | "http"))
        };
        if !web_uri(&response.verification_uri) {
            return Err(protocol(
                "has a verification_uri that is not an http(s) URL",
            ));
        }
        let verification_uri_complete = response
            .verification_uri_complete
            .filter(|uri| web_uri(uri));
        Ok(Self {
            device_code: response.device_code.into(),
            user_code: response.user_code,
            verification_uri: response.verification_uri,
            verification_uri_complete,
            expires_in: Duration::from_secs(expires_in).min(MAX_DEVICE_CODE_LIFETIME),
            interval: interval.min(MAX_POLL_INTERVAL),
            issued_at: tokio::time::Instant::now(),
            cancel: Arc::default(),
        })
    }

    /// The code the user types at [`DeviceAuthorization::verification_uri`].
    pub fn user_code(&self) -> &str {
        &self.user_code
    }

    /// Where the user goes to approve (on a phone or computer).
    pub fn verification_uri(&self) -> &str {
        &self.verification_uri
    }

    /// The verification URI with the user code in it (for a QR code), when the server
    /// gives one.
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.verification_uri_complete.as_deref()
    }

    /// How long the user has to approve (bounded by [`MAX_DEVICE_CODE_LIFETIME`]).
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// The polling interval the server asked for (RFC 8628 default 5 s).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Stops polling: a `complete_device_login` in progress (or started later) ends with
    /// [`ErrorKind::Cancelled`]. Safe from any thread.
    pub fn cancel(&self) {
        self.cancel.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify.notify_waiters();
    }

    /// Whether [`DeviceAuthorization::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) fn device_code(&self) -> &SecretString {
        &self.device_code
    }

    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        self.issued_at + self.expires_in
    }

    /// Sleeps `delay` unless cancelled first; `Err(Cancelled)` when cancelled.
    pub(crate) async fn pause(&self, delay: Duration) -> Result<()> {
        let notified = self.cancel.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_cancelled() {
            return Err(cancelled());
        }
        tokio::select! {
            () = &mut notified => Err(cancelled()),
            () = tokio::time::sleep(delay) => {
                if self.is_cancelled() { Err(cancelled()) } else { Ok(()) }
            }
        }
    }
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "the device login was cancelled")
}

/// What one poll of the token endpoint said (RFC 8628 §3.5).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PollAnswer {
    /// `authorization_pending`: ask again after the interval.
    Pending,
    /// `slow_down`: ask again, and from now on 5 s less often.
    SlowDown,
}

/// The verdict on a failed poll: keep polling, or the error that ends the login.
pub(crate) fn judge_poll_error(
    code: Option<&str>,
    description: Option<&str>,
) -> Option<Result<PollAnswer>> {
    let detail = description
        .map(|text| format!(": {}", redact_foreign_text(text)))
        .unwrap_or_default();
    match code? {
        "authorization_pending" => Some(Ok(PollAnswer::Pending)),
        "slow_down" => Some(Ok(PollAnswer::SlowDown)),
        "access_denied" => Some(Err(Error::new(
            ErrorKind::Cancelled,
            format!("the user denied the device login (access_denied){detail}"),
        ))),
        // The code lapsed before the user approved, or the server no longer knows it:
        // only a new login helps.
        "expired_token" | "invalid_grant" => Some(Err(Error::new(
            ErrorKind::LoginRequired,
            format!(
                "the device code expired before the user approved it; start a new login{detail}"
            ),
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<DeviceAuthorization> {
        DeviceAuthorization::from_response("http://idp/device", body.as_bytes())
    }

    #[tokio::test]
    async fn a_response_is_read_with_rfc_defaults_and_bounds() {
        let device = parse(
            r#"{"device_code":"d","user_code":"AB-CD","verification_uri":"https://idp/device",
                "expires_in":600}"#,
        )
        .unwrap();
        assert_eq!(device.interval(), DEFAULT_POLL_INTERVAL);
        assert_eq!(device.expires_in(), Duration::from_secs(600));
        assert_eq!(device.verification_uri_complete(), None);
        assert!(!format!("{device:?}").contains("\"d\""));

        let device = parse(
            r#"{"device_code":"d","user_code":"AB-CD","verification_url":"https://idp/device",
                "verification_uri_complete":"https://idp/device?c=AB-CD",
                "expires_in":"999999","interval":3600}"#,
        )
        .unwrap();
        assert_eq!(device.interval(), MAX_POLL_INTERVAL);
        assert_eq!(device.expires_in(), MAX_DEVICE_CODE_LIFETIME);
        assert_eq!(
            device.verification_uri_complete(),
            Some("https://idp/device?c=AB-CD")
        );
    }

    #[tokio::test]
    async fn bad_responses_are_protocol_errors() {
        for body in [
            "[]",
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://i/d"}"#,
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://i/d","expires_in":0}"#,
            r#"{"device_code":"","user_code":"U","verification_uri":"https://i/d","expires_in":5}"#,
            r#"{"device_code":"d","user_code":"","verification_uri":"https://i/d","expires_in":5}"#,
            r#"{"device_code":"d","user_code":"U\u0007","verification_uri":"https://i/d","expires_in":5}"#,
            r#"{"device_code":"d","user_code":"U","verification_uri":"javascript:x","expires_in":5}"#,
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://i/d","expires_in":5,"interval":"x"}"#,
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Protocol, "{body}: {err}");
        }
    }

    #[tokio::test]
    async fn cancel_ends_a_pause_at_once() {
        let device = parse(
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://i/d","expires_in":5}"#,
        )
        .unwrap();
        let clone = device.clone();
        let pause = tokio::spawn(async move { clone.pause(Duration::from_secs(3600)).await });
        tokio::task::yield_now().await;
        device.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(10), pause)
            .await
            .expect("the pause ended")
            .unwrap();
        assert_eq!(outcome.unwrap_err().kind(), ErrorKind::Cancelled);
        assert_eq!(
            device.pause(Duration::ZERO).await.unwrap_err().kind(),
            ErrorKind::Cancelled
        );
    }

    #[test]
    fn poll_errors_are_judged_by_rfc_8628() {
        assert_eq!(
            judge_poll_error(Some("authorization_pending"), None)
                .unwrap()
                .unwrap(),
            PollAnswer::Pending
        );
        assert_eq!(
            judge_poll_error(Some("slow_down"), None).unwrap().unwrap(),
            PollAnswer::SlowDown
        );
        let kind = |code| {
            judge_poll_error(Some(code), Some("x"))
                .unwrap()
                .unwrap_err()
                .kind()
        };
        assert_eq!(kind("access_denied"), ErrorKind::Cancelled);
        assert_eq!(kind("expired_token"), ErrorKind::LoginRequired);
        assert_eq!(kind("invalid_grant"), ErrorKind::LoginRequired);
        assert!(judge_poll_error(Some("invalid_client"), None).is_none());
        assert!(judge_poll_error(None, None).is_none());
    }
}
