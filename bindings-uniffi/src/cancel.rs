//! [`CancelSignal`]: ends the waits of [`crate::NativeTokenManager::token_cancellable`] calls
//! (Swift task cancellation).

use std::sync::Arc;

#[cfg(doc)]
use crate::manager::NativeTokenManager;

/// Cancels the waits of the [`NativeTokenManager::token_cancellable`] calls it is given to.
/// Cancelling is permanent: use one signal per call.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelSignal {
    cancelled: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

#[uniffi::export]
impl CancelSignal {
    /// A signal that is not cancelled yet.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Ends the waits that use this signal (idempotent, callable from any thread).
    pub fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl CancelSignal {
    pub(crate) async fn cancelled(&self) {
        loop {
            // Registered before the check, so a `cancel` between the two still wakes it.
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::{BindingResult, TokenleaseError};
    use crate::manager::NativeTokenManager;
    use crate::source::TokenSource;
    use crate::test_support::block_on;
    use crate::token::FetchedToken;
    use tokenlease::SecretString;

    #[derive(Debug)]
    struct GatedSource(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

    impl TokenSource for GatedSource {
        fn fetch(&self) -> BindingResult<FetchedToken> {
            let _ = self.0.lock().unwrap().recv();
            Ok(FetchedToken {
                value: SecretString::new("gated"),
                expires_in_ms: 60_000,
                token_type: "Bearer".into(),
                refresh_token: None,
                id_token: None,
            })
        }
    }

    #[test]
    fn a_cancelled_signal_ends_only_that_wait() {
        let (open_gate, gate) = std::sync::mpsc::channel();
        let source = Arc::new(GatedSource(std::sync::Mutex::new(gate)));
        let manager = NativeTokenManager::with_source(source, None, None);
        let signal = CancelSignal::new();
        let waiter = {
            let (manager, signal) = (manager.clone(), signal.clone());
            std::thread::spawn(move || block_on(manager.token_cancellable(signal)))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "waits while the source is blocked");
        signal.cancel();
        assert!(signal.is_cancelled());
        let result = waiter.join().unwrap();
        assert!(
            matches!(result, Err(TokenleaseError::Cancelled { .. })),
            "{result:?}"
        );
        // The shared refresh went on: once the source answers, callers get its token.
        open_gate.send(()).unwrap();
        assert_eq!(manager.token_blocking().unwrap().value.expose(), "gated");
        // A signal cancelled before the call ends it at once.
        let cancelled = CancelSignal::new();
        cancelled.cancel();
        let result = block_on(manager.token_cancellable(cancelled));
        assert!(
            matches!(result, Err(TokenleaseError::Cancelled { .. })),
            "{result:?}"
        );
    }
}
