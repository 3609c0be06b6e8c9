//! Kotlin and Swift bindings of tokenlease through UniFFI (proc-macros, library mode).
//!
//! This crate converts types and errors and nothing else: every lifecycle decision (cache,
//! single-flight, background refresh, retry, persistence) is made by [`tokenlease::Manager`].
//! The Kotlin and Swift sources are generated from the built library by this crate's
//! `uniffi-bindgen` binary (see `docs/mobile.md` and `scripts/test-kotlin`, `scripts/test-swift`).
//!
//! Exported:
//! - [`NativeTokenManager`], built from the shared JSON/TOML config
//!   ([`NativeTokenManager::from_config`]) or from foreign implementations of [`TokenSource`]
//!   and [`TokenStore`] ([`NativeTokenManager::with_source`]); `token()` is async (Kotlin
//!   `suspend`, Swift `async`) and runs on tokenlease's one background runtime,
//!   `token_blocking()` blocks the calling thread. Apps use the small hand-written
//!   `TokenManager` class of each language, which wraps it and adds the cached-read fast path
//!   (see [`NativeTokenManager::cached_generation`] and [`tokenlease_uniffi_fast_generation`]).
//! - [`TokenleaseError`]: one variant per [`tokenlease::ErrorKind`], in the same order (so
//!   the variant's position is the stable code), each carrying a message without secrets.
//! - Foreign traits [`TokenSource`] (or [`RefreshingTokenSource`], which also refreshes and
//!   revokes), [`TokenStore`] and [`EventListener`]; foreign code picks the error kind of a
//!   failure by throwing the matching `TokenleaseError` variant.
//! - Token values are core's [`SecretString`], mapped to a hand-written never-printing
//!   `SecretString` class/struct in Kotlin and Swift.
//! - [`CancelSignal`] for [`NativeTokenManager::token_cancellable`] (Swift task cancellation).
//!
//! Modules, by concept: `errors` (the error enum and kinds), `token` (token records and the
//! secret type), `status`, `events` (events and the foreign listener), `source` and `store`
//! (foreign traits and their adapters to core), `manager` ([`NativeTokenManager`]), `cancel`
//! ([`CancelSignal`]) and `fast_path` (the two plain C functions of the JNA cached read).
//!
//! [`SecretString`]: tokenlease::SecretString

mod cancel;
mod clock;
mod errors;
mod events;
mod fast_path;
mod login;
mod manager;
mod requests;
mod source;
mod status;
mod store;
#[cfg(test)]
mod test_support;
mod token;

pub use cancel::CancelSignal;
pub use clock::ManualClock;
pub use errors::{error_kind_code, error_kind_name, error_kind_of, ErrorKind, TokenleaseError};
pub use events::{EventListener, RefreshReason, TokenEvent};
pub use fast_path::{tokenlease_uniffi_fast_generation, tokenlease_uniffi_fast_release};
pub use login::{DeviceLogin, LoginRequest};
pub use manager::NativeTokenManager;
pub use requests::{RequestHeader, ResponseHeader};
pub use source::{RefreshingTokenSource, TokenSource};
pub use status::{ManagerCounters, ManagerStatus, TokenState};
pub use store::TokenStore;
pub use token::{FetchedToken, TokenInfo};

uniffi::setup_scaffolding!();
