//! Managers sharing one store: restarts and siblings reuse tokens, the lease makes one
//! refresh per token lifetime, and a rotation race is recovered from the store.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use tokenlease::clock::ManualClock;
use tokenlease::oauth2::ClientCredentials;
use tokenlease::{
    Error, ErrorKind, FetchedToken, Manager, MemoryStore, SecretString, Source, Store, TokenRecord,
};
use tokenlease_test_server::{ServerConfig, TestServer};

const MINUTE: Duration = Duration::from_secs(60);

fn sibling(source: Arc<dyn Source>, store: Arc<dyn Store>, clock: &ManualClock) -> Manager {
    Manager::builder_from_arc(source)
        .clock(Arc::new(clock.clone()))
        .policy(policy())
        .store(store)
        .key("shared")
        .build()
}

#[test]
fn siblings_sharing_a_store_make_one_request_per_lifetime() {
    let clock = ManualClock::new();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let source = Arc::new(ScriptedSource::new(15 * MINUTE));
    let managers: Vec<Manager> = (0..8)
        .map(|_| sibling(source.clone(), store.clone(), &clock))
        .collect();
    for lifetime in 1..=4u64 {
        std::thread::scope(|scope| {
            for manager in &managers {
                for _ in 0..4 {
                    scope.spawn(|| manager.token_blocking().expect("token"));
                }
            }
        });
        assert_eq!(
            source.calls(),
            lifetime,
            "one source call in lifetime {lifetime}"
        );
        // Past the mandatory point of every manager's copy: all must get a new token.
        clock.advance(15 * MINUTE - Duration::from_secs(30));
    }
}

#[test]
fn a_waiting_sibling_adopts_the_token_the_lease_holder_saved() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let (source, gate) = ScriptedSource::new(15 * MINUTE).gated();
    let source = Arc::new(source);
    let first = sibling(source.clone(), store.clone(), &clock);
    let second = sibling(source.clone(), store.clone(), &clock);
    let holder = std::thread::spawn({
        let first = first.clone();
        move || {
            first
                .token_blocking()
                .map(|t| t.value().expose().to_owned())
        }
    });
    wait_until("first holds the lease and calls the source", || {
        source.calls() == 1
    });
    let waiter = std::thread::spawn({
        let second = second.clone();
        move || {
            second
                .token_blocking()
                .map(|t| t.value().expose().to_owned())
        }
    });
    wait_until("second is waiting", || second.status().refreshing);
    gate.add_permits(1);
    let a = holder.join().unwrap().unwrap();
    let b = waiter.join().unwrap().unwrap();
    assert_eq!(a, b, "the sibling adopted the saved token");
    assert_eq!(source.calls(), 1);
    assert_eq!(second.status().counters.store_loads, 1);
}

#[test]
fn an_invalidated_token_is_not_adopted_back_from_the_store() {
    let clock = ManualClock::new();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let source = Arc::new(ScriptedSource::new(15 * MINUTE));
    let manager = sibling(source.clone(), store.clone(), &clock);
    let rejected = manager.token_blocking().unwrap().into_arc();
    assert!(manager.invalidate(&rejected));
    let replacement = manager.token_blocking().unwrap();
    assert_ne!(replacement.value().expose(), rejected.value().expose());
    assert_eq!(source.calls(), 2);
}

/// A source that, during its refresh call, lets a "sibling" rotate the refresh token and
/// save the result, then reports `invalid_grant` as the server would for the old one.
#[derive(Debug)]
struct RacingSource {
    store: Arc<MemoryStore>,
    clock: ManualClock,
    fetches: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Source for RacingSource {
    async fn fetch(&self) -> tokenlease::Result<FetchedToken> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Ok(FetchedToken::bearer("first-access", 15 * MINUTE).with_refresh_token("refresh-1"))
    }

    async fn refresh(&self, refresh_token: &SecretString) -> tokenlease::Result<FetchedToken> {
        assert_eq!(refresh_token.expose(), "refresh-1");
        use tokenlease::Clock;
        let now = self.clock.wall_now();
        let sibling_record = TokenRecord {
            version: TokenRecord::VERSION,
            value: "sibling-access".into(),
            token_type: "Bearer".into(),
            scopes: vec![],
            refresh_token: Some("refresh-2".into()),
            id_token: None,
            idle: None,
            attributes: Default::default(),
            expires_at_ms: ms(now + 15 * MINUTE),
            obtained_at_ms: ms(now),
        };
        Store::save(&*self.store, "shared", &sibling_record).await?;
        Err(Error::new(
            ErrorKind::InvalidGrant,
            "refresh token already used",
        ))
    }
}

fn ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn rotation_race_is_recovered_by_adopting_the_siblings_token() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let source = Arc::new(RacingSource {
        store: store.clone(),
        clock: clock.clone(),
        fetches: Default::default(),
    });
    let manager = sibling(source.clone(), store.clone(), &clock);
    assert_eq!(
        manager.token_blocking().unwrap().value().expose(),
        "first-access"
    );
    clock.advance(15 * MINUTE - Duration::from_secs(30));
    let token = manager.token_blocking().unwrap();
    assert_eq!(token.value().expose(), "sibling-access");
    assert_eq!(token.refresh_token().unwrap().expose(), "refresh-2");
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1, "no new login");
}

/// End to end against the real server with refresh-token rotation and reuse detection:
/// siblings sharing a store never reuse a rotated refresh token, so the family survives.
#[test]
fn siblings_never_trigger_refresh_token_reuse_detection() {
    let server = TestServer::start_background(ServerConfig {
        refresh_for_client_credentials: true,
        ..ServerConfig::default()
    })
    .unwrap();
    let clock = ManualClock::new();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let source: Arc<dyn Source> = Arc::new(
        ClientCredentials::new(&server.token_url(), "demo-client", "demo-secret").unwrap(),
    );
    let managers: Vec<Manager> = (0..4)
        .map(|_| sibling(source.clone(), store.clone(), &clock))
        .collect();
    for _round in 0..3 {
        std::thread::scope(|scope| {
            for manager in &managers {
                scope.spawn(|| manager.token_blocking().expect("token"));
                scope.spawn(|| manager.token_blocking().expect("token"));
            }
        });
        clock.advance(60 * MINUTE - Duration::from_secs(30));
    }
    let stats = server.stats();
    assert_eq!(
        stats.token_errors, 0,
        "no invalid_grant from reuse: {stats:?}"
    );
    assert_eq!(stats.grants.get("client_credentials"), Some(&1));
    assert_eq!(stats.grants.get("refresh_token"), Some(&2));
}
