//! The key of the command's default store (the encrypted file store under the cache
//! directory), in this order:
//!
//! 1. `TOKENLEASE_STORE_KEY` (base64 of 32 bytes), when it is set;
//! 2. the OS keyring, unless `TOKENLEASE_KEYRING=off`: one entry per cache directory,
//!    `tokenlease:store-key:<SHA-256 of the canonical cache directory, hex>`, holding the
//!    base64 of 32 random bytes made on first use. On Linux the kernel key retention service
//!    (the user's persistent keyring where the kernel has one, else the user keyring); on
//!    macOS the login keychain (service `tokenlease`), through the `keyring` crate;
//! 3. none: the store keeps access tokens only, never a refresh token (plaintext mode).
//!
//! A keyring that is missing or refused (`EPERM`/`ENOSYS` under a seccomp profile, no
//! keyring support) is not an error: the command runs in plaintext mode and says why. The
//! whole keyring lookup is bounded ([`KEYRING_TIMEOUT`]); the key itself never reaches a
//! message.
// Without a keyring backend (neither Linux nor macOS) the shared helpers go unused.
#![cfg_attr(not(any(target_os = "linux", target_os = "macos")), allow(dead_code))]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokenlease::config::SecretValue;
use tokenlease::{Error, ErrorKind, SecretString};

/// The environment variable holding the default store's key (base64 of 32 bytes).
pub const STORE_KEY_ENV: &str = "TOKENLEASE_STORE_KEY";
/// `off` keeps the command away from the OS keyring (`on`, the default, uses it).
pub const KEYRING_ENV: &str = "TOKENLEASE_KEYRING";
/// The keyring entries' common prefix (the rest names the cache directory).
pub const ENTRY_PREFIX: &str = "tokenlease:store-key:";
/// Upper bound on the whole keyring lookup (creating the entry included).
pub const KEYRING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a process waits for a sibling that is creating the same entry.
const CREATE_LOCK_WAIT: Duration = Duration::from_secs(3);

/// Where the default store's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `TOKENLEASE_STORE_KEY`.
    Env,
    /// The OS keyring.
    Keyring,
    /// No key: plaintext mode.
    None,
}

impl Origin {
    /// `env`, `keyring` or `none` (as `tokenlease status` shows it).
    pub fn name(self) -> &'static str {
        match self {
            Origin::Env => "env",
            Origin::Keyring => "keyring",
            Origin::None => "none",
        }
    }
}

/// The default store's key and where it comes from.
pub struct StoreKey {
    /// Where it comes from.
    pub origin: Origin,
    /// Which variable or keyring, or why there is none (never the key).
    pub detail: String,
    /// The keyring entry's name, when the key is in a keyring.
    pub entry: Option<String>,
    /// Whether this process made the keyring entry.
    pub created: bool,
    /// The key as the store configuration takes it.
    pub value: Option<SecretValue>,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKey")
            .field("origin", &self.origin)
            .field("detail", &self.detail)
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// Whether the keyring may be used: `TOKENLEASE_KEYRING` unset, `on`/`1`/`true`/`yes`, or
/// `off`/`0`/`false`/`no`; anything else is a `Configuration` error (a misspelt opt-out
/// must not quietly use the keyring).
pub fn keyring_enabled() -> tokenlease::Result<bool> {
    let Some(value) = std::env::var_os(KEYRING_ENV) else {
        return Ok(true);
    };
    match value.to_string_lossy().trim().to_ascii_lowercase().as_str() {
        "" | "on" | "1" | "true" | "yes" => Ok(true),
        "off" | "0" | "false" | "no" => Ok(false),
        _ => Err(Error::new(
            ErrorKind::Configuration,
            format!("{KEYRING_ENV}: give `on` or `off`"),
        )),
    }
}

/// The key of the default store under `cache_dir`, in the order of the module's doc.
/// Call [`keyring_enabled`] first: this treats an unreadable `TOKENLEASE_KEYRING` as `on`.
pub fn resolve(cache_dir: &Path) -> StoreKey {
    if std::env::var_os(STORE_KEY_ENV).is_some() {
        return StoreKey {
            origin: Origin::Env,
            detail: STORE_KEY_ENV.to_owned(),
            entry: None,
            created: false,
            value: Some(SecretValue::Env {
                env: STORE_KEY_ENV.to_owned(),
            }),
        };
    }
    let none = |detail: String| StoreKey {
        origin: Origin::None,
        detail,
        entry: None,
        created: false,
        value: None,
    };
    if !keyring_enabled().unwrap_or(true) {
        return none(format!("{STORE_KEY_ENV} is not set and {KEYRING_ENV}=off"));
    }
    let entry = match entry_name(cache_dir) {
        Ok(entry) => entry,
        Err(problem) => return none(format!("{STORE_KEY_ENV} is not set; {problem}")),
    };
    let lock = cache_dir.join("store-key.lock");
    let name = entry.clone();
    let found = bounded(KEYRING_TIMEOUT, move || {
        platform::get_or_create(&name, &lock)
    });
    match found {
        Some(Ok(found)) => StoreKey {
            origin: Origin::Keyring,
            detail: found.backend.to_owned(),
            entry: Some(entry),
            created: found.created,
            value: Some(SecretValue::Inline(found.key)),
        },
        Some(Err(unavailable)) => none(format!("{STORE_KEY_ENV} is not set; {unavailable}")),
        None => none(format!(
            "{STORE_KEY_ENV} is not set; {} did not answer within {} s",
            platform::NAME,
            KEYRING_TIMEOUT.as_secs()
        )),
    }
}

/// `tokenlease:store-key:` + the SHA-256 (hex) of the canonical cache directory, which is
/// created (`0700`) if it is missing.
fn entry_name(cache_dir: &Path) -> Result<String, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)
        .and_then(|()| std::fs::canonicalize(cache_dir))
        .map(|canonical: PathBuf| {
            let digest = Sha256::digest(canonical.as_os_str().as_bytes());
            let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("{ENTRY_PREFIX}{hex}")
        })
        .map_err(|err| {
            format!(
                "the cache directory {} cannot be created ({}), so it has no keyring entry",
                cache_dir.display(),
                err.kind()
            )
        })
}

/// Runs `work` on its own thread; `None` when it takes longer than `limit` (the thread is
/// then left to finish on its own: a keyring call must never hang the command).
fn bounded<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tokenlease-keyring".to_owned())
        .spawn(move || {
            let _ = sender.send(work());
        })
        .ok()?;
    receiver.recv_timeout(limit).ok()
}

/// A key found in (or just put into) a keyring.
struct Found {
    key: SecretString,
    created: bool,
    backend: &'static str,
}

/// The key text a keyring entry holds must be a store key (base64 of 32 bytes).
fn checked(text: SecretString, entry: &str) -> Result<SecretString, String> {
    match tokenlease::EncryptionKey::from_base64(text.expose()) {
        Ok(_) => Ok(text),
        Err(_) => Err(format!(
            "the keyring entry {entry} does not hold a store key (base64 of 32 bytes)"
        )),
    }
}

/// A new store key: 32 bytes from the operating system's generator, as base64.
fn fresh_key() -> SecretString {
    tokenlease::EncryptionKey::generate().to_base64()
}

/// The lock that keeps two first invocations from making two keys (the second would
/// replace the first, whose store could then not be read): core's bounded file lock, next
/// to the store.
fn create_lock(path: &Path) -> Result<tokenlease::file_store::FileLock, String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(format!("{} is not a lock file path", path.display()));
    };
    tokenlease::file_store::lock_in_dir(dir, name, CREATE_LOCK_WAIT).map_err(|err| err.to_string())
}

/// Linux: the kernel key retention service (keyrings(7)).
#[cfg(target_os = "linux")]
mod platform {
    use std::path::Path;

    use linux_keyutils::{
        Key, KeyError, KeyPermissionsBuilder, KeyRing, KeyRingIdentifier, Permission,
    };
    use tokenlease::SecretString;
    use zeroize::Zeroize;

    use super::{checked, create_lock, fresh_key, Found};

    pub const NAME: &str = "the kernel keyring";
    const PERSISTENT: &str = "the kernel's persistent keyring";
    const USER: &str = "the kernel's user keyring";

    /// The keyring and the entry `name` in it, if any.
    ///
    /// The user's persistent keyring (persistent-keyring(7)) where the kernel has one: it
    /// outlives the login session and, unlike a session keyring, is the same for every
    /// process of the user. It is linked into the user keyring, which login sessions
    /// (pam_keyinit links it into theirs) and processes without a session keyring reach,
    /// so the persistent keyring is "possessed", as searching and writing it requires. Only
    /// where it is not (e.g. an anonymous session keyring) is it linked into this process's
    /// own keyring instead: that makes one more key per invocation, counted against the
    /// user's key quota until the kernel collects it (100 quick invocations as root left 46
    /// for a moment), so it is not the default.
    ///
    /// On a kernel without persistent keyrings, the user keyring (`@u`), which lives while
    /// the user has processes.
    fn open(name: &str) -> Result<(KeyRing, &'static str, Option<Key>), KeyError> {
        match KeyRing::get_persistent(KeyRingIdentifier::User) {
            Ok(ring) => match ring.search(name) {
                Ok(key) => Ok((ring, PERSISTENT, Some(key))),
                Err(KeyError::AccessDenied) => {
                    let ring = KeyRing::get_persistent(KeyRingIdentifier::Process)?;
                    Ok((ring, PERSISTENT, find(&ring, name)?))
                }
                Err(err) if absent(err) => Ok((ring, PERSISTENT, None)),
                Err(err) => Err(err),
            },
            Err(KeyError::OperationNotSupported) => {
                let ring = KeyRing::from_special_id(KeyRingIdentifier::User, true)?;
                let key = find(&ring, name)?;
                Ok((ring, USER, key))
            }
            Err(err) => Err(err),
        }
    }

    /// Errors that mean "no such entry (usable yet)": none, expired or revoked, or one a
    /// sibling is between creating and opening to the user.
    fn absent(err: KeyError) -> bool {
        matches!(
            err,
            KeyError::KeyDoesNotExist
                | KeyError::AccessDenied
                | KeyError::KeyExpired
                | KeyError::KeyRevoked
        )
    }

    /// The entry `name` found in `ring`, if any.
    fn find(ring: &KeyRing, name: &str) -> Result<Option<Key>, KeyError> {
        match ring.search(name) {
            Ok(key) => Ok(Some(key)),
            Err(err) if absent(err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn read(key: &Key, name: &str) -> Result<SecretString, String> {
        let mut buffer = [0u8; 128];
        let read = key.read(&mut buffer);
        let text = match read {
            Ok(length) if length <= buffer.len() => std::str::from_utf8(&buffer[..length])
                .ok()
                .map(|text| SecretString::new(text.to_owned())),
            Ok(_) => None,
            Err(err) => {
                buffer.zeroize();
                return Err(format!("{NAME} refused to read {name} ({})", errno(err)));
            }
        };
        buffer.zeroize();
        let text = text.ok_or_else(|| {
            format!("the keyring entry {name} does not hold a store key (base64 of 32 bytes)")
        })?;
        checked(text, name)
    }

    pub fn get_or_create(name: &str, lock: &Path) -> Result<Found, String> {
        let unavailable = |err: KeyError| format!("{NAME} is unavailable ({})", errno(err));
        let (ring, backend, key) = open(name).map_err(unavailable)?;
        if let Some(key) = key {
            return Ok(Found {
                key: read(&key, name)?,
                created: false,
                backend,
            });
        }
        let _lock = create_lock(lock)?;
        if let Some(key) = find(&ring, name).map_err(unavailable)? {
            return Ok(Found {
                key: read(&key, name)?,
                created: false,
                backend,
            });
        }
        let secret = fresh_key();
        let key = ring
            .add_key(name, secret.expose().as_bytes())
            .map_err(unavailable)?;
        // The default permissions let only a possessor (a process that reaches the
        // keyring from its own session) read the key; a login session with its own session
        // keyring would not. Grant the user (this uid) view, read, search, write, setattr.
        let user = Permission::VIEW
            | Permission::READ
            | Permission::WRITE
            | Permission::SEARCH
            | Permission::SETATTR;
        let permissions = KeyPermissionsBuilder::builder()
            .posessor(Permission::ALL)
            .user(user)
            .build();
        if let Err(err) = key.set_perms(permissions) {
            let _ = key.invalidate();
            return Err(unavailable(err));
        }
        Ok(Found {
            key: secret,
            created: true,
            backend,
        })
    }

    /// The errno name of a keyutils error (e.g. `EPERM`), never a key.
    fn errno(err: KeyError) -> String {
        match err {
            KeyError::AccessDenied => "EACCES".to_owned(),
            KeyError::PermissionDenied => "EPERM".to_owned(),
            KeyError::QuotaExceeded => "EDQUOT".to_owned(),
            KeyError::BadAddress => "EFAULT".to_owned(),
            KeyError::InvalidArguments => "EINVAL".to_owned(),
            KeyError::KeyExpired => "EKEYEXPIRED".to_owned(),
            KeyError::KeyRevoked => "EKEYREVOKED".to_owned(),
            KeyError::KeyRejected => "EKEYREJECTED".to_owned(),
            KeyError::KeyDoesNotExist => "ENOKEY".to_owned(),
            KeyError::OutOfMemory => "ENOMEM".to_owned(),
            KeyError::OperationNotSupported => "EOPNOTSUPP".to_owned(),
            KeyError::MissingFileOrDirectory => "ENOENT".to_owned(),
            KeyError::Unknown(code) if code == libc::ENOSYS => "ENOSYS".to_owned(),
            KeyError::Unknown(code) => format!("errno {code}"),
            other => format!("{other:?}"),
        }
    }
}

/// macOS: the login keychain, through the `keyring` crate (service `tokenlease`, account
/// the entry name). Not exercised by the test suite, which runs on Linux.
#[cfg(target_os = "macos")]
mod platform {
    use std::path::Path;

    use tokenlease::SecretString;

    use super::{checked, create_lock, fresh_key, Found};

    pub const NAME: &str = "the macOS keychain";
    const SERVICE: &str = "tokenlease";

    fn lookup(entry: &keyring::Entry, name: &str) -> Result<Option<SecretString>, String> {
        match entry.get_password() {
            Ok(text) => checked(SecretString::new(text), name).map(Some),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(err) => Err(format!("{NAME} is unavailable ({err})")),
        }
    }

    pub fn get_or_create(name: &str, lock: &Path) -> Result<Found, String> {
        let entry = keyring::Entry::new(SERVICE, name)
            .map_err(|err| format!("{NAME} is unavailable ({err})"))?;
        if let Some(key) = lookup(&entry, name)? {
            return Ok(Found {
                key,
                created: false,
                backend: NAME,
            });
        }
        let _lock = create_lock(lock)?;
        if let Some(key) = lookup(&entry, name)? {
            return Ok(Found {
                key,
                created: false,
                backend: NAME,
            });
        }
        let secret = fresh_key();
        entry
            .set_password(secret.expose())
            .map_err(|err| format!("{NAME} refused a new entry ({err})"))?;
        Ok(Found {
            key: secret,
            created: true,
            backend: NAME,
        })
    }
}

/// Elsewhere (the command is Unix-only; Windows does not build it): no keyring support.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod platform {
    use std::path::Path;

    use super::Found;

    pub const NAME: &str = "the OS keyring";

    pub fn get_or_create(_name: &str, _lock: &Path) -> Result<Found, String> {
        Err("the command has no OS keyring support on this platform".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_follow_the_canonical_cache_directory() {
        let base = std::env::temp_dir().join(format!("tokenlease-entry-{}", std::process::id()));
        let one = entry_name(&base.join("one")).unwrap();
        let again = entry_name(&base.join("two").join("..").join("one")).unwrap();
        let two = entry_name(&base.join("two")).unwrap();
        assert_eq!(one, again, "one directory, one entry however it is spelt");
        assert_ne!(one, two, "two directories, two entries");
        assert!(one.starts_with(ENTRY_PREFIX) && one.len() == ENTRY_PREFIX.len() + 64);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_hung_call_is_abandoned() {
        let started = std::time::Instant::now();
        let answer = bounded(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(5));
        });
        assert!(answer.is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(bounded(Duration::from_secs(5), || 7), Some(7));
    }

    #[test]
    fn a_keyring_entry_must_hold_a_store_key() {
        let key = fresh_key();
        assert!(checked(key, "e").is_ok());
        let err = checked(SecretString::new("not-a-key"), "e").err().unwrap();
        assert!(!err.contains("not-a-key"), "{err}");
    }
}
