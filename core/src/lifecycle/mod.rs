//! The token lifecycle: when a token is fresh, stale or dead, when to refresh, who waits,
//! what a failure, an invalidation, a revoke or a close does. [`machine`] decides all of it
//! without I/O or a clock of its own; the [`Manager`](crate::Manager) drives it on the
//! background runtime, calling sources and stores and publishing tokens for the lock-free
//! read path. See docs/architecture.md.

pub mod events;
pub mod machine;
pub(crate) mod manager;
pub mod policy;
pub(crate) mod token;
