//! What happened, for applications: events to listeners and counters in the status.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::error::ErrorKind;

/// Why a refresh started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefreshReason {
    /// No token yet.
    Initial,
    /// The background timer reached the refresh point (or a backoff retry).
    Scheduled,
    /// A read found the token in its advisory window.
    Stale,
    /// A caller needed a token and the cached one was past its mandatory point or expired.
    Mandatory,
    /// The token was invalidated (e.g. a 401 from the resource server).
    Invalidated,
}

/// One thing a manager did. Never carries a token value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A call to the source started.
    RefreshStarted {
        /// Why.
        reason: RefreshReason,
    },
    /// A new token is installed.
    RefreshSucceeded {
        /// Its generation.
        generation: u64,
        /// Its wall-clock expiry.
        expires_at: SystemTime,
        /// Whether it came from the store rather than the source.
        from_store: bool,
    },
    /// The source failed.
    RefreshFailed {
        /// The error kind.
        kind: ErrorKind,
        /// The error message (no secrets).
        message: String,
        /// Failures in a row, this one included.
        consecutive_failures: u32,
        /// When the next attempt may happen.
        next_retry_at: Option<SystemTime>,
    },
    /// A caller got a token past its mandatory point because no refresh succeeded.
    ServedStale {
        /// Generation served.
        generation: u64,
        /// Its wall-clock expiry.
        expires_at: SystemTime,
    },
    /// A sliding session was kept alive (its idle timeout restarted).
    KeptAlive {
        /// Generation kept alive.
        generation: u64,
    },
    /// A token was invalidated (generation-guarded).
    Invalidated {
        /// Generation discarded.
        generation: u64,
    },
    /// The token was revoked and removed from memory and store.
    Revoked {
        /// Generation revoked, if a token was held.
        generation: Option<u64>,
    },
    /// The cached token expired without a replacement.
    Expired {
        /// Generation that expired.
        generation: u64,
    },
    /// The cross-process refresh lease was taken.
    LeaseAcquired {
        /// How long we waited for a sibling to release it.
        waited: std::time::Duration,
    },
    /// The store failed; the manager carried on from memory and the source.
    StoreError {
        /// What the store was doing: "load", "save", "delete", "lease", "renew" or "release".
        operation: &'static str,
        /// The error message.
        message: String,
    },
}

/// Receives events.
///
/// Events are delivered in order, one at a time, on one dispatcher thread the process
/// shares (`tokenlease-events`), never on the thread that refreshes tokens: a slow listener
/// delays other listeners' events but never a refresh, a timer or a caller. The queue is
/// bounded ([`EVENT_QUEUE_CAPACITY`]); when a listener falls that far behind, further events
/// are dropped and counted in [`Counters::events_dropped`]. A panic is caught and ignored.
pub trait EventListener: Send + Sync + 'static {
    /// Called with the manager's key and the event.
    fn on_event(&self, key: &str, event: &Event);
}

impl<F> EventListener for F
where
    F: Fn(&str, &Event) + Send + Sync + 'static,
{
    fn on_event(&self, key: &str, event: &Event) {
        self(key, event)
    }
}

/// Counters since the manager was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls to `Source::fetch`.
    pub fetches: u64,
    /// Calls to `Source::refresh`.
    pub refreshes: u64,
    /// Source calls that failed.
    pub failures: u64,
    /// Tokens served past their mandatory point because refresh failed.
    pub served_stale: u64,
    /// Callers that waited for an in-flight refresh.
    pub waits: u64,
    /// Successful invalidations.
    pub invalidations: u64,
    /// Tokens adopted from the store.
    pub store_loads: u64,
    /// Store failures.
    pub store_errors: u64,
    /// Keep-alive requests for sliding sessions.
    pub keep_alives: u64,
    /// Events not delivered because the listener queue was full (a slow listener).
    pub events_dropped: u64,
    /// Store calls abandoned after the policy's store timeout.
    pub store_timeouts: u64,
    /// Source calls abandoned after the policy's source timeout (they may still finish late;
    /// a late token is installed, or discarded after a revoke or close).
    pub source_timeouts: u64,
}

impl Counters {
    /// Every counter with its field name, for bindings and exporters that list them by name.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("fetches", self.fetches),
            ("refreshes", self.refreshes),
            ("failures", self.failures),
            ("served_stale", self.served_stale),
            ("waits", self.waits),
            ("invalidations", self.invalidations),
            ("store_loads", self.store_loads),
            ("store_errors", self.store_errors),
            ("keep_alives", self.keep_alives),
            ("events_dropped", self.events_dropped),
            ("store_timeouts", self.store_timeouts),
            ("source_timeouts", self.source_timeouts),
        ]
    }

    /// The counter with this field name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.named()
            .into_iter()
            .find_map(|(field, value)| (field == name).then_some(value))
    }
}

/// Where the cached token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenState {
    /// No token.
    Empty,
    /// Valid and before its refresh point.
    Fresh,
    /// In the advisory window: served, refreshed in the background.
    Stale,
    /// In the mandatory window: callers wait for a refresh.
    Mandatory,
    /// Past expiry.
    Expired,
}

impl TokenState {
    /// Stable lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            TokenState::Empty => "empty",
            TokenState::Fresh => "fresh",
            TokenState::Stale => "stale",
            TokenState::Mandatory => "mandatory",
            TokenState::Expired => "expired",
        }
    }
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A snapshot of a manager.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Token state now.
    pub state: TokenState,
    /// Wall-clock expiry of the cached token.
    pub expires_at: Option<SystemTime>,
    /// Generation of the cached token (0 when none).
    pub generation: u64,
    /// When the last token was installed.
    pub last_refresh: Option<SystemTime>,
    /// Kind of the last failure, cleared by a success.
    pub last_error_kind: Option<ErrorKind>,
    /// Message of the last failure, cleared by a success.
    pub last_error_message: Option<String>,
    /// Whether a refresh is in flight.
    pub refreshing: bool,
    /// Counters.
    pub counters: Counters,
}

/// How many events may wait for slow listeners, across the process, before new ones are
/// dropped (and counted).
pub const EVENT_QUEUE_CAPACITY: usize = 4096;

/// Name of the thread that calls every listener.
pub const EVENT_THREAD_NAME: &str = "tokenlease-events";

pub(crate) type Listeners = Arc<Vec<Arc<dyn EventListener>>>;

enum Delivery {
    Event {
        listeners: Listeners,
        key: Arc<str>,
        event: Event,
    },
    Flush(mpsc::Sender<()>),
}

thread_local! {
    static ON_EVENT_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn queue() -> &'static SyncSender<Delivery> {
    static QUEUE: OnceLock<SyncSender<Delivery>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::sync_channel::<Delivery>(EVENT_QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name(EVENT_THREAD_NAME.to_owned())
            .spawn(move || {
                ON_EVENT_THREAD.with(|flag| flag.set(true));
                while let Ok(delivery) = receiver.recv() {
                    match delivery {
                        Delivery::Event {
                            listeners,
                            key,
                            event,
                        } => {
                            for listener in listeners.iter() {
                                // A listener's panic must not stop delivery to the others.
                                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                    listener.on_event(&key, &event)
                                }));
                            }
                        }
                        Delivery::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("tokenlease: cannot start the event thread");
        sender
    })
}

/// Queues `event` for `listeners`; counts it in `dropped` when the queue is full.
pub(crate) fn deliver(listeners: &Listeners, key: &Arc<str>, event: Event, dropped: &AtomicU64) {
    if listeners.is_empty() {
        return;
    }
    let delivery = Delivery::Event {
        listeners: listeners.clone(),
        key: key.clone(),
        event,
    };
    match queue().try_send(delivery) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %key, "tokenlease event dropped: listeners are too slow");
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Waits until every event queued before this call was delivered, at most `timeout`.
/// Returns whether it was. From a listener (the event thread itself) it returns `false`
/// at once instead of waiting for itself.
pub fn flush(timeout: Duration) -> bool {
    if ON_EVENT_THREAD.with(std::cell::Cell::get) {
        return false;
    }
    let (done, finished) = mpsc::channel();
    let deadline = std::time::Instant::now() + timeout;
    let mut delivery = Delivery::Flush(done);
    // The flush marker waits for room like an event would, but never past the deadline.
    loop {
        match queue().try_send(delivery) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) => {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                delivery = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
    finished
        .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        .is_ok()
}

/// Whether the calling thread is the event thread (a listener is running on it).
pub fn on_event_thread() -> bool {
    ON_EVENT_THREAD.with(std::cell::Cell::get)
}
