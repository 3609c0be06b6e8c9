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

// Foundations every layer uses.
pub mod clock;
mod error;
pub mod runtime;
mod secret;

// The lifecycle: the pure state machine and the manager that drives it.
pub mod lifecycle;
// Where tokens come from.
pub mod source;
// Where tokens live between runs and between processes.
pub mod store;
// HTTP plumbing shared by the sources and the authorized client.
#[cfg(feature = "http")]
pub mod http;
// The configuration file every binding reads.
#[cfg(feature = "config")]
pub mod config;
// A manual clock and helpers for testing code built on tokenlease.
#[cfg(feature = "test-util")]
pub mod testing;

// Short paths for the modules users name most.
#[cfg(feature = "http")]
pub use http::client;
pub use lifecycle::{events, policy};
#[cfg(feature = "http")]
pub use source::{oauth2, session};
#[cfg(unix)]
pub use store::file as file_store;
#[cfg(feature = "redis")]
pub use store::redis as redis_store;

pub use clock::{Clock, MonoTime, SystemClock};
pub use error::{redact_foreign_text, Error, ErrorKind, Result, MAX_FOREIGN_TEXT_CHARS};
pub use events::{Counters, Event, EventListener, RefreshReason, Status, TokenState};
#[cfg(unix)]
pub use file_store::{EncryptionKey, FileStore, LeaseInfo};
pub use lifecycle::manager::{Manager, ManagerBuilder, Rejection, RetryError, TokenRef};
#[cfg(feature = "http")]
pub use lifecycle::manager::{ResponseVerdict, MAX_JUDGED_HEADERS};
pub use lifecycle::token::{check_token_text, FetchedToken, Lifetime, Token, MAX_TOKEN_BYTES};
pub use policy::Policy;
#[cfg(feature = "redis")]
pub use redis_store::{RedisOptions, RedisStore};
pub use secret::SecretString;
pub use source::{source_fn, BlockingSource, BlockingSourceAdapter, FnSource, Source};
pub use store::{
    BlockingStore, BlockingStoreAdapter, IdleRecord, Lease, LeaseOutcome, MemoryStore, Store,
    TokenRecord,
};
