//! tokenlease: one correct token lifecycle.
//!
//! A [`Manager`] gets a token from a [`Source`], caches it, refreshes it in the background
//! before it expires (callers holding a valid token never wait), makes every concurrent
//! caller share one refresh, retries an operation once when the server rejects a token,
//! persists tokens in a [`Store`], and reports what happened through [`Event`]s and
//! [`Status`].
//!
//! ```no_run
//! use std::time::Duration;
//! use tokenlease::{source_fn, FetchedToken, Manager};
//!
//! # async fn demo() -> tokenlease::Result<()> {
//! let manager = Manager::builder(source_fn(|| async {
//!     Ok(FetchedToken::bearer("opaque-token", Duration::from_secs(900)))
//! }))
//! .build();
//! let token = manager.token().await?;
//! println!("{} expires at {:?}", token.token_type(), token.expires_at_wall());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "http")]
pub mod client;
pub mod clock;
#[cfg(feature = "config")]
pub mod config;
mod error;
pub mod events;
#[cfg(unix)]
pub mod file_store;
#[cfg(feature = "http")]
pub mod http;
mod manager;
#[cfg(feature = "http")]
pub mod oauth2;
pub mod policy;
#[cfg(feature = "redis")]
pub mod redis_store;
pub mod runtime;
mod secret;
#[cfg(feature = "http")]
pub mod session;
mod source;
pub mod store;
mod token;

pub use clock::{Clock, MonoTime, SystemClock};
pub use error::{redact_foreign_text, Error, ErrorKind, Result, MAX_FOREIGN_TEXT_CHARS};
pub use events::{Counters, Event, EventListener, RefreshReason, Status, TokenState};
#[cfg(unix)]
pub use file_store::{EncryptionKey, FileStore, LeaseInfo};
pub use manager::{Manager, ManagerBuilder, Rejection, RetryError, TokenRef};
pub use policy::Policy;
#[cfg(feature = "redis")]
pub use redis_store::{RedisOptions, RedisStore};
pub use secret::SecretString;
pub use source::{source_fn, BlockingSource, BlockingSourceAdapter, FnSource, Source};
pub use store::{
    BlockingStore, BlockingStoreAdapter, Lease, LeaseOutcome, MemoryStore, Store, TokenRecord,
};
pub use token::{check_token_text, FetchedToken, Lifetime, Token, MAX_TOKEN_BYTES};
