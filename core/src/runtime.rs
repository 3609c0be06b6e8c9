//! The one background runtime per process.
//!
//! Every manager (and, later, every language binding) runs its refreshes, timers and
//! waits here: a single named thread with a current-thread tokio runtime, started on first
//! use. Blocking store and source callbacks run on tokio's blocking pool of this runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Name of the background thread.
pub const BACKGROUND_THREAD_NAME: &str = "tokenlease-bg";

/// Most threads the blocking pool (foreign sources and stores, the file store) ever holds.
/// Each foreign source runs one call at a time and each blocking store at most a few, so
/// hung callbacks hold a bounded number of threads however often the manager retries.
pub const MAX_BLOCKING_THREADS: usize = 128;

static STARTS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ON_RUNTIME: Cell<bool> = const { Cell::new(false) };
}

struct Background {
    handle: Handle,
    thread_id: std::thread::ThreadId,
}

fn background() -> &'static Background {
    static BACKGROUND: OnceLock<Background> = OnceLock::new();
    BACKGROUND.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name("tokenlease-blocking")
            .on_thread_start(|| ON_RUNTIME.with(|flag| flag.set(true)))
            .build()
            .expect("tokenlease: cannot build the background tokio runtime");
        let handle = runtime.handle().clone();
        let thread = std::thread::Builder::new()
            .name(BACKGROUND_THREAD_NAME.to_owned())
            .spawn(move || {
                ON_RUNTIME.with(|flag| flag.set(true));
                STARTS.fetch_add(1, Ordering::SeqCst);
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("tokenlease: cannot start the background thread");
        Background {
            handle,
            thread_id: thread.thread().id(),
        }
    })
}

/// The background runtime's handle (starting it if needed).
pub fn handle() -> &'static Handle {
    &background().handle
}

/// Spawns a task on the background runtime.
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(future)
}

/// Runs a blocking callback (a foreign source or store) on the runtime's blocking pool.
pub(crate) async fn run_blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|err| {
        crate::Error::new(
            crate::ErrorKind::Internal,
            if err.is_panic() {
                format!("a {what} callback panicked")
            } else {
                format!("a {what} callback was cancelled")
            },
        )
    })?
}

/// Limits how many calls of one foreign source or store run at once. A call the manager
/// stopped waiting for (a timeout) keeps its permit until the callback really returns, so
/// with a limit of one a retry never overlaps a hung call and no more threads pile up.
#[derive(Debug)]
pub(crate) struct CallGate(std::sync::Arc<tokio::sync::Semaphore>);

impl CallGate {
    pub(crate) fn new(concurrent_calls: usize) -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(
            concurrent_calls,
        )))
    }

    /// Waits for a permit (cancellable: the caller's timeout applies), then runs `work` on
    /// the blocking pool holding the permit until `work` returns.
    pub(crate) async fn run_blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce() -> crate::Result<T> + Send + 'static,
    ) -> crate::Result<T> {
        let permit = self.0.clone().acquire_owned().await.map_err(|_| {
            crate::Error::new(
                crate::ErrorKind::Internal,
                format!("the {what} gate closed"),
            )
        })?;
        run_blocking(what, move || {
            let _permit = permit;
            work()
        })
        .await
    }
}

/// Whether the calling thread belongs to the background runtime (its thread or its
/// blocking pool). Blocking on tokenlease from there would deadlock.
pub fn on_background_runtime() -> bool {
    ON_RUNTIME.with(Cell::get)
}

/// The background thread's id (for tests that check all managers share it).
pub fn background_thread_id() -> std::thread::ThreadId {
    background().thread_id
}

/// How many background threads this process has started (always 0 or 1).
pub fn background_threads_started() -> usize {
    STARTS.load(Ordering::SeqCst)
}
