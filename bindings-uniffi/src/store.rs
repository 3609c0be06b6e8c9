//! Foreign token stores: the [`TokenStore`] trait Kotlin and Swift implement, and its
//! adapter to core's `BlockingStore`.

use std::fmt;
use std::sync::Arc;

use tokenlease::TokenRecord;

use crate::errors::BindingResult;

/// A token store implemented in Kotlin or Swift, holding opaque JSON records by key
/// (the records contain token values: keep them private). Called on the blocking pool.
#[uniffi::export(with_foreign)]
pub trait TokenStore: Send + Sync {
    /// The record stored under `key`, or null/nil.
    fn load(&self, key: String) -> BindingResult<Option<String>>;
    /// Stores `record_json` under `key`, replacing what was there.
    fn save(&self, key: String, record_json: String) -> BindingResult<()>;
    /// Removes the record under `key` (no error when absent).
    fn delete(&self, key: String) -> BindingResult<()>;
}

pub(crate) struct ForeignStore(pub(crate) Arc<dyn TokenStore>);

impl fmt::Debug for ForeignStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForeignStore")
    }
}

impl tokenlease::BlockingStore for ForeignStore {
    fn load(&self, key: &str) -> tokenlease::Result<Option<TokenRecord>> {
        match self.0.load(key.to_owned())? {
            Some(json) => TokenRecord::from_json(&json).map(Some),
            None => Ok(None),
        }
    }

    fn save(&self, key: &str, record: &TokenRecord) -> tokenlease::Result<()> {
        Ok(self.0.save(key.to_owned(), record.to_json()?)?)
    }

    fn delete(&self, key: &str) -> tokenlease::Result<()> {
        Ok(self.0.delete(key.to_owned())?)
    }
}
