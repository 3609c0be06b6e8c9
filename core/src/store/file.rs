//! A crash-safe, optionally encrypted file store with a cross-process refresh lease.
//!
//! One record per key in a directory the application chooses: restarts reuse a still-valid
//! token, and sibling processes on the host share one token and refresh it once (the lease).
//! The on-disk format is documented in `docs/file-store.md`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tokenlease::{EncryptionKey, FileStore, Manager};
//! # fn demo(source: impl tokenlease::Source) -> tokenlease::Result<()> {
//! let store = FileStore::open_encrypted(
//!     "/var/lib/myapp/tokens",
//!     EncryptionKey::from_env("MYAPP_TOKEN_KEY")?,
//! )?;
//! let manager = Manager::builder(source).store(Arc::new(store)).build();
//! # Ok(()) }
//! ```
//!
//! * Files are `0600` in a `0700` directory. The directory must be owned by this process's
//!   effective uid, must not be a symbolic link, and must not be writable by group or
//!   others: anything else is refused (a `Configuration` error when the store is opened, a
//!   [`ErrorKind::Store`] error if it changes afterwards; every operation checks again).
//! * The store trusts nothing it did not create: record, lease and lock files are opened
//!   relative to the checked directory without following symbolic links and without
//!   blocking (a FIFO cannot hang a refresh), and anything but a regular file is refused.
//!   Records are read up to [`MAX_RECORD_BYTES`] (256 KiB), lease files up to 4 KiB;
//!   larger is an error, never an unbounded read.
//! * Writes go to a temp file in the same directory, are fsynced, renamed over the record
//!   and the directory is fsynced: a reader sees the old or the new record, never a mix.
//! * A record that cannot be read or parsed is a [`ErrorKind::Store`] error naming the file
//!   (never its content); the manager reports it as an event and fetches a new token.
//! * Without encryption, refresh tokens are never written (only the access token is).
//!   With an [`EncryptionKey`], the whole record (refresh token included) is sealed with
//!   XChaCha20-Poly1305; a wrong key, a missing key or a plaintext file is an error, never
//!   a silent fallback.
//! * The lease is `<hash>.lease` (owner PID, host, fencing token, expiry), changed only
//!   under an `flock` of `<hash>.lock`. A lease whose owner is dead on this host, or whose
//!   expiry has passed, is taken over; the fencing token makes a write from a holder whose
//!   lease was taken over fail. Waiting for the `flock` is bounded
//!   ([`DEFAULT_LOCK_TIMEOUT`], [`FileStore::with_lock_timeout`]): a process stuck while
//!   holding it makes lease operations fail with a `Store` error instead of hanging.
//!
//! What this does and does not protect against is in `docs/file-store.md` ("Threat model").

use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::store::{unix_ms, BlockingStore, Lease, LeaseOutcome, Store, TokenRecord};

/// How often a manager waiting for a sibling's lease looks again.
const LEASE_POLL: Duration = Duration::from_millis(10);
/// A temp file older than this is a crash leftover even if its writer's PID is in use.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);
/// The largest record file the store writes or reads: 256 KiB, room for an encrypted
/// (base64, so 4/3 larger) record holding a 64 KiB access token and a 64 KiB refresh
/// token. A larger record file is a [`ErrorKind::Store`] error ("larger than 262144
/// bytes") and at most this many bytes plus one are read; a record that would encode
/// larger is not written.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// The largest lease file read (one is about 150 bytes).
const MAX_LEASE_BYTES: usize = 4 * 1024;
/// The largest secret or key file read (`{"file": ..}` secrets, [`EncryptionKey::from_file`]).
pub(crate) const MAX_SECRET_FILE_BYTES: usize = 64 * 1024;
/// How long an operation waits by default for the `flock` of a key's lock file, which a
/// healthy holder keeps for microseconds ([`FileStore::with_lock_timeout`]).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two attempts at the lock file's `flock`.
const LOCK_POLL_MAX: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// Encryption key
// ---------------------------------------------------------------------------------------

/// A 256-bit key for encryption at rest. Zeroized on drop; `Debug` never shows it.
///
/// Given as base64 (standard or URL-safe alphabet, 32 bytes once decoded), from an
/// environment variable or a key file holding that text. Make one with
/// `head -c 32 /dev/urandom | base64`.
#[derive(Clone)]
pub struct EncryptionKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

impl EncryptionKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A new random key (from the operating system's generator).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *bytes);
        Self(bytes)
    }

    /// The key as standard base64, e.g. to store it somewhere safe.
    pub fn to_base64(&self) -> crate::SecretString {
        crate::SecretString::new(STANDARD.encode(*self.0))
    }

    /// Parses base64 text (surrounding whitespace ignored). A `Configuration` error that
    /// never repeats the text.
    pub fn from_base64(text: &str) -> Result<Self> {
        let text = text.trim();
        let decoded = [&STANDARD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| {
                Error::new(ErrorKind::Configuration, "encryption key: not valid base64")
            })?;
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                format!(
                    "encryption key: must be 32 bytes once base64-decoded, got {}",
                    decoded.len()
                ),
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Reads base64 text from the environment variable `name`; unset is an error.
    pub fn from_env(name: &str) -> Result<Self> {
        let text = Zeroizing::new(std::env::var(name).map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                format!("encryption key: environment variable {name:?} is not set (or not UTF-8)"),
            )
        })?);
        Self::from_base64(&text).map_err(|err| {
            Error::new(
                ErrorKind::Configuration,
                format!("{} (from environment variable {name:?})", err.message()),
            )
        })
    }

    /// Reads base64 text from a key file. A missing file, one that is not a regular file,
    /// larger than 64 KiB, or (like an ssh private key) owned by this user and accessible
    /// by group or others, or writable by group or others whoever owns it, is a
    /// `Configuration` error.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_secret_file(path).map_err(|detail| {
            Error::new(
                ErrorKind::Configuration,
                format!("encryption key: {detail}"),
            )
        })?;
        Self::from_base64(&text).map_err(|err| {
            Error::new(
                ErrorKind::Configuration,
                format!("{} (from key file {})", err.message(), path.display()),
            )
        })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

// ---------------------------------------------------------------------------------------
// Record envelope (shared with the Redis store)
// ---------------------------------------------------------------------------------------

/// The `format` field of every stored record.
pub(crate) const ENVELOPE_FORMAT: &str = "tokenlease-record";
/// The envelope version (`docs/file-store.md`).
pub(crate) const ENVELOPE_VERSION: u32 = 1;
const ENCRYPTION_NONE: &str = "none";
const ENCRYPTION_XCHACHA: &str = "xchacha20poly1305";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    version: u32,
    /// SHA-256 (hex) of the store key this record belongs to.
    key: String,
    encryption: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ciphertext: Option<String>,
}

/// Turns records into stored bytes and back: plaintext (refresh token dropped) or sealed.
#[derive(Clone)]
pub(crate) struct RecordCodec {
    key: Option<EncryptionKey>,
}

/// SHA-256 of a store key, as lowercase hex: file names and Redis keys.
pub(crate) fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

fn store_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Store, message)
}

impl RecordCodec {
    pub(crate) fn new(key: Option<EncryptionKey>) -> Self {
        Self { key }
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    fn aad(key_hash: &str) -> Vec<u8> {
        format!("{ENVELOPE_FORMAT}/{ENVELOPE_VERSION}/{key_hash}").into_bytes()
    }

    /// Encodes `record` for the key whose hash is `key_hash`.
    pub(crate) fn encode(&self, key_hash: &str, record: &TokenRecord) -> Result<Vec<u8>> {
        let envelope = match &self.key {
            None => {
                // Refresh tokens (and ID tokens: personal data) are only ever written
                // encrypted.
                let mut record = record.clone();
                record.refresh_token = None;
                record.id_token = None;
                let json = Zeroizing::new(record.to_json()?);
                let value = serde_json::from_str(&json)
                    .map_err(|_| store_error("cannot encode token record"))?;
                Envelope {
                    format: ENVELOPE_FORMAT.to_owned(),
                    version: ENVELOPE_VERSION,
                    key: key_hash.to_owned(),
                    encryption: ENCRYPTION_NONE.to_owned(),
                    record: Some(value),
                    nonce: None,
                    ciphertext: None,
                }
            }
            Some(key) => {
                let plaintext = Zeroizing::new(record.to_json()?.into_bytes());
                let mut nonce = [0u8; 24];
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                let aad = Self::aad(key_hash);
                let ciphertext = key
                    .cipher()
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: &plaintext,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| store_error("cannot encrypt token record"))?;
                Envelope {
                    format: ENVELOPE_FORMAT.to_owned(),
                    version: ENVELOPE_VERSION,
                    key: key_hash.to_owned(),
                    encryption: ENCRYPTION_XCHACHA.to_owned(),
                    record: None,
                    nonce: Some(STANDARD.encode(nonce)),
                    ciphertext: Some(STANDARD.encode(ciphertext)),
                }
            }
        };
        let mut bytes =
            serde_json::to_vec(&envelope).map_err(|_| store_error("cannot encode token record"))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Decodes what `encode` wrote; `what` names the file or Redis key in errors.
    pub(crate) fn decode(&self, key_hash: &str, bytes: &[u8], what: &str) -> Result<TokenRecord> {
        let corrupt = |detail: &str| store_error(format!("corrupt token record {what}: {detail}"));
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|err| {
            corrupt(match err.classify() {
                serde_json::error::Category::Eof => "truncated",
                serde_json::error::Category::Syntax => "not JSON",
                _ => "unexpected or missing field",
            })
        })?;
        if envelope.format != ENVELOPE_FORMAT {
            return Err(corrupt("not a tokenlease record"));
        }
        if envelope.version != ENVELOPE_VERSION {
            return Err(store_error(format!(
                "token record {what} has format version {}, which is not supported (expected {ENVELOPE_VERSION})",
                envelope.version
            )));
        }
        if envelope.key != key_hash {
            return Err(store_error(format!(
                "token record {what} belongs to another key (was it copied or renamed?)"
            )));
        }
        let with_what = |err: Error| store_error(format!("token record {what}: {}", err.message()));
        match (envelope.encryption.as_str(), &self.key) {
            (ENCRYPTION_NONE, None) => {
                let value = envelope.record.ok_or_else(|| corrupt("no record"))?;
                let json = Zeroizing::new(value.to_string());
                TokenRecord::from_json(&json).map_err(with_what)
            }
            (ENCRYPTION_NONE, Some(_)) => Err(store_error(format!(
                "token record {what} is stored in plaintext but encryption is configured; refusing to use it"
            ))),
            (ENCRYPTION_XCHACHA, None) => Err(store_error(format!(
                "token record {what} is encrypted but no encryption key is configured"
            ))),
            (ENCRYPTION_XCHACHA, Some(key)) => {
                let decode = |field: Option<String>| {
                    field
                        .and_then(|text| STANDARD.decode(text).ok())
                        .ok_or_else(|| corrupt("missing or invalid nonce/ciphertext"))
                };
                let nonce = decode(envelope.nonce)?;
                let ciphertext = decode(envelope.ciphertext)?;
                if nonce.len() != 24 {
                    return Err(corrupt("invalid nonce"));
                }
                let aad = Self::aad(key_hash);
                let plaintext = Zeroizing::new(
                    key.cipher()
                        .decrypt(
                            XNonce::from_slice(&nonce),
                            Payload {
                                msg: &ciphertext,
                                aad: &aad,
                            },
                        )
                        .map_err(|_| {
                            store_error(format!(
                                "cannot decrypt token record {what}: wrong encryption key, or the record was tampered with"
                            ))
                        })?,
                );
                let json = std::str::from_utf8(&plaintext)
                    .map_err(|_| corrupt("decrypted record is not UTF-8"))?;
                TokenRecord::from_json(json).map_err(with_what)
            }
            _ => Err(corrupt("unknown encryption scheme")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------------------

/// Whether a process with this PID exists on this host (`kill(pid, 0)`; `EPERM` = exists).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists and that
    // we may signal it. `pid` is positive, so it names one process (not a group).
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// This host's name (`gethostname`), or `"unknown"`.
pub(crate) fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the pointer and length describe `buffer`, which outlives the call;
    // gethostname writes at most `len` bytes.
    let status =
        unsafe { libc::gethostname(buffer.as_mut_ptr().cast::<libc::c_char>(), buffer.len()) };
    if status != 0 {
        return "unknown".to_owned();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

fn io_error(what: &str, path: &Path, err: &io::Error) -> Error {
    store_error(format!("cannot {what} {}: {}", path.display(), err.kind()))
}

/// This process's effective uid.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What a file that is not a regular file is, for error messages.
fn file_kind(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Reads a secret or key file the way ssh reads a private key: the path may be a symbolic
/// link (Kubernetes mounts secrets that way), but the file must be a regular file (a FIFO
/// never hangs the read: the open does not block), at most [`MAX_SECRET_FILE_BYTES`], not
/// writable by group or others, and, when this user owns it, not readable by them either.
/// The error (without the file's content) is returned as text for the caller to prefix.
pub(crate) fn read_secret_file(path: &Path) -> std::result::Result<Zeroizing<String>, String> {
    let shown = path.display();
    let cannot = |err: io::Error| format!("cannot read secret file {shown}: {}", err.kind());
    let check = |metadata: &fs::Metadata| {
        if !metadata.is_file() {
            return Err(format!(
                "secret file {shown} is {}, not a regular file",
                file_kind(metadata.file_type())
            ));
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o022 != 0 || (metadata.uid() == euid() && mode & 0o077 != 0) {
            return Err(format!(
                "secret file {shown} is accessible by group or others (mode {mode:04o}); chmod 600 it"
            ));
        }
        if metadata.len() > MAX_SECRET_FILE_BYTES as u64 {
            return Err(format!(
                "secret file {shown} is larger than {MAX_SECRET_FILE_BYTES} bytes"
            ));
        }
        Ok(())
    };
    // Checked before opening (a device or FIFO is never opened) and again on what was
    // opened (the path may have changed in between).
    check(&fs::metadata(path).map_err(cannot)?)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    check(&file.metadata().map_err(cannot)?)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_SECRET_FILE_BYTES + 1));
    (&file)
        .take(MAX_SECRET_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "secret file {shown} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        ));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("secret file {shown} is not UTF-8 text"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Whether an `O_NOFOLLOW` open failed because the last component is a symbolic link
/// (`ELOOP`; `EMLINK` on FreeBSD).
fn is_symlink_refusal(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == libc::ELOOP || code == libc::EMLINK)
}

/// `name` (one of the store's own file names) as a C string.
fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`, retried on `EINTR`.
fn open_at(dir: &File, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let name = c_name(name)?;
    loop {
        // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string, both alive
        // for the whole call; the mode argument is only read with O_CREAT.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        if fd >= 0 {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `renameat(dir, from, dir, to)`.
fn rename_at(dir: &File, from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    // SAFETY: the descriptor and both NUL-terminated strings are alive for the call.
    let status =
        unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `unlinkat(dir, name, 0)` (removes a symbolic link itself, never its target).
fn unlink_at(dir: &File, name: &str) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: the descriptor and the NUL-terminated string are alive for the call.
    let status = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens `name` in `dir` (shown as `path`) as a regular file without following a symbolic
/// link and without blocking (a FIFO opens at once and is then refused). `what` names the
/// file in errors: "token record", "lease file", "lock file".
fn open_regular(
    dir: &File,
    name: &str,
    path: &Path,
    what: &str,
    flags: libc::c_int,
) -> io::Result<std::result::Result<File, Error>> {
    let file = match open_at(
        dir,
        name,
        flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        0o600,
    ) {
        Ok(file) => file,
        Err(err) if is_symlink_refusal(&err) => {
            return Ok(Err(store_error(format!(
                "{what} {} is a symbolic link; refusing to follow it",
                path.display()
            ))))
        }
        Err(err) => return Err(err),
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Ok(Err(store_error(format!(
            "{what} {} is {}, not a regular file; refusing to use it",
            path.display(),
            file_kind(metadata.file_type())
        ))));
    }
    Ok(Ok(file))
}

/// Reads `name` in `dir` (shown as `path`) through [`open_regular`], at most `cap` bytes:
/// `None` if it does not exist, a `Store` error if it is not a regular file or larger.
fn read_regular(
    dir: &File,
    name: &str,
    path: &Path,
    what: &str,
    cap: usize,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let file = match open_regular(dir, name, path, what, libc::O_RDONLY) {
        Ok(Ok(file)) => file,
        Ok(Err(refused)) => return Err(refused),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(&format!("read {what}"), path, &err)),
    };
    // The whole capacity up front: the buffer never reallocates (and so never leaves an
    // unzeroized copy of a token behind).
    let mut bytes = Zeroizing::new(Vec::with_capacity(cap + 1));
    (&file)
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| io_error(&format!("read {what}"), path, &err))?;
    if bytes.len() > cap {
        return Err(store_error(format!(
            "{what} {} is larger than {cap} bytes; refusing to read it",
            path.display()
        )));
    }
    Ok(Some(bytes))
}

/// Opens a store directory for use, refusing one this process must not trust: a symbolic
/// link, not a directory, owned by another uid, or writable by group or others. The error
/// is the detail, for the caller to prefix.
fn open_trusted_dir(dir: &Path) -> std::result::Result<File, String> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir);
    let file = opened.map_err(|err| match fs::symlink_metadata(dir) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            "is a symbolic link; give the real directory (a link could be pointed elsewhere)"
                .to_owned()
        }
        Ok(metadata) if !metadata.is_dir() => "is not a directory".to_owned(),
        _ => format!("cannot open the directory: {}", err.kind()),
    })?;
    let metadata = file
        .metadata()
        .map_err(|err| format!("cannot inspect the directory: {}", err.kind()))?;
    if !metadata.is_dir() {
        return Err("is not a directory".to_owned());
    }
    let (owner, me) = (metadata.uid(), euid());
    if owner != me {
        return Err(format!(
            "is owned by uid {owner}, not by this process's uid {me}; refusing a directory another user controls"
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(
            "is writable by group or others; use a private directory (mode 0700)".to_owned(),
        );
    }
    Ok(file)
}

/// Holds an exclusive `flock` on a lock file until dropped.
struct FlockGuard(File);

impl FlockGuard {
    /// Locks `name` in `dir` (shown as `path`), created `0600` if missing, never through a
    /// symbolic link. Gives up with a `Store` error after `timeout`: a process stuck while
    /// holding the lock must not hang every other one.
    fn lock(dir: &File, name: &str, path: &Path, timeout: Duration) -> Result<Self> {
        let file = match open_regular(dir, name, path, "lock file", libc::O_RDWR | libc::O_CREAT) {
            Ok(Ok(file)) => file,
            Ok(Err(refused)) => return Err(refused),
            Err(err) => return Err(io_error("open lock file", path, &err)),
        };
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            // SAFETY: the descriptor belongs to `file`, which is open for the whole call.
            let status = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if status == 0 {
                return Ok(Self(file));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                _ => return Err(io_error("lock", path, &err)),
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(store_error(format!(
                    "lock file {} held by another process for more than {} s (a healthy holder keeps it for microseconds; is a process stuck?)",
                    path.display(),
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }
}

impl Drop for FlockGuard {
    fn drop(&mut self) {
        // SAFETY: the descriptor belongs to `self.0`, still open here. Closing the file
        // right after would release the lock as well; unlocking first is explicit.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// An exclusive lock on a file, held until dropped (see [`lock_in_dir`]).
#[derive(Debug)]
pub struct FileLock {
    _held: FlockGuard,
}

impl std::fmt::Debug for FlockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlockGuard")
    }
}

/// Takes an exclusive `flock` of the file `name` in `dir` (created `0600` if missing),
/// with the checks the store gives its own lock files: `dir` must be a real directory of
/// this user, not writable by others, and `name` a regular file reached without a symbolic
/// link. Waits at most `timeout` for another holder (a `Store` error after it). For
/// one-time work next to a store that processes must not do twice, such as making a key.
pub fn lock_in_dir(dir: &Path, name: &str, timeout: Duration) -> Result<FileLock> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::new(
            ErrorKind::Usage,
            "lock_in_dir: name must be a file name, not a path",
        ));
    }
    let opened = open_trusted_dir(dir)
        .map_err(|detail| store_error(format!("lock directory {}: {detail}", dir.display())))?;
    FlockGuard::lock(&opened, name, &dir.join(name), timeout).map(|held| FileLock { _held: held })
}

// ---------------------------------------------------------------------------------------
// File store
// ---------------------------------------------------------------------------------------

/// The lease file's content (`<hash>.lease`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    pid: u32,
    host: String,
    fencing_token: u64,
    expires_at_ms: u64,
    released: bool,
}

/// Who holds (or last held) a key's lease, as recorded in its lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// PID of the holder.
    pub pid: u32,
    /// Host name of the holder.
    pub host: String,
    /// Fencing token of the holder's acquisition.
    pub fencing_token: u64,
    /// When the lease lapses.
    pub expires_at: SystemTime,
    /// Whether the holder released it.
    pub released: bool,
}

impl LeaseInfo {
    /// Whether the lease is in force now (not released, not expired).
    pub fn is_held(&self) -> bool {
        !self.released && self.expires_at > SystemTime::now()
    }
}

/// A directory of token records shared by restarts and sibling processes on one host (or
/// on a shared file system; PID liveness is then only checked for same-host holders).
///
/// Cheap to clone (the clones share state). Implements [`Store`] (file work runs on the
/// blocking pool, never on the background runtime's thread) and [`BlockingStore`].
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    dir: PathBuf,
    codec: RecordCodec,
    host: String,
    pid: u32,
    lock_timeout: Duration,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.inner.dir)
            .field("encrypted", &self.inner.codec.is_encrypted())
            .finish()
    }
}

impl FileStore {
    /// Opens (creating it `0700` if needed) a plaintext store in `dir`. Refresh tokens are
    /// not written to disk by a plaintext store.
    ///
    /// A `Configuration` error if `dir` is a symbolic link, is not a directory, is owned by
    /// another uid than this process's effective uid, or is writable by group or others.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(dir.into(), None)
    }

    /// Opens (creating it `0700` if needed) a store whose records are encrypted with
    /// `key`. Plaintext records and records sealed with another key are errors. The
    /// directory is checked as by [`FileStore::open`].
    pub fn open_encrypted(dir: impl Into<PathBuf>, key: EncryptionKey) -> Result<Self> {
        Self::open_with(dir.into(), Some(key))
    }

    fn open_with(dir: PathBuf, key: Option<EncryptionKey>) -> Result<Self> {
        // Without a trailing slash, which would make the kernel follow a symbolic link.
        let dir: PathBuf = dir.components().collect();
        let config_error = |detail: String| {
            Error::new(
                ErrorKind::Configuration,
                format!("file store {}: {detail}", dir.display()),
            )
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|err| config_error(format!("cannot create the directory: {}", err.kind())))?;
        let handle = open_trusted_dir(&dir).map_err(config_error)?;
        let store = Self {
            inner: Arc::new(Inner {
                dir,
                codec: RecordCodec::new(key),
                host: host_name(),
                pid: std::process::id(),
                lock_timeout: DEFAULT_LOCK_TIMEOUT,
            }),
        };
        store.remove_stale_temp_files(&handle);
        Ok(store)
    }

    /// This store with another bound on waiting for a key's lock file (default
    /// [`DEFAULT_LOCK_TIMEOUT`]). The lock is held for microseconds by a healthy process;
    /// past the bound, lease operations and fenced saves fail with a `Store` error
    /// ("lock file ... held by another process for more than N s"), which the manager
    /// reports before going on without the lease.
    pub fn with_lock_timeout(self, timeout: Duration) -> Self {
        let mut inner = (*self.inner).clone();
        inner.lock_timeout = timeout;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether records are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.inner.codec.is_encrypted()
    }

    /// The record file of `key`: `<dir>/<sha256(key) hex>.token`.
    pub fn record_path(&self, key: &str) -> PathBuf {
        self.inner.dir.join(record_name(key))
    }

    /// The lease file of `key`: `<dir>/<sha256(key) hex>.lease`.
    pub fn lease_path(&self, key: &str) -> PathBuf {
        self.inner.dir.join(lease_name(key))
    }

    /// The lock file of `key`: `<dir>/<sha256(key) hex>.lock`.
    pub fn lock_path(&self, key: &str) -> PathBuf {
        self.inner.dir.join(lock_name(key))
    }

    /// The store directory, checked again (owner, mode, not a symbolic link) for one
    /// operation; files are then opened relative to it, so a directory swapped after the
    /// check is not used.
    fn open_dir(&self) -> Result<File> {
        open_trusted_dir(&self.inner.dir).map_err(|detail| {
            store_error(format!("file store {}: {detail}", self.inner.dir.display()))
        })
    }

    fn lock(&self, dir: &File, key: &str) -> Result<FlockGuard> {
        FlockGuard::lock(
            dir,
            &lock_name(key),
            &self.lock_path(key),
            self.inner.lock_timeout,
        )
    }

    /// The lease of `key` as recorded on disk (whether or not it is in force), read under
    /// the lease lock.
    pub fn lease_info(&self, key: &str) -> Result<Option<LeaseInfo>> {
        let dir = self.open_dir()?;
        let _guard = self.lock(&dir, key)?;
        Ok(self.read_lease(&dir, key)?.map(|lease| LeaseInfo {
            pid: lease.pid,
            host: lease.host,
            fencing_token: lease.fencing_token,
            expires_at: UNIX_EPOCH + Duration::from_millis(lease.expires_at_ms),
            released: lease.released,
        }))
    }

    /// Removes temp files left by a writer that crashed between write and rename: those
    /// whose writer PID is gone, and any older than a minute.
    fn remove_stale_temp_files(&self, dir: &File) {
        let Ok(entries) = fs::read_dir(&self.inner.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(pid) = temp_file_pid(name) else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if old || !pid_alive(pid) {
                let _ = unlink_at(dir, name);
            }
        }
    }

    /// Writes `bytes` to `name` in `dir` atomically: temp file (0600, created exclusively,
    /// so never through a planted link) in the same directory, fsync, rename, fsync of the
    /// directory. Without `durable` the fsyncs are skipped (lease files: a crash of the
    /// host ends every holder anyway); the rename keeps it atomic. A symbolic link or FIFO
    /// planted at `name` is replaced, never written through.
    fn write_atomic(&self, dir: &File, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
        let path = self.inner.dir.join(name);
        let temp = format!(
            ".{name}.{}.{:016x}.tmp",
            self.inner.pid,
            rand::random::<u64>()
        );
        let written = (|| {
            let mut file = open_at(
                dir,
                &temp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_NOCTTY,
                0o600,
            )?;
            file.write_all(bytes)?;
            if durable {
                file.sync_all()?;
            }
            drop(file);
            rename_at(dir, &temp, name)
        })();
        if let Err(err) = written {
            let _ = unlink_at(dir, &temp);
            return Err(io_error("write", &path, &err));
        }
        if durable {
            self.sync_dir(dir)?;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &File) -> Result<()> {
        dir.sync_all()
            .map_err(|err| io_error("sync directory", &self.inner.dir, &err))
    }

    /// The lease file of `key`. A symbolic link, FIFO, device or directory there, or a
    /// file over 4 KiB, is a `Store` error.
    fn read_lease(&self, dir: &File, key: &str) -> Result<Option<LeaseFile>> {
        let path = self.lease_path(key);
        let bytes = read_regular(dir, &lease_name(key), &path, "lease file", MAX_LEASE_BYTES)?;
        // An unparseable lease file (only possible if something else wrote it) is treated
        // as free; the fencing count restarts from zero.
        Ok(bytes.and_then(|bytes| serde_json::from_slice::<LeaseFile>(&bytes).ok()))
    }

    fn write_lease(&self, dir: &File, key: &str, lease: &LeaseFile) -> Result<()> {
        let bytes = serde_json::to_vec(lease).map_err(|_| store_error("cannot encode lease"))?;
        self.write_atomic(dir, &lease_name(key), &bytes, false)
    }

    /// Whether `lease` no longer keeps others out.
    fn is_free(&self, lease: &LeaseFile, now_ms: u64) -> bool {
        lease.released
            || lease.expires_at_ms <= now_ms
            || (lease.host == self.inner.host && !pid_alive(lease.pid))
    }

    /// One attempt at the lease of `key`.
    fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<FileLease>> {
        let dir = self.open_dir()?;
        let _guard = self.lock(&dir, key)?;
        let now_ms = unix_ms(SystemTime::now());
        let current = self.read_lease(&dir, key)?;
        if let Some(lease) = &current {
            if !self.is_free(lease, now_ms) {
                return Ok(None);
            }
        }
        let fencing_token = current.map_or(0, |lease| lease.fencing_token) + 1;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.write_lease(
            &dir,
            key,
            &LeaseFile {
                version: 1,
                pid: self.inner.pid,
                host: self.inner.host.clone(),
                fencing_token,
                expires_at_ms: now_ms.saturating_add(ttl_ms),
                released: false,
            },
        )?;
        Ok(Some(FileLease {
            store: self.clone(),
            key: key.to_owned(),
            fencing_token,
        }))
    }

    /// Extends the lease to `ttl` from now while `fencing_token` still holds it.
    fn renew_lease(&self, key: &str, fencing_token: u64, ttl: Duration) -> Result<()> {
        let dir = self.open_dir()?;
        let _guard = self.lock(&dir, key)?;
        match self.read_lease(&dir, key)? {
            Some(mut lease) if lease.fencing_token == fencing_token && !lease.released => {
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                lease.expires_at_ms = unix_ms(SystemTime::now()).saturating_add(ttl_ms);
                self.write_lease(&dir, key, &lease)
            }
            _ => Err(store_error(format!(
                "the refresh lease of {} passed to another holder (fencing token {fencing_token}); not renewed",
                key_hash(key)
            ))),
        }
    }

    fn release_lease(&self, key: &str, fencing_token: u64) -> Result<()> {
        let dir = self.open_dir()?;
        let _guard = self.lock(&dir, key)?;
        match self.read_lease(&dir, key)? {
            Some(mut lease) if lease.fencing_token == fencing_token && !lease.released => {
                lease.released = true;
                self.write_lease(&dir, key, &lease)
            }
            _ => Ok(()),
        }
    }

    /// Saves only while `fencing_token` is still the latest acquisition of the lease (it may
    /// have lapsed, as long as no one else took it since).
    fn save_fenced_blocking(
        &self,
        key: &str,
        record: &TokenRecord,
        fencing_token: u64,
    ) -> Result<()> {
        let dir = self.open_dir()?;
        let _guard = self.lock(&dir, key)?;
        let current = self.read_lease(&dir, key)?.map(|lease| lease.fencing_token);
        if current != Some(fencing_token) {
            return Err(store_error(format!(
                "the refresh lease of {} passed to another holder (fencing token {fencing_token}, now {}); write refused",
                self.lease_path(key).display(),
                current.map_or_else(|| "none".to_owned(), |token| token.to_string())
            )));
        }
        self.save_in(&dir, key, record)
    }

    /// Encodes and writes the record of `key`; a record over [`MAX_RECORD_BYTES`] is a
    /// `Store` error and nothing is written (it could not be read back).
    fn save_in(&self, dir: &File, key: &str, record: &TokenRecord) -> Result<()> {
        let bytes = Zeroizing::new(self.inner.codec.encode(&key_hash(key), record)?);
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(store_error(format!(
                "token record {} would be {} bytes, larger than {MAX_RECORD_BYTES} bytes; not written",
                self.record_path(key).display(),
                bytes.len()
            )));
        }
        self.write_atomic(dir, &record_name(key), &bytes, true)
    }
}

fn record_name(key: &str) -> String {
    format!("{}.token", key_hash(key))
}

fn lease_name(key: &str) -> String {
    format!("{}.lease", key_hash(key))
}

fn lock_name(key: &str) -> String {
    format!("{}.lock", key_hash(key))
}

/// The writer PID inside a temp file name `.<name>.<pid>.<random>.tmp`.
fn temp_file_pid(name: &str) -> Option<u32> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = inner.rsplitn(3, '.');
    let _random = parts.next()?;
    parts.next()?.parse().ok()
}

impl BlockingStore for FileStore {
    /// The record of `key`. A symbolic link, FIFO, device or directory in its place, or a
    /// file over [`MAX_RECORD_BYTES`], is a `Store` error naming the file (never read
    /// through, never read whole).
    fn load(&self, key: &str) -> Result<Option<TokenRecord>> {
        let dir = self.open_dir()?;
        let path = self.record_path(key);
        let Some(bytes) = read_regular(
            &dir,
            &record_name(key),
            &path,
            "token record",
            MAX_RECORD_BYTES,
        )?
        else {
            return Ok(None);
        };
        let what = path.display().to_string();
        self.inner
            .codec
            .decode(&key_hash(key), &bytes, &what)
            .map(Some)
    }

    fn save(&self, key: &str, record: &TokenRecord) -> Result<()> {
        let dir = self.open_dir()?;
        self.save_in(&dir, key, record)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let dir = self.open_dir()?;
        match unlink_at(&dir, &record_name(key)) {
            Ok(()) => self.sync_dir(&dir),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_error("delete", &self.record_path(key), &err)),
        }
    }
}

/// A held file lease.
#[derive(Debug)]
struct FileLease {
    store: FileStore,
    key: String,
    fencing_token: u64,
}

#[async_trait]
impl Lease for FileLease {
    fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    async fn release(self: Box<Self>) -> Result<()> {
        let FileLease {
            store,
            key,
            fencing_token,
        } = *self;
        crate::runtime::run_blocking("file store", move || {
            store.release_lease(&key, fencing_token)
        })
        .await
    }

    async fn renew(&self, ttl: Duration) -> Result<()> {
        let (store, key, fencing_token) =
            (self.store.clone(), self.key.clone(), self.fencing_token);
        crate::runtime::run_blocking("file store", move || {
            store.renew_lease(&key, fencing_token, ttl)
        })
        .await
    }
}

#[async_trait]
impl Store for FileStore {
    async fn load(&self, key: &str) -> Result<Option<TokenRecord>> {
        let (store, key) = (self.clone(), key.to_owned());
        crate::runtime::run_blocking("file store", move || BlockingStore::load(&store, &key)).await
    }

    async fn save(&self, key: &str, record: &TokenRecord) -> Result<()> {
        let (store, key, record) = (self.clone(), key.to_owned(), record.clone());
        crate::runtime::run_blocking("file store", move || {
            BlockingStore::save(&store, &key, &record)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let (store, key) = (self.clone(), key.to_owned());
        crate::runtime::run_blocking("file store", move || BlockingStore::delete(&store, &key))
            .await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        let give_up = Instant::now() + wait;
        loop {
            let (store, owned_key) = (self.clone(), key.to_owned());
            let attempt = crate::runtime::run_blocking("file store", move || {
                store.try_lease(&owned_key, ttl)
            })
            .await?;
            if let Some(lease) = attempt {
                return Ok(LeaseOutcome::Acquired(Box::new(lease)));
            }
            if Instant::now() >= give_up {
                return Ok(LeaseOutcome::Busy);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    async fn save_fenced(&self, key: &str, record: &TokenRecord, lease: &dyn Lease) -> Result<()> {
        let (store, key, record) = (self.clone(), key.to_owned(), record.clone());
        let fencing_token = lease.fencing_token();
        crate::runtime::run_blocking("file store", move || {
            store.save_fenced_blocking(&key, &record, fencing_token)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sample_record as record;

    #[test]
    fn plaintext_drops_the_refresh_token_and_encrypted_keeps_it() {
        let hash = key_hash("k");
        let plain = RecordCodec::new(None);
        let bytes = plain.encode(&hash, &record()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("refresh-secret-value"));
        assert!(!String::from_utf8_lossy(&bytes).contains("id-secret-value"));
        let decoded = plain.decode(&hash, &bytes, "x").unwrap();
        assert_eq!(decoded.refresh_token, None);
        assert_eq!(decoded.id_token, None);
        assert_eq!(decoded.value, record().value);

        let sealed = RecordCodec::new(Some(EncryptionKey::generate()));
        let bytes = sealed.encode(&hash, &record()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("secret-value"), "{text}");
        assert_eq!(sealed.decode(&hash, &bytes, "x").unwrap(), record());
        // Bound to its key: the same bytes under another key's name do not open.
        let err = sealed.decode(&key_hash("other"), &bytes, "x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Store);
    }

    #[test]
    fn keys_parse_from_base64_only_at_32_bytes() {
        let key = EncryptionKey::generate();
        let text = key.to_base64();
        let again = EncryptionKey::from_base64(text.expose()).unwrap();
        assert_eq!(*again.0, *key.0);
        let err = EncryptionKey::from_base64("c2hvcnQ=").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.message().contains("32 bytes"), "{err}");
        let err = EncryptionKey::from_base64("not base64 at all!").unwrap_err();
        assert!(!err.message().contains("at all"), "{err}");
        assert_eq!(format!("{key:?}"), "EncryptionKey([redacted])");
    }

    #[test]
    fn temp_file_names_carry_the_writer_pid() {
        assert_eq!(
            temp_file_pid(".abc.token.1234.00ff00ff00ff00ff.tmp"),
            Some(1234)
        );
        assert_eq!(temp_file_pid("abc.token"), None);
        assert_eq!(temp_file_pid(".abc.lease.x.1.tmp"), None);
    }

    #[test]
    fn our_pid_is_alive_and_a_huge_one_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        assert!(!host_name().is_empty());
    }
}
