//! [`NativeTokenManager`]: the exported manager (a [`tokenlease::Manager`]).

use std::fmt;
use std::sync::Arc;

use tokenlease::{BlockingSourceAdapter, BlockingStoreAdapter, Manager};

use crate::cancel::CancelSignal;
use crate::clock::ManualClock;
use crate::errors::{BindingResult, TokenleaseError};
use crate::events::{EventListener, ForeignListener};
#[cfg(doc)]
use crate::fast_path::{tokenlease_uniffi_fast_generation, tokenlease_uniffi_fast_release};
use crate::source::{ForeignSource, RefreshingTokenSource, TokenSource};
use crate::status::ManagerStatus;
use crate::store::{ForeignStore, TokenStore};
use crate::token::TokenInfo;

/// Gets, caches and refreshes the token of one credential (a [`tokenlease::Manager`]).
///
/// Named `Native…` because Kotlin and Swift code uses the hand-written `TokenManager` around
/// it (same methods, plus a cached read that does not pay for a generic UniFFI call and
/// record lifting on every call). Thread-safe; share one per credential. Dropping it (Kotlin `close()`/`use {}`, Swift
/// deinit) closes the core manager; [`NativeTokenManager::shutdown`] closes it explicitly while
/// the object is still referenced (later calls then fail with `Closed`).
#[derive(uniffi::Object)]
pub struct NativeTokenManager {
    manager: Manager,
}

impl fmt::Debug for NativeTokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeTokenManager")
            .field("manager", &self.manager)
            .finish()
    }
}

impl NativeTokenManager {
    /// The core manager.
    pub(crate) fn core(&self) -> &Manager {
        &self.manager
    }
}

impl Drop for NativeTokenManager {
    fn drop(&mut self) {
        self.manager.close();
    }
}

#[uniffi::export]
impl NativeTokenManager {
    /// A manager described by the shared JSON or TOML configuration (the same text every
    /// binding accepts). Fails with `Configuration` naming the offending field.
    #[uniffi::constructor]
    pub fn from_config(config: String) -> BindingResult<Arc<Self>> {
        Ok(Arc::new(Self {
            manager: Manager::from_config(&config)?,
        }))
    }

    /// A manager described by the shared configuration, running on `clock` instead of the
    /// system clock (for tests: see [`ManualClock`]).
    #[uniffi::constructor]
    pub fn from_config_on_clock(
        config: String,
        clock: Arc<ManualClock>,
    ) -> BindingResult<Arc<Self>> {
        let manager = tokenlease::config::ManagerConfig::parse(&config)?
            .builder()?
            .clock(clock.shared())
            .build();
        Ok(Arc::new(Self { manager }))
    }

    /// A manager around a foreign source, optionally persisting to a foreign store under
    /// `key` (default `"default"`). Source and store run on tokenlease's blocking pool.
    #[uniffi::constructor(default(store = None, key = None))]
    pub fn with_source(
        source: Arc<dyn TokenSource>,
        store: Option<Arc<dyn TokenStore>>,
        key: Option<String>,
    ) -> Arc<Self> {
        Self::with_foreign_source(ForeignSource::FetchOnly(source), store, key)
    }

    /// A manager around a foreign source that also refreshes with refresh tokens and
    /// revokes on logout; otherwise as [`NativeTokenManager::with_source`].
    #[uniffi::constructor(default(store = None, key = None))]
    pub fn with_refreshing_source(
        source: Arc<dyn RefreshingTokenSource>,
        store: Option<Arc<dyn TokenStore>>,
        key: Option<String>,
    ) -> Arc<Self> {
        Self::with_foreign_source(ForeignSource::Refreshing(source), store, key)
    }

    /// A valid token like `token()`, except that cancelling `signal` ends this caller's wait
    /// at once with `Cancelled` (the shared refresh goes on for the others). For callers
    /// whose generated async code does not forward cancellation (Swift tasks).
    pub async fn token_cancellable(&self, signal: Arc<CancelSignal>) -> BindingResult<TokenInfo> {
        tokio::select! {
            biased;
            () = signal.cancelled() => Err(TokenleaseError::Cancelled {
                reason: "the caller stopped waiting for the token".to_owned(),
            }),
            token = self.manager.token() => Ok(TokenInfo::from(&*token?)),
        }
    }

    /// A valid token: from the cache when fresh (no thread hop), otherwise after the one
    /// in-flight refresh, which runs on tokenlease's background runtime. Cancelling the
    /// Kotlin coroutine / dropping the future stops this caller's wait.
    pub async fn token(&self) -> BindingResult<TokenInfo> {
        // `Manager::token` serves a fresh token inline and otherwise spawns the wait on
        // core's background runtime (aborted when this future is dropped), so no foreign
        // or UniFFI executor ever runs lifecycle work.
        let token = self.manager.token().await?;
        Ok(TokenInfo::from(&*token))
    }

    /// Blocking form of `token()`. Fails with `Usage` when called from a source, store or
    /// listener callback (it would deadlock).
    pub fn token_blocking(&self) -> BindingResult<TokenInfo> {
        let token = self.manager.token_blocking()?;
        Ok(TokenInfo::from(&*token))
    }

    /// The cached token if it is fresh or stale, without waiting; null/nil otherwise.
    pub fn cached(&self) -> Option<TokenInfo> {
        self.manager.cached().map(|token| TokenInfo::from(&*token))
    }

    /// Discards the cached token if it is still `generation` (a late rejection of an
    /// older token never discards a newer one). Returns whether it did.
    pub fn invalidate(&self, generation: u64) -> bool {
        self.manager.invalidate_generation(generation)
    }

    /// Logs out: revokes at the source, clears memory and store. The next `token()`
    /// fetches a new token.
    pub async fn revoke(&self) -> BindingResult<()> {
        Ok(self.manager.revoke().await?)
    }

    /// Blocking form of `revoke()`.
    pub fn revoke_blocking(&self) -> BindingResult<()> {
        Ok(self.manager.revoke_blocking()?)
    }

    /// A snapshot of state, deadlines, last error and counters.
    pub fn status(&self) -> ManagerStatus {
        self.manager.status().into()
    }

    /// The store key.
    pub fn key(&self) -> String {
        self.manager.key().to_owned()
    }

    /// Waits until the events queued so far were delivered to listeners, at most
    /// `timeout_ms`; returns whether they were. Listeners run on tokenlease's event thread
    /// (never the refresh thread), after the call that caused the event returns.
    pub fn flush_events(&self, timeout_ms: u64) -> bool {
        self.manager
            .flush_events(std::time::Duration::from_millis(timeout_ms))
    }

    /// Adds an event listener.
    pub fn add_listener(&self, listener: Arc<dyn EventListener>) {
        self.manager
            .add_listener(Arc::new(ForeignListener(listener)));
    }

    /// Closes the manager now: cancels its timer, drops the cached token; later calls fail
    /// with `Closed`. (Named `shutdown` because Kotlin's generated `close()` frees the
    /// object; both close the manager.)
    pub fn shutdown(&self) {
        self.manager.close();
    }

    /// Whether the manager is closed.
    pub fn is_closed(&self) -> bool {
        self.manager.is_closed()
    }

    /// The generation of the token `cached()` would return, or 0 when it would return
    /// null/nil (generations start at 1). A stale token makes sure a background refresh is
    /// under way, exactly as `token()` does.
    ///
    /// This lets a foreign wrapper keep the last `TokenInfo` it lifted and hand it out again
    /// while the generation is unchanged (a generation's value, type and expiry never
    /// change), so the strings cross the boundary once per token instead of once per call.
    pub fn cached_generation(&self) -> u64 {
        self.manager.cached().map_or(0, |token| token.generation())
    }

    /// A strong reference to this manager for [`tokenlease_uniffi_fast_generation`], as an
    /// opaque non-zero handle. The caller owns it and gives it back exactly once with
    /// [`tokenlease_uniffi_fast_release`]; the manager lives at least that long.
    pub fn fast_handle(self: Arc<Self>) -> u64 {
        Arc::into_raw(self) as usize as u64
    }
}

impl NativeTokenManager {
    pub(crate) fn manager(&self) -> &Manager {
        &self.manager
    }

    fn with_foreign_source(
        source: ForeignSource,
        store: Option<Arc<dyn TokenStore>>,
        key: Option<String>,
    ) -> Arc<Self> {
        let mut builder = Manager::builder(BlockingSourceAdapter::new(source));
        if let Some(store) = store {
            builder = builder.store(Arc::new(BlockingStoreAdapter::new(ForeignStore(store))));
        }
        if let Some(key) = key {
            builder = builder.key(key);
        }
        Arc::new(Self {
            manager: builder.build(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorKind;
    use crate::test_support::{block_on, CountingSource};
    use crate::token::FetchedToken;
    use tokenlease::SecretString;

    #[test]
    fn bad_config_is_a_configuration_error() {
        let err = NativeTokenManager::from_config("{\"nope\": 1}".into()).unwrap_err();
        assert!(
            matches!(err, TokenleaseError::Configuration { .. }),
            "{err}"
        );
    }

    #[test]
    fn foreign_source_errors_keep_their_kind() {
        let manager = NativeTokenManager::with_source(CountingSource::new(true), None, None);
        let err = manager.token_blocking().unwrap_err();
        assert!(matches!(err, TokenleaseError::InvalidGrant { .. }), "{err}");
        assert_eq!(err.reason(), "the grant is gone");
        let status = manager.status();
        assert_eq!(status.last_error_kind, Some(ErrorKind::InvalidGrant));
    }

    #[test]
    fn tokens_flow_invalidate_and_close() {
        let manager = NativeTokenManager::with_source(CountingSource::new(false), None, None);
        let token = manager.token_blocking().unwrap();
        assert_eq!(token.value.expose(), "value-0");
        assert!(!format!("{token:?}").contains("value-0"));
        assert_eq!(manager.cached(), Some(token.clone()));
        assert!(manager.invalidate(token.generation));
        assert!(!manager.invalidate(token.generation));
        let again = block_on(manager.token()).unwrap();
        assert_eq!(again.generation, token.generation + 1);
        assert_eq!(again.value.expose(), "value-1");
        manager.shutdown();
        assert!(manager.is_closed());
        assert!(matches!(
            manager.token_blocking(),
            Err(TokenleaseError::Closed { .. })
        ));
    }

    /// Records what the manager asks of a refreshing source.
    #[derive(Debug, Default)]
    struct RotatingSource {
        calls: std::sync::Mutex<Vec<String>>,
    }

    impl RotatingSource {
        fn token(&self, value: String, refresh: String) -> FetchedToken {
            FetchedToken {
                value: SecretString::new(value),
                expires_in_ms: 600,
                token_type: "Bearer".into(),
                refresh_token: Some(SecretString::new(refresh)),
                id_token: None,
            }
        }
    }

    impl RefreshingTokenSource for RotatingSource {
        fn fetch(&self) -> BindingResult<FetchedToken> {
            self.calls.lock().unwrap().push("fetch".into());
            Ok(self.token("access-0".into(), "refresh-0".into()))
        }

        fn refresh(&self, refresh_token: SecretString) -> BindingResult<FetchedToken> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(format!("refresh {}", refresh_token.expose()));
            let n = calls.len();
            Ok(self.token(format!("access-{n}"), format!("refresh-{n}")))
        }

        fn revoke(&self, token: TokenInfo) -> BindingResult<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("revoke {}", token.value.expose()));
            Ok(())
        }
    }

    #[test]
    fn a_refreshing_source_gets_the_rotated_refresh_token_and_the_revoked_token() {
        let source = Arc::new(RotatingSource::default());
        let manager = NativeTokenManager::with_refreshing_source(source.clone(), None, None);
        assert_eq!(manager.token_blocking().unwrap().value.expose(), "access-0");
        // Past the mandatory point of the 600 ms token: the next read refreshes.
        std::thread::sleep(std::time::Duration::from_millis(650));
        let second = manager.token_blocking().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(650));
        let third = manager.token_blocking().unwrap();
        manager.revoke_blocking().unwrap();
        let calls = source.calls.lock().unwrap().clone();
        // Background refreshes may add more; the chain must be unbroken and rotated.
        assert_eq!(calls[0], "fetch");
        assert_eq!(calls[1], "refresh refresh-0");
        assert_eq!(calls[2], "refresh refresh-2");
        assert!(
            calls.iter().filter(|call| *call == "fetch").count() == 1,
            "{calls:?}"
        );
        assert_eq!(
            calls.last().unwrap(),
            &format!("revoke {}", third.value.expose())
        );
        assert_ne!(second.value, third.value);
    }
}
