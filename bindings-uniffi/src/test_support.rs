//! Test helpers shared by the unit tests of several modules.

use std::sync::Arc;

use tokenlease::SecretString;

use crate::errors::{BindingResult, TokenleaseError};
use crate::source::TokenSource;
use crate::token::FetchedToken;

#[derive(Debug)]
pub(crate) struct CountingSource {
    calls: std::sync::atomic::AtomicU64,
    fail: bool,
}

impl CountingSource {
    pub(crate) fn new(fail: bool) -> Arc<Self> {
        Arc::new(Self {
            calls: 0.into(),
            fail,
        })
    }
}

impl TokenSource for CountingSource {
    fn fetch(&self) -> BindingResult<FetchedToken> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.fail {
            return Err(TokenleaseError::InvalidGrant {
                reason: "the grant is gone".into(),
            });
        }
        Ok(FetchedToken {
            value: SecretString::new(format!("value-{n}")),
            expires_in_ms: 60_000,
            token_type: "Bearer".into(),
            refresh_token: None,
            id_token: None,
        })
    }
}

pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}
