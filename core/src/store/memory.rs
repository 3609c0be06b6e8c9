//! The in-process store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{BlockingStore, Lease, LeaseOutcome, Store, TokenRecord};
use crate::error::{Error, ErrorKind, Result};

/// An in-process store; shared between managers of one process through `Arc`, with an
/// in-process lease so managers sharing it refresh a key once.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<String, TokenRecord>>,
    leases: Arc<Mutex<HashMap<String, MemoryLeaseState>>>,
}

#[derive(Debug, Clone, Copy)]
struct MemoryLeaseState {
    fencing_token: u64,
    held_until: Option<std::time::Instant>,
}

#[derive(Debug)]
struct MemoryLease {
    key: String,
    fencing_token: u64,
    leases: Arc<Mutex<HashMap<String, MemoryLeaseState>>>,
}

#[async_trait]
impl Lease for MemoryLease {
    fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    async fn release(self: Box<Self>) -> Result<()> {
        let mut leases = self.leases.lock();
        if let Some(state) = leases.get_mut(&self.key) {
            if state.fencing_token == self.fencing_token {
                state.held_until = None;
            }
        }
        Ok(())
    }

    async fn renew(&self, ttl: Duration) -> Result<()> {
        let mut leases = self.leases.lock();
        match leases.get_mut(&self.key) {
            Some(state) if state.fencing_token == self.fencing_token => {
                state.held_until = Some(std::time::Instant::now() + ttl);
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::Store,
                format!("lease of {:?} passed to another holder", self.key),
            )),
        }
    }
}

/// How often a waiting lease taker looks again.
const LEASE_POLL: Duration = Duration::from_millis(5);

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.lock().is_empty()
    }

    /// The record under `key`, synchronously (handy in tests).
    pub fn get(&self, key: &str) -> Option<TokenRecord> {
        self.records.lock().get(key).cloned()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.records.lock().len())
            .finish()
    }
}

impl BlockingStore for MemoryStore {
    fn load(&self, key: &str) -> Result<Option<TokenRecord>> {
        Ok(self.records.lock().get(key).cloned())
    }

    fn save(&self, key: &str, record: &TokenRecord) -> Result<()> {
        self.records.lock().insert(key.to_owned(), record.clone());
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.records.lock().remove(key);
        Ok(())
    }
}

impl MemoryStore {
    fn try_lease(&self, key: &str, ttl: Duration) -> Option<MemoryLease> {
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock();
        let state = leases.entry(key.to_owned()).or_insert(MemoryLeaseState {
            fencing_token: 0,
            held_until: None,
        });
        if state.held_until.is_some_and(|until| until > now) {
            return None;
        }
        state.fencing_token += 1;
        state.held_until = Some(now + ttl);
        Some(MemoryLease {
            key: key.to_owned(),
            fencing_token: state.fencing_token,
            leases: self.leases.clone(),
        })
    }
}

// The memory store never blocks, so it is also a direct async store.
#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, key: &str) -> Result<Option<TokenRecord>> {
        BlockingStore::load(self, key)
    }
    async fn save(&self, key: &str, record: &TokenRecord) -> Result<()> {
        BlockingStore::save(self, key, record)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        BlockingStore::delete(self, key)
    }

    async fn acquire_lease(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        let give_up = std::time::Instant::now() + wait;
        loop {
            if let Some(lease) = self.try_lease(key, ttl) {
                return Ok(LeaseOutcome::Acquired(Box::new(lease)));
            }
            if std::time::Instant::now() >= give_up {
                return Ok(LeaseOutcome::Busy);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    async fn save_fenced(&self, key: &str, record: &TokenRecord, lease: &dyn Lease) -> Result<()> {
        let current = self.leases.lock().get(key).map(|state| state.fencing_token);
        if current != Some(lease.fencing_token()) {
            return Err(Error::new(
                ErrorKind::Store,
                format!("lease of {key:?} passed to another holder; write refused"),
            ));
        }
        BlockingStore::save(self, key, record)
    }
}
