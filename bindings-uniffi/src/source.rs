//! Foreign token sources: the [`TokenSource`] and [`RefreshingTokenSource`] traits Kotlin
//! and Swift implement, and their adapter to core's `BlockingSource`.

use std::fmt;
use std::sync::Arc;

use tokenlease::{SecretString, Token};

use crate::errors::BindingResult;
use crate::token::{FetchedToken, TokenInfo};

/// A token source implemented in Kotlin or Swift. Called on tokenlease's blocking pool
/// (never on the caller's thread, never concurrently for one manager); it may block.
/// Throw a `TokenleaseError` variant to choose the failure's kind.
#[uniffi::export(with_foreign)]
pub trait TokenSource: Send + Sync {
    /// Obtains a new token.
    fn fetch(&self) -> BindingResult<FetchedToken>;
}

/// A [`TokenSource`] that also uses refresh tokens and can log out (implemented in Kotlin or
/// Swift). The manager calls `refresh` with the refresh token of the current token (the one
/// the last `fetch`/`refresh` returned, or the one a store or sibling process saved) instead
/// of `fetch` when it has one, and falls back to `fetch` when `refresh` fails with
/// `InvalidGrant`; a rotated refresh token is saved before the new token is handed out.
#[uniffi::export(with_foreign)]
pub trait RefreshingTokenSource: Send + Sync {
    /// Obtains a new token with the primary grant (login, client credentials, ...).
    fn fetch(&self) -> BindingResult<FetchedToken>;
    /// Obtains a new token with `refresh_token`.
    fn refresh(&self, refresh_token: SecretString) -> BindingResult<FetchedToken>;
    /// Revokes `token` at the server (logout); called by the manager's `revoke()`.
    fn revoke(&self, token: TokenInfo) -> BindingResult<()>;
}

pub(crate) enum ForeignSource {
    FetchOnly(Arc<dyn TokenSource>),
    Refreshing(Arc<dyn RefreshingTokenSource>),
}

impl fmt::Debug for ForeignSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FetchOnly(_) => "ForeignSource(fetch only)",
            Self::Refreshing(_) => "ForeignSource(refreshing)",
        })
    }
}

impl tokenlease::BlockingSource for ForeignSource {
    fn fetch(&self) -> tokenlease::Result<tokenlease::FetchedToken> {
        let fetched = match self {
            Self::FetchOnly(source) => source.fetch()?,
            Self::Refreshing(source) => source.fetch()?,
        };
        Ok(fetched.into())
    }

    fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> tokenlease::Result<tokenlease::FetchedToken> {
        match self {
            Self::FetchOnly(_) => self.fetch(),
            Self::Refreshing(source) => Ok(source.refresh(refresh_token.clone())?.into()),
        }
    }

    fn revoke(&self, token: &Token) -> tokenlease::Result<()> {
        match self {
            Self::FetchOnly(_) => Ok(()),
            Self::Refreshing(source) => Ok(source.revoke(TokenInfo::from(token))?),
        }
    }
}
