//! The file store on its own and under a manager: permissions, atomic writes and crash
//! leftovers, corrupt records, encryption, the lease and its fencing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Recorder;
use tokenlease::{
    BlockingStore, EncryptionKey, ErrorKind, Event, FetchedToken, FileStore, Lease, LeaseOutcome,
    Manager, Store, TokenRecord,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        TempDir(std::env::temp_dir().join(format!(
            "tokenlease-filestore-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn record(value: &str) -> TokenRecord {
    TokenRecord {
        version: TokenRecord::VERSION,
        value: value.into(),
        token_type: "Bearer".into(),
        scopes: vec!["read".into()],
        refresh_token: Some("refresh-secret-value".into()),
        expires_at_ms: now_ms() + 3_600_000,
        obtained_at_ms: now_ms(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn directory_is_0700_and_files_0600() {
    let temp = TempDir::new("perms");
    let dir = temp.0.join("nested/tokens");
    let store = FileStore::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    BlockingStore::save(&store, "k", &record("access-secret-value")).unwrap();
    assert_eq!(mode(&store.record_path("k")), 0o600);
    runtime().block_on(async {
        let LeaseOutcome::Acquired(lease) = store
            .acquire_lease("k", Duration::from_secs(5), Duration::ZERO)
            .await
            .unwrap()
        else {
            panic!("lease not acquired");
        };
        lease.release().await.unwrap();
    });
    assert_eq!(mode(&store.lease_path("k")), 0o600);
    // The file name is the SHA-256 of the key, never the key.
    let name = store.record_path("client:reports:read");
    let name = name.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), 64 + ".token".len());
    assert!(!name.contains("reports"));

    // A directory others can write to is refused.
    let shared = temp.0.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = FileStore::open(&shared).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(
        err.message().contains("writable by group or others"),
        "{err}"
    );
}

#[test]
fn plaintext_never_writes_the_refresh_token() {
    let temp = TempDir::new("plain");
    let store = FileStore::open(&temp.0).unwrap();
    BlockingStore::save(&store, "k", &record("access-value")).unwrap();
    let text = std::fs::read_to_string(store.record_path("k")).unwrap();
    assert!(!text.contains("refresh-secret-value"), "{text}");
    assert!(text.starts_with("{\"format\":\"tokenlease-record\",\"version\":1,"));
    let loaded = BlockingStore::load(&store, "k").unwrap().unwrap();
    assert_eq!(loaded.refresh_token, None);
    assert_eq!(loaded.value.expose(), "access-value");
    BlockingStore::delete(&store, "k").unwrap();
    assert!(BlockingStore::load(&store, "k").unwrap().is_none());
    BlockingStore::delete(&store, "k").unwrap();
}

#[test]
fn encryption_keeps_the_refresh_token_and_refuses_wrong_keys_and_plaintext() {
    let temp = TempDir::new("sealed");
    let key = EncryptionKey::generate();
    let sealed = FileStore::open_encrypted(&temp.0, key.clone()).unwrap();
    let original = record("access-secret-value");
    BlockingStore::save(&sealed, "k", &original).unwrap();
    let bytes = std::fs::read(sealed.record_path("k")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("secret-value"), "{text}");
    assert_eq!(
        BlockingStore::load(&sealed, "k").unwrap().unwrap(),
        original
    );

    let wrong = FileStore::open_encrypted(&temp.0, EncryptionKey::generate()).unwrap();
    let err = BlockingStore::load(&wrong, "k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.message().contains("wrong encryption key"), "{err}");
    assert!(err.message().contains(&hash_name(&sealed, "k")), "{err}");

    let plain = FileStore::open(&temp.0).unwrap();
    let err = BlockingStore::load(&plain, "k").unwrap_err();
    assert!(err.message().contains("no encryption key"), "{err}");
    BlockingStore::save(&plain, "p", &record("plain-value")).unwrap();
    let err = BlockingStore::load(&sealed, "p").unwrap_err();
    assert!(err.message().contains("plaintext"), "{err}");

    // A key from the environment or a key file; missing ones are configuration errors.
    let key_file = temp.0.join("key.b64");
    std::fs::write(&key_file, format!("{}\n", key.to_base64().expose())).unwrap();
    let from_file =
        FileStore::open_encrypted(&temp.0, EncryptionKey::from_file(&key_file).unwrap()).unwrap();
    assert!(BlockingStore::load(&from_file, "k").unwrap().is_some());
    let err = EncryptionKey::from_file(temp.0.join("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    let err = EncryptionKey::from_env("TOKENLEASE_TEST_NO_SUCH_KEY").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
}

fn hash_name(store: &FileStore, key: &str) -> String {
    store
        .record_path(key)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_crash_between_write_and_rename_leaves_the_old_record_and_the_temp_file_is_cleaned() {
    let temp = TempDir::new("crash");
    let store = FileStore::open(&temp.0).unwrap();
    BlockingStore::save(&store, "k", &record("old-value")).unwrap();
    // What a writer killed after writing its temp file but before the rename leaves.
    let dead_pid = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let name = hash_name(&store, "k");
    let leftover = temp
        .0
        .join(format!(".{name}.{dead_pid}.0123456789abcdef.tmp"));
    std::fs::write(&leftover, b"{\"format\":\"tokenlease-record\",\"vers").unwrap();
    // A temp file of a live writer (ours) is left alone.
    let live = temp.0.join(format!(
        ".{name}.{}.fedcba9876543210.tmp",
        std::process::id()
    ));
    std::fs::write(&live, b"in progress").unwrap();
    assert_eq!(
        BlockingStore::load(&store, "k")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        "old-value"
    );
    let reopened = FileStore::open(&temp.0).unwrap();
    assert!(!leftover.exists(), "the crash leftover was removed");
    assert!(live.exists(), "a live writer's temp file is kept");
    assert_eq!(
        BlockingStore::load(&reopened, "k")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        "old-value"
    );
}

#[test]
fn readers_never_see_a_torn_record() {
    let temp = TempDir::new("torn");
    let store = FileStore::open(&temp.0).unwrap();
    let long = "x".repeat(64 * 1024);
    BlockingStore::save(&store, "k", &record("a")).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut loads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || loads == 0 {
                    let loaded = BlockingStore::load(&store, "k").expect("a whole record");
                    let value = loaded.unwrap().value;
                    assert!(["a", "short", long.as_str()].contains(&value.expose()));
                    loads += 1;
                }
            });
        }
        for i in 0..60 {
            let value = if i % 2 == 0 { long.as_str() } else { "short" };
            BlockingStore::save(&store, "k", &record(value)).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
}

#[test]
fn a_corrupt_record_is_a_store_error_naming_the_file_and_the_manager_refetches() {
    let temp = TempDir::new("corrupt");
    let store = FileStore::open(&temp.0).unwrap();
    let path = store.record_path("k");
    std::fs::write(
        &path,
        b"{\"format\":\"tokenlease-record\",\"value\":\"leaky-secret",
    )
    .unwrap();
    let err = BlockingStore::load(&store, "k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.message().contains(&path.display().to_string()), "{err}");
    assert!(!err.message().contains("leaky-secret"), "{err}");

    let recorder = Arc::new(Recorder::default());
    let manager = Manager::builder(tokenlease::source_fn(|| async {
        Ok(FetchedToken::bearer(
            "fresh-token",
            Duration::from_secs(3600),
        ))
    }))
    .key("k")
    .store(Arc::new(store.clone()))
    .listener(recorder.clone())
    .build();
    let token = manager.token_blocking().unwrap();
    assert_eq!(token.value().expose(), "fresh-token");
    let reported = recorder.count(|event| {
        matches!(
            event,
            Event::StoreError { operation: "load", message } if message.contains(&hash_name(&store, "k"))
        )
    });
    assert!(
        reported >= 1,
        "the corrupt record was reported as a store error"
    );
    // The new token replaced the corrupt record, which now loads.
    let loaded = BlockingStore::load(&store, "k").unwrap().unwrap();
    assert_eq!(loaded.value.expose(), "fresh-token");
    // Logging out deletes the record too.
    manager.revoke_blocking().unwrap();
    assert!(!path.exists());
}

fn acquire(store: &FileStore, ttl: Duration, wait: Duration) -> Option<Box<dyn Lease>> {
    match runtime()
        .block_on(store.acquire_lease("k", ttl, wait))
        .unwrap()
    {
        LeaseOutcome::Acquired(lease) => Some(lease),
        LeaseOutcome::Busy => None,
        LeaseOutcome::Unsupported => panic!("file stores have leases"),
    }
}

#[test]
fn the_lease_is_exclusive_expires_and_fences_out_a_taken_over_holder() {
    let temp = TempDir::new("lease");
    // Two handles on one directory behave like two processes (apart from the PID check).
    let a = FileStore::open(&temp.0).unwrap();
    let b = FileStore::open(&temp.0).unwrap();
    let long = Duration::from_secs(30);
    let first = acquire(&a, long, Duration::ZERO).expect("free lease");
    assert!(
        acquire(&b, long, Duration::from_millis(50)).is_none(),
        "busy"
    );
    let info = a.lease_info("k").unwrap().unwrap();
    assert_eq!(info.pid, std::process::id());
    assert!(info.is_held());
    runtime().block_on(first.release()).unwrap();
    let second = acquire(&b, Duration::from_millis(50), Duration::ZERO).expect("released");
    assert!(second.fencing_token() > info.fencing_token);
    // An expired lease is taken over; the old holder's write is then refused.
    std::thread::sleep(Duration::from_millis(80));
    let third = acquire(&a, long, Duration::ZERO).expect("expired lease taken over");
    let rt = runtime();
    let err = rt
        .block_on(b.save_fenced("k", &record("late-write"), &*second))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.message().contains("write refused"), "{err}");
    rt.block_on(a.save_fenced("k", &record("holder-write"), &*third))
        .unwrap();
    assert_eq!(
        BlockingStore::load(&a, "k")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        "holder-write"
    );
    // A lapsed lease nobody took since still lets its holder write.
    rt.block_on(third.release()).unwrap();
    let fourth = acquire(&a, Duration::from_millis(10), Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    rt.block_on(a.save_fenced("k", &record("lapsed-write"), &*fourth))
        .unwrap();
}

#[test]
fn a_lease_held_by_a_dead_process_is_taken_over_at_once() {
    let temp = TempDir::new("dead");
    let store = FileStore::open(&temp.0).unwrap();
    let dead_pid = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let alive = store.lease_info("k").unwrap();
    assert!(alive.is_none());
    // A lease file as a killed process on this host leaves it (docs/file-store.md).
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let lease = format!(
        "{{\"version\":1,\"pid\":{dead_pid},\"host\":{hostname:?},\"fencing_token\":41,\"expires_at_ms\":{},\"released\":false}}",
        now_ms() + 60_000
    );
    std::fs::write(store.lease_path("k"), lease).unwrap();
    let started = std::time::Instant::now();
    let taken = acquire(&store, Duration::from_secs(30), Duration::from_secs(5))
        .expect("a dead holder's lease is free");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(taken.fencing_token(), 42, "the fencing count goes on");

    // The same lease from another host is only free at its expiry.
    let other_host = format!(
        "{{\"version\":1,\"pid\":{dead_pid},\"host\":\"elsewhere\",\"fencing_token\":50,\"expires_at_ms\":{},\"released\":false}}",
        now_ms() + 60_000
    );
    std::fs::write(store.lease_path("k"), other_host).unwrap();
    assert!(acquire(&store, Duration::from_secs(30), Duration::from_millis(30)).is_none());
}
