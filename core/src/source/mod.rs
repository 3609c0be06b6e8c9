//! Where tokens come from.

#[cfg(feature = "http")]
pub mod assertion;
#[cfg(feature = "http")]
pub mod authorization;
#[cfg(feature = "http")]
pub mod device;
#[cfg(feature = "http")]
pub mod dpop;
#[cfg(feature = "http")]
pub mod oauth2;
#[cfg(feature = "http")]
pub mod session;

use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use crate::error::Result;
use crate::lifecycle::token::{FetchedToken, Lifetime, Token};
use crate::secret::SecretString;

/// Gets, refreshes, revokes and keeps alive tokens for one credential.
///
/// A manager calls its source from the tokenlease background runtime, never concurrently
/// for the same manager (single-flight), and never while holding a lock. Errors carry a
/// kind: transient kinds are retried with backoff, the others surface to callers at once.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug + 'static {
    /// Obtains a new token with the primary grant (client credentials, login, ...).
    async fn fetch(&self) -> Result<FetchedToken>;

    /// Obtains a new token with a refresh token. The default falls back to [`Source::fetch`].
    async fn refresh(&self, refresh_token: &SecretString) -> Result<FetchedToken> {
        let _ = refresh_token;
        self.fetch().await
    }

    /// Revokes a token (logout). The default does nothing.
    async fn revoke(&self, token: &Token) -> Result<()> {
        let _ = token;
        Ok(())
    }

    /// Extends a sliding session. Returns the new lifetime when the server reported one,
    /// `Ok(None)` when the session was extended without saying for how long.
    /// The default does nothing and returns `Ok(None)`.
    async fn keep_alive(&self, token: &Token) -> Result<Option<Lifetime>> {
        let _ = token;
        Ok(None)
    }

    /// Whether [`Source::keep_alive`] does something. When it doesn't, a sliding session
    /// about to lapse is replaced by a new login instead.
    fn supports_keep_alive(&self) -> bool {
        false
    }

    /// Asks the server about the session `token` belongs to (vSphere's `GET /api/session`:
    /// who, whether alive): the response body, or `Ok(None)` when the source has no such
    /// request (the default).
    async fn session_info(&self, token: &Token) -> Result<Option<String>> {
        let _ = token;
        Ok(None)
    }

    /// The interactive logins (authorization code, device flow) this source offers, if
    /// any. The default has none.
    #[cfg(feature = "http")]
    fn interactive_login(&self) -> Option<&dyn authorization::InteractiveLogin> {
        None
    }

    /// The DPoP key this source binds its tokens to, if any (RFC 9449).
    #[cfg(feature = "http")]
    fn dpop_key(&self) -> Option<&dpop::DpopKey> {
        None
    }

    /// The TLS settings (a client certificate, private roots) API requests with this
    /// source's tokens need: certificate-bound tokens (RFC 8705) must reach the API over
    /// a connection with the same certificate.
    #[cfg(feature = "http")]
    fn tls_options(&self) -> Option<&crate::http::TlsOptions> {
        None
    }
}

/// A source built from an async closure, for apps and tests.
pub struct FnSource<F> {
    fetch: F,
}

/// Builds a [`Source`] whose `fetch` is the given async closure.
///
/// ```
/// use std::time::Duration;
/// use tokenlease::{source_fn, FetchedToken};
/// let source = source_fn(|| async { Ok(FetchedToken::bearer("t", Duration::from_secs(60))) });
/// # let _ = source;
/// ```
pub fn source_fn<F, Fut>(fetch: F) -> FnSource<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<FetchedToken>> + Send + 'static,
{
    FnSource { fetch }
}

impl<F> fmt::Debug for FnSource<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnSource")
    }
}

#[async_trait]
impl<F, Fut> Source for FnSource<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<FetchedToken>> + Send + 'static,
{
    async fn fetch(&self) -> Result<FetchedToken> {
        (self.fetch)().await
    }
}

/// A source whose calls block (foreign callbacks from C, Python, Kotlin, Swift). Wrap it in
/// [`BlockingSourceAdapter`]; its calls then run on the background runtime's blocking
/// pool, so a slow callback never stalls other managers.
pub trait BlockingSource: Send + Sync + fmt::Debug + 'static {
    /// See [`Source::fetch`].
    fn fetch(&self) -> Result<FetchedToken>;
    /// See [`Source::refresh`]; the default calls `fetch`.
    fn refresh(&self, refresh_token: &SecretString) -> Result<FetchedToken> {
        let _ = refresh_token;
        self.fetch()
    }
    /// See [`Source::revoke`]; the default does nothing.
    fn revoke(&self, token: &Token) -> Result<()> {
        let _ = token;
        Ok(())
    }
}

/// Runs a [`BlockingSource`] on the blocking pool, one call at a time: a call the manager
/// stopped waiting for (source timeout) must return before the next one starts, so fetch,
/// refresh and revoke never overlap and a hung callback holds exactly one thread.
#[derive(Debug)]
pub struct BlockingSourceAdapter<S> {
    source: std::sync::Arc<S>,
    gate: crate::runtime::CallGate,
}

impl<S: BlockingSource> BlockingSourceAdapter<S> {
    /// Wraps a blocking source.
    pub fn new(source: S) -> Self {
        Self {
            source: std::sync::Arc::new(source),
            gate: crate::runtime::CallGate::new(1),
        }
    }
}

#[async_trait]
impl<S: BlockingSource> Source for BlockingSourceAdapter<S> {
    async fn fetch(&self) -> Result<FetchedToken> {
        let source = self.source.clone();
        self.gate
            .run_blocking("token source", move || source.fetch())
            .await
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<FetchedToken> {
        let (source, refresh_token) = (self.source.clone(), refresh_token.clone());
        self.gate
            .run_blocking("token source", move || source.refresh(&refresh_token))
            .await
    }

    async fn revoke(&self, token: &Token) -> Result<()> {
        let (source, token) = (self.source.clone(), token.clone());
        self.gate
            .run_blocking("token source", move || source.revoke(&token))
            .await
    }
}
