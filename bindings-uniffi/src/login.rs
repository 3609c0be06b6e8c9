//! Interactive user logins: the authorization code with PKCE ([`LoginRequest`]) and the
//! device flow ([`DeviceLogin`]), driven by [`NativeTokenManager`]'s login methods. Every
//! protocol step is core's; these objects only carry core's state across the boundary.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokenlease::source::authorization::AuthorizationRequest;
use tokenlease::source::device::DeviceAuthorization;

use crate::errors::BindingResult;
use crate::manager::NativeTokenManager;
use crate::token::{FetchedToken, TokenInfo};

/// An interactive login in progress: open [`LoginRequest::url`] in the browser (AppAuth,
/// Custom Tabs, `ASWebAuthenticationSession`, the system browser), then hand the URL it
/// redirects back to to `completeLogin`. Holds the PKCE verifier and state; never shown.
#[derive(uniffi::Object)]
pub struct LoginRequest {
    pub(crate) request: AuthorizationRequest,
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.request.fmt(f)
    }
}

#[uniffi::export]
impl LoginRequest {
    /// The authorization URL to open (state, nonce, PKCE S256 challenge included).
    pub fn url(&self) -> String {
        self.request.url().to_owned()
    }

    /// The redirect URI this login names.
    pub fn redirect_uri(&self) -> String {
        self.request.redirect_uri().to_owned()
    }
}

/// A device login (RFC 8628) in progress: show [`DeviceLogin::user_code`] and
/// [`DeviceLogin::verification_uri`], then wait in `completeDeviceLogin`.
#[derive(uniffi::Object)]
pub struct DeviceLogin {
    pub(crate) device: DeviceAuthorization,
}

impl fmt::Debug for DeviceLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.device.fmt(f)
    }
}

#[uniffi::export]
impl DeviceLogin {
    /// The code the user enters at the verification URI.
    pub fn user_code(&self) -> String {
        self.device.user_code().to_owned()
    }

    /// Where the user approves the login.
    pub fn verification_uri(&self) -> String {
        self.device.verification_uri().to_owned()
    }

    /// The verification URI with the code in it (for a QR code), when the server gives one.
    pub fn verification_uri_complete(&self) -> Option<String> {
        self.device.verification_uri_complete().map(str::to_owned)
    }

    /// How long the user has, in ms.
    pub fn expires_in_ms(&self) -> u64 {
        millis(self.device.expires_in())
    }

    /// The polling interval the server asked for, in ms.
    pub fn interval_ms(&self) -> u64 {
        millis(self.device.interval())
    }

    /// Stops a `completeDeviceLogin` waiting on this login: it fails with `Cancelled`.
    /// Callable from any thread.
    pub fn cancel(&self) {
        self.device.cancel();
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        self.device.is_cancelled()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[uniffi::export]
impl NativeTokenManager {
    /// Starts a login with the authorization code grant and PKCE for `redirect_uri` (a
    /// URI registered for the client: an app link or custom scheme on a phone, a loopback
    /// one on a desktop). Fails with `Configuration` unless the source is an OAuth2 one.
    pub async fn begin_login(&self, redirect_uri: String) -> BindingResult<Arc<LoginRequest>> {
        let request = self.manager().begin_login(&redirect_uri).await?;
        Ok(Arc::new(LoginRequest { request }))
    }

    /// Finishes a login with the URL the browser was redirected to: checks its state and
    /// error, redeems the code, persists and serves the tokens. The user saying no is
    /// `Cancelled`; a forged redirect `Protocol`.
    pub async fn complete_login(
        &self,
        request: Arc<LoginRequest>,
        redirect_url: String,
    ) -> BindingResult<TokenInfo> {
        let token = self
            .manager()
            .complete_login(&request.request, &redirect_url)
            .await?;
        Ok(TokenInfo::from(&*token))
    }

    /// Starts a device login (RFC 8628).
    pub async fn start_device_login(&self) -> BindingResult<Arc<DeviceLogin>> {
        let device = self.manager().start_device_login().await?;
        Ok(Arc::new(DeviceLogin { device }))
    }

    /// Waits until the user approved the device login, then persists and serves the
    /// tokens. Denied or cancelled: `Cancelled`; the code expired: `LoginRequired`.
    pub async fn complete_device_login(
        &self,
        device: Arc<DeviceLogin>,
    ) -> BindingResult<TokenInfo> {
        let token = self.manager().complete_device_login(&device.device).await?;
        Ok(TokenInfo::from(&*token))
    }

    /// Hands over the result of a new interactive login done elsewhere (AppAuth): it is
    /// persisted and served from now on; waiting callers get it.
    pub async fn login(&self, login: FetchedToken) -> BindingResult<TokenInfo> {
        let token = self.manager().login(login.into()).await?;
        Ok(TokenInfo::from(&*token))
    }

    /// Hands over a login result kept from before (e.g. at every app start) without
    /// rolling back anything newer: a token held in memory or the store that was obtained
    /// at or after `issued_at_unix_ms` (with null/nil: any stored token) is served instead.
    pub async fn seed(
        &self,
        login: FetchedToken,
        issued_at_unix_ms: Option<u64>,
    ) -> BindingResult<TokenInfo> {
        let issued_at =
            issued_at_unix_ms.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let token = self.manager().seed(login.into(), issued_at).await?;
        Ok(TokenInfo::from(&*token))
    }
}
