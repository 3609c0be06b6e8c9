//! The file store on its own and under a manager: permissions, atomic writes and crash
//! leftovers, corrupt records, encryption, the lease and its fencing, and what it refuses
//! to trust (other users' directories, links, FIFOs, devices, oversized files, a stuck
//! lock holder).

mod common;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Recorder;
use tokenlease::file_store::{DEFAULT_LOCK_TIMEOUT, MAX_RECORD_BYTES};
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
        id_token: None,
        idle: None,
        attributes: Default::default(),
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
    write_private(
        &key_file,
        format!("{}\n", key.to_base64().expose()).as_bytes(),
    );
    let from_file =
        FileStore::open_encrypted(&temp.0, EncryptionKey::from_file(&key_file).unwrap()).unwrap();
    assert!(BlockingStore::load(&from_file, "k").unwrap().is_some());
    let err = EncryptionKey::from_file(temp.0.join("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    let err = EncryptionKey::from_env("TOKENLEASE_TEST_NO_SUCH_KEY").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    // A key file group or others can read is refused, as ssh refuses such a private key.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = EncryptionKey::from_file(&key_file).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert_eq!(
        err.message(),
        format!(
            "encryption key: secret file {} is accessible by group or others (mode 0644); chmod 600 it",
            key_file.display()
        )
    );
}

/// Writes a file created `0600` (a secret or key file as users are told to keep them).
fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
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
    // Many pages long (so a torn read would show), well under the record size bound.
    let long = "x".repeat(32 * 1024);
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

// ---------------------------------------------------------------------------------------
// What the store refuses to trust
// ---------------------------------------------------------------------------------------

/// Runs `work` on its own thread and fails the test if it takes longer than `limit` (a
/// FIFO or a blocked lock must make the store fail, not hang the test).
fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still running after {limit:?}: the store hung"))
}

fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
}

/// A character device like /dev/null at `path`, if this process may make one.
fn mknod_null(path: &Path) -> bool {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call; makedev only computes a number.
    unsafe { libc::mknod(name.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) == 0 }
}

/// A manager over `store` whose source answers "fresh-token"; returns the token it got and
/// how many store errors of `operation` it reported.
fn fetch_through_manager(store: &FileStore, operation: &'static str) -> (String, usize) {
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
    let token = manager
        .token_blocking()
        .unwrap()
        .value()
        .expose()
        .to_owned();
    let reported = recorder.count(
        |event| matches!(event, Event::StoreError { operation: op, .. } if *op == operation),
    );
    (token, reported)
}

#[test]
fn a_directory_owned_by_another_user_is_refused_when_opened_and_afterwards() {
    let temp = TempDir::new("owner");
    let dir = temp.0.join("tokens");
    let store = FileStore::open(&dir).unwrap();
    BlockingStore::save(&store, "k", &record("my-token")).unwrap();
    // What another user who created the directory first (or took it over) controls.
    if let Err(err) = std::os::unix::fs::chown(&dir, Some(65534), None) {
        eprintln!("skipped: chown needs root ({err})");
        return;
    }
    let problem = format!(
        "file store {}: is owned by uid 65534, not by this process's uid",
        dir.display()
    );
    let err = FileStore::open(&dir).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(err.message().starts_with(&problem), "{err}");
    // A store opened before: every operation checks again, so nothing is read or written.
    let err = BlockingStore::load(&store, "k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.message().starts_with(&problem), "{err}");
    assert!(!err.message().contains("my-token"), "{err}");
    let err = BlockingStore::save(&store, "k", &record("new-token")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    let err = store.lease_info("k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(runtime()
        .block_on(store.acquire_lease("k", Duration::from_secs(5), Duration::ZERO))
        .is_err());
    // A manager reports it and gets its token from the source.
    let (token, reported) = fetch_through_manager(&store, "load");
    assert_eq!(token, "fresh-token");
    assert!(reported >= 1);
    // Ours again: the record is still the one we wrote.
    std::os::unix::fs::chown(&dir, Some(unsafe_euid()), None).unwrap();
    let loaded = BlockingStore::load(&store, "k").unwrap().unwrap();
    assert_eq!(loaded.value.expose(), "my-token");
}

fn unsafe_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[test]
fn a_directory_that_is_a_symbolic_link_is_refused() {
    let temp = TempDir::new("dirlink");
    let real = temp.0.join("real");
    FileStore::open(&real).unwrap();
    let link = temp.0.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for given in [link.clone(), PathBuf::from(format!("{}/", link.display()))] {
        let err = FileStore::open(&given).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("is a symbolic link"), "{err}");
    }
    // Swapped for a link after it was opened: a store error, the link is not followed.
    let store = FileStore::open(&real).unwrap();
    BlockingStore::save(&store, "k", &record("my-token")).unwrap();
    let elsewhere = temp.0.join("elsewhere");
    std::fs::rename(&real, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &real).unwrap();
    let err = BlockingStore::load(&store, "k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(
        err.message().contains(&format!(
            "file store {}: is a symbolic link",
            real.display()
        )),
        "{err}"
    );
    // A plain file where the directory should be.
    let file = temp.0.join("file");
    std::fs::write(&file, b"").unwrap();
    let err = FileStore::open(&file).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
}

#[test]
fn a_record_that_is_a_link_fifo_directory_or_device_is_a_store_error_and_the_manager_refetches() {
    let temp = TempDir::new("planted");
    let dir = temp.0.join("tokens");
    // A valid record for the same key in another directory, to link to.
    let other = FileStore::open(temp.0.join("other")).unwrap();
    BlockingStore::save(&other, "k", &record("linked-token")).unwrap();
    let linked = other.record_path("k");

    type Plant = Box<dyn Fn(&Path) -> bool>;
    let cases: Vec<(&str, Plant, &str)> = vec![
        (
            "link to a record",
            Box::new({
                let linked = linked.clone();
                move |path| std::os::unix::fs::symlink(&linked, path).is_ok()
            }),
            "is a symbolic link; refusing to follow it",
        ),
        (
            "link to /dev/zero",
            Box::new(|path| std::os::unix::fs::symlink("/dev/zero", path).is_ok()),
            "is a symbolic link; refusing to follow it",
        ),
        (
            "FIFO",
            Box::new(|path| {
                mkfifo(path);
                true
            }),
            "is a FIFO, not a regular file; refusing to use it",
        ),
        (
            "directory",
            Box::new(|path| std::fs::create_dir(path).is_ok()),
            "is a directory, not a regular file; refusing to use it",
        ),
        (
            "device",
            Box::new(mknod_null),
            "is a character device, not a regular file; refusing to use it",
        ),
    ];
    for (case, plant, expected) in cases {
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::open(&dir).unwrap();
        let path = store.record_path("k");
        if !plant(&path) {
            eprintln!("skipped {case}: cannot create it here");
            continue;
        }
        let loading = store.clone();
        let err = within(Duration::from_secs(20), move || {
            BlockingStore::load(&loading, "k")
        })
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Store, "{case}: {err}");
        assert_eq!(
            err.message(),
            format!("token record {} {expected}", path.display()),
            "{case}"
        );
        assert!(!err.message().contains("linked-token"), "{case}: {err}");
        // Reported, not fatal: the manager fetches from its source.
        let managed = store.clone();
        let (token, reported) = within(Duration::from_secs(60), move || {
            fetch_through_manager(&managed, "load")
        });
        assert_eq!(token, "fresh-token", "{case}");
        assert!(reported >= 1, "{case}: the planted record was reported");
        if case != "directory" {
            // The save replaced the planted entry (rename), never wrote through it.
            let loaded = BlockingStore::load(&store, "k").unwrap().unwrap();
            assert_eq!(loaded.value.expose(), "fresh-token", "{case}");
        }
    }
    let untouched = BlockingStore::load(&other, "k").unwrap().unwrap();
    assert_eq!(untouched.value.expose(), "linked-token");
}

#[test]
fn an_oversized_record_or_lease_is_refused_without_being_read_whole() {
    let temp = TempDir::new("oversized");
    let store = FileStore::open(&temp.0).unwrap();
    let path = store.record_path("k");
    std::fs::write(&path, vec![b'x'; MAX_RECORD_BYTES + 1]).unwrap();
    let err = BlockingStore::load(&store, "k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert_eq!(
        err.message(),
        format!(
            "token record {} is larger than {MAX_RECORD_BYTES} bytes; refusing to read it",
            path.display()
        )
    );
    // At the bound it is read (and is then just not a record).
    std::fs::write(&path, vec![b'x'; MAX_RECORD_BYTES]).unwrap();
    let err = BlockingStore::load(&store, "k").unwrap_err();
    assert!(err.message().contains("corrupt token record"), "{err}");
    // A manager reports the oversized record and replaces it.
    std::fs::write(&path, vec![b'x'; 4 * MAX_RECORD_BYTES]).unwrap();
    let (token, reported) = fetch_through_manager(&store, "load");
    assert_eq!(token, "fresh-token");
    assert!(reported >= 1);

    // A record that would not fit is not written (it could not be read back).
    let huge = record(&"v".repeat(MAX_RECORD_BYTES));
    let err = BlockingStore::save(&store, "k", &huge).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(
        err.message().contains(&format!(
            "larger than {MAX_RECORD_BYTES} bytes; not written"
        )),
        "{err}"
    );
    let kept = BlockingStore::load(&store, "k").unwrap().unwrap();
    assert_eq!(kept.value.expose(), "fresh-token");
    // The largest tokens the manager accepts (64 KiB each) fit, encrypted.
    let sealed =
        FileStore::open_encrypted(temp.0.join("sealed"), EncryptionKey::generate()).unwrap();
    let mut largest = record(&"a".repeat(64 * 1024));
    largest.refresh_token = Some("r".repeat(64 * 1024).into());
    BlockingStore::save(&sealed, "k", &largest).unwrap();
    assert_eq!(BlockingStore::load(&sealed, "k").unwrap().unwrap(), largest);

    // Lease files are bounded too (one is about 150 bytes).
    std::fs::write(store.lease_path("k"), vec![b' '; 4097]).unwrap();
    let err = store.lease_info("k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.message().contains("is larger than 4096 bytes"), "{err}");
}

#[test]
fn lease_and_lock_files_are_never_followed_and_a_fifo_lease_does_not_hang() {
    let temp = TempDir::new("leaselink");
    let store = FileStore::open(temp.0.join("tokens")).unwrap();
    // A lock file linked to a path outside: not created, not locked through the link.
    let outside = temp.0.join("outside");
    std::os::unix::fs::symlink(&outside, store.lock_path("k")).unwrap();
    let err = store.lease_info("k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert_eq!(
        err.message(),
        format!(
            "lock file {} is a symbolic link; refusing to follow it",
            store.lock_path("k").display()
        )
    );
    assert!(!outside.exists(), "the link's target was created");
    std::fs::remove_file(store.lock_path("k")).unwrap();

    // A lease file linked to a lease elsewhere is not read.
    let foreign = temp.0.join("foreign.lease");
    std::fs::write(
        &foreign,
        format!(
            "{{\"version\":1,\"pid\":1,\"host\":\"elsewhere\",\"fencing_token\":7,\"expires_at_ms\":{},\"released\":false}}",
            now_ms() + 60_000
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(&foreign, store.lease_path("k")).unwrap();
    let err = store.lease_info("k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.message().contains("lease file"), "{err}");
    assert!(err.message().contains("is a symbolic link"), "{err}");
    std::fs::remove_file(store.lease_path("k")).unwrap();

    // A FIFO lease file: acquiring fails at once instead of hanging the refresh.
    mkfifo(&store.lease_path("k"));
    let acquiring = store.clone();
    let outcome = within(Duration::from_secs(20), move || {
        runtime().block_on(acquiring.acquire_lease("k", Duration::from_secs(5), Duration::ZERO))
    });
    let err = outcome.expect_err("a FIFO lease file is an error");
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(
        err.message().contains("is a FIFO, not a regular file"),
        "{err}"
    );
    // The manager reports it and carries on without the lease.
    let managed = store.clone();
    let (token, reported) = within(Duration::from_secs(60), move || {
        fetch_through_manager(&managed, "lease")
    });
    assert_eq!(token, "fresh-token");
    assert!(reported >= 1);
}

/// Holds an exclusive flock on `path` (as a stuck process would) until dropped.
struct HeldLock(std::fs::File);

impl HeldLock {
    fn new(path: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .unwrap();
        // SAFETY: the descriptor belongs to `file`, open for the call.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        Self(file)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // SAFETY: the descriptor belongs to `self.0`, still open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Generous: the machine running the tests may be busy.
const SLACK: Duration = Duration::from_secs(10);

#[test]
fn a_stuck_lock_holder_makes_lease_calls_fail_within_the_bound() {
    let temp = TempDir::new("stuck");
    let bound = Duration::from_millis(300);
    let store = FileStore::open(&temp.0).unwrap().with_lock_timeout(bound);
    let lease = acquire(&store, Duration::from_secs(30), Duration::ZERO).expect("free lease");
    let held = HeldLock::new(&store.lock_path("k"));
    let expected = format!(
        "lock file {} held by another process for more than 0.3 s",
        store.lock_path("k").display()
    );
    let check = |what: &str, started: Instant, result: tokenlease::Result<()>| {
        let waited = started.elapsed();
        let err = result.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Store, "{what}: {err}");
        assert!(err.message().starts_with(&expected), "{what}: {err}");
        assert!(waited >= bound, "{what}: gave up after {waited:?}");
        assert!(waited < bound + SLACK, "{what}: took {waited:?}");
    };
    let started = Instant::now();
    let probe = store.clone();
    let result = within(bound + SLACK, move || probe.lease_info("k").map(drop));
    check("lease_info", started, result);
    let started = Instant::now();
    let probe = store.clone();
    let result = within(bound + SLACK, move || {
        runtime()
            .block_on(probe.acquire_lease("k", Duration::from_secs(5), Duration::ZERO))
            .map(drop)
    });
    check("acquire_lease", started, result);
    let started = Instant::now();
    let probe = store.clone();
    let (result, lease) = within(bound + SLACK, move || {
        let saved = runtime().block_on(probe.save_fenced("k", &record("fenced"), &*lease));
        (saved, lease)
    });
    check("save_fenced", started, result);
    // A manager reports it and fetches without the lease.
    let (token, reported) = fetch_through_manager(&store, "lease");
    assert_eq!(token, "fresh-token");
    assert!(reported >= 1);
    // Once the holder lets go, everything works again.
    drop(held);
    let rt = runtime();
    rt.block_on(store.save_fenced("k", &record("fenced"), &*lease))
        .unwrap();
    rt.block_on(lease.release()).unwrap();
    assert!(!store.lease_info("k").unwrap().unwrap().is_held());
}

#[test]
fn a_stuck_lock_holder_is_waited_out_for_the_default_bound_only() {
    let temp = TempDir::new("stuck-default");
    let store = FileStore::open(&temp.0).unwrap();
    let _held = HeldLock::new(&store.lock_path("k"));
    let started = Instant::now();
    let err = within(DEFAULT_LOCK_TIMEOUT + SLACK * 3, move || {
        store.lease_info("k")
    })
    .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(
        err.message()
            .contains("held by another process for more than 5 s"),
        "{err}"
    );
    assert!(waited >= DEFAULT_LOCK_TIMEOUT, "gave up after {waited:?}");
    assert!(waited < DEFAULT_LOCK_TIMEOUT + SLACK, "took {waited:?}");
}

/// `lock_in_dir`: the store's own bounded lock for one-time work next to a store (the
/// command's keyring key): a second holder waits, then gets a `Store` error; a path for a
/// name, a directory others may write to, and a symbolic link are refused.
#[test]
fn lock_in_dir_is_exclusive_bounded_and_refuses_what_the_store_refuses() {
    use tokenlease::file_store::lock_in_dir;
    let dir = TempDir::new("lock-in-dir");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let held = lock_in_dir(&dir.0, "one.lock", Duration::from_secs(1)).unwrap();
    let mode = std::fs::metadata(dir.0.join("one.lock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let started = Instant::now();
    let err = lock_in_dir(&dir.0, "one.lock", Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    drop(held);
    drop(lock_in_dir(&dir.0, "one.lock", Duration::from_millis(100)).unwrap());

    let err = lock_in_dir(&dir.0, "sub/one.lock", Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
    std::os::unix::fs::symlink("/etc/passwd", dir.0.join("link.lock")).unwrap();
    assert!(lock_in_dir(&dir.0, "link.lock", Duration::from_millis(100)).is_err());
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = lock_in_dir(&dir.0, "two.lock", Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
}
