//! Interactive logins driven through a manager: the authorization code with PKCE and the
//! device flow. The manager's source does the protocol ([`InteractiveLogin`]); the manager
//! bounds each step in time, runs it on the background runtime and installs the result as
//! [`Manager::login`] does (persisted first, waiters woken, an older refresh overtaken).

use std::sync::Arc;

use super::{AbortOnDrop, Manager, Shared, TokenRef};
use crate::error::{Error, ErrorKind, Result};
use crate::runtime;
use crate::source::authorization::{AuthorizationRequest, InteractiveLogin};
use crate::source::device::DeviceAuthorization;

impl Manager {
    /// Starts an interactive login with the authorization code grant and PKCE: the URL to
    /// open in the user's browser. Hand the URL the browser is redirected to (with the
    /// code) to [`Manager::complete_login`]. `redirect_uri` must be registered for the
    /// client (a loopback one for desktop apps and CLIs, see
    /// [`crate::source::authorization::LoopbackRedirect`]).
    ///
    /// `Configuration` when the source has no interactive login (only OAuth2 sources do).
    pub async fn begin_login(&self, redirect_uri: &str) -> Result<AuthorizationRequest> {
        let shared = self.shared.clone();
        let redirect_uri = redirect_uri.to_owned();
        AbortOnDrop(runtime::spawn(async move {
            shared
                .bounded_login_step(|login| login.authorization_request(&redirect_uri))
                .await
        }))
        .await
    }

    /// Blocking form of [`Manager::begin_login`].
    pub fn begin_login_blocking(&self, redirect_uri: &str) -> Result<AuthorizationRequest> {
        self.block_on(self.begin_login(redirect_uri))
    }

    /// Finishes an interactive login: checks the redirect (its state, an error answer),
    /// redeems the code with the PKCE verifier, persists the tokens and serves them from
    /// now on, as [`Manager::login`]. The user denying the login is `Cancelled`; a forged
    /// or foreign redirect is `Protocol`.
    pub async fn complete_login(
        &self,
        request: &AuthorizationRequest,
        redirect: &str,
    ) -> Result<TokenRef> {
        let code = request.code_from_redirect(redirect)?;
        let shared = self.shared.clone();
        let request = request.clone();
        let fetched = AbortOnDrop(runtime::spawn(async move {
            shared
                .bounded_login_step(|login| login.exchange_code(&request, &code))
                .await
        }))
        .await?;
        self.login(fetched).await
    }

    /// Blocking form of [`Manager::complete_login`].
    pub fn complete_login_blocking(
        &self,
        request: &AuthorizationRequest,
        redirect: &str,
    ) -> Result<TokenRef> {
        self.block_on(self.complete_login(request, redirect))
    }

    /// Starts a device login (RFC 8628): show the user code and verification URI, then
    /// call [`Manager::complete_device_login`], which waits for the user.
    pub async fn start_device_login(&self) -> Result<DeviceAuthorization> {
        let shared = self.shared.clone();
        AbortOnDrop(runtime::spawn(async move {
            shared
                .bounded_login_step(|login| login.start_device_authorization())
                .await
        }))
        .await
    }

    /// Blocking form of [`Manager::start_device_login`].
    pub fn start_device_login_blocking(&self) -> Result<DeviceAuthorization> {
        self.block_on(self.start_device_login())
    }

    /// Waits until the user approved a device login, polling as the server asks
    /// (`interval`, `slow_down`), then installs the tokens as [`Manager::login`]. Bounded
    /// by the device code's lifetime. The user denying it, [`DeviceAuthorization::cancel`]
    /// or dropping this future ends it with `Cancelled`; an expired code with
    /// `LoginRequired`.
    pub async fn complete_device_login(&self, device: &DeviceAuthorization) -> Result<TokenRef> {
        let shared = self.shared.clone();
        let device = device.clone();
        let fetched = AbortOnDrop(runtime::spawn(async move {
            let login = shared.interactive_login()?;
            login.poll_device_authorization(&device).await
        }))
        .await?;
        self.login(fetched).await
    }

    /// Blocking form of [`Manager::complete_device_login`]; [`DeviceAuthorization::cancel`]
    /// from another thread ends it.
    pub fn complete_device_login_blocking(&self, device: &DeviceAuthorization) -> Result<TokenRef> {
        self.block_on(self.complete_device_login(device))
    }
}

impl Shared {
    fn interactive_login(&self) -> Result<&dyn InteractiveLogin> {
        // A closed manager starts no login and redeems no code (a code redeemed now could
        // not be installed, and would be spent).
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Closed,
                format!("the token manager for {:?} is closed", self.key),
            ));
        }
        self.source.interactive_login().ok_or_else(|| {
            Error::new(
                ErrorKind::Configuration,
                "this manager's source has no interactive login (use an oauth2 source, \
                 e.g. with the user_login grant)",
            )
        })
    }

    /// One request of a login, bounded by the policy's source timeout.
    async fn bounded_login_step<'a, T, F, Fut>(self: &'a Arc<Self>, step: F) -> Result<T>
    where
        F: FnOnce(&'a dyn InteractiveLogin) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let login = self.interactive_login()?;
        let limit = self.policy.source_timeout();
        tokio::time::timeout(limit, step(login))
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the authorization server did not answer within {limit:?}"),
                ))
            })
    }
}
