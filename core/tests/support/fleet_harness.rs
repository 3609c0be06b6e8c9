//! What the multi-process tests (`fleet.rs`, `lease_faults.rs`) share: the worker harness
//! arguments, one-at-a-time execution, private temp directories.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Arguments that make a re-executed test binary run only its `worker_entry` test.
pub const WORKER_HARNESS_ARGS: &[&str] = &["worker_entry", "--exact", "--nocapture", "--quiet"];

static SERIAL: Mutex<()> = Mutex::new(());

/// Multi-process tests run one at a time (they would compete for the CPU otherwise).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A private temp directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        TempDir(std::env::temp_dir().join(format!(
            "tokenlease-fleet-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The worker's `--store` argument for a file store in this directory.
    pub fn spec(&self) -> String {
        format!("file:{}", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
