//! `tokenlease`: a usable token for shell scripts, `curl`, `kubectl` and `git`, from the same
//! configuration file every binding reads. Invocations share tokens through a store (a
//! file store under the user's cache directory unless the configuration names another,
//! encrypted with `TOKENLEASE_STORE_KEY`, else a key kept in the OS keyring, see
//! `store_key`), so a loop of invocations makes no token request while the token is valid
//! and concurrent cold invocations make one (the store's lease).
//!
//! Exit status: 0 on success; 10 + the stable error kind number on a token error (11
//! `invalid_credentials` ... 26 `login_required`, see `tokenlease --help`); 2 for a usage
//! error; for `exec`, the command's own status. Messages go to stderr and never contain a
//! token or secret.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};

mod serve;
mod store_key;
use store_key::{StoreKey, KEYRING_ENV, STORE_KEY_ENV};
use tokenlease::config::{ManagerConfig, StoreConfig};
use tokenlease::store::TokenRecord;
use tokenlease::{Error, ErrorKind, Event, EventListener, Manager, Token, TokenState};

/// The default store and its key, for the help of every subcommand that uses it.
macro_rules! store_help {
    () => {
        "\
Tokens are shared through a store: the configuration's, else a file store under
$TOKENLEASE_CACHE_DIR (or $XDG_CACHE_HOME/tokenlease, ~/.cache/tokenlease)/cli-store,
encrypted with the first key found:
  1. $TOKENLEASE_STORE_KEY (base64 of 32 bytes);
  2. the OS keyring's entry for the cache directory, made on first use (Linux: the
     kernel's persistent keyring, else the user keyring; macOS: the login keychain);
     TOKENLEASE_KEYRING=off skips the keyring;
  3. none: plaintext, without refresh tokens (said on a terminal or in the agent's log).
A record sealed with another key is treated as empty (a new token replaces it).
`tokenlease status` shows which key (env, keyring or none), never the key."
    };
}

const STORE_HELP: &str = store_help!();

const EXIT_STATUS_HELP: &str = concat!(
    "\
Exit status: 0 success; 2 usage error; 10 + the error kind on failure:
  11 invalid_credentials  12 invalid_grant  13 rate_limited  14 transient  15 timeout
  16 store  17 token_rejected  18 configuration  19 expired  20 closed  21 refresh_failed
  22 protocol  23 usage  24 internal  25 cancelled  26 login_required

",
    store_help!()
);

#[derive(Parser)]
#[command(name = "tokenlease", version, about = "Usable tokens for scripts, curl, kubectl and git", after_help = EXIT_STATUS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// The configuration file (JSON or TOML, the shape every binding reads).
    #[arg(long, env = "TOKENLEASE_CONFIG")]
    config: PathBuf,
    /// The store key (default: the configuration's, or one derived from the source).
    #[arg(long)]
    key: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// The token alone.
    Raw,
    /// `{"access_token", "token_type", "expires_at", "expires_in"}`.
    Json,
    /// The header that carries it (`Authorization: Bearer ...`, or a session's header), for
    /// `curl -H "$(tokenlease token --format header)"`.
    Header,
    /// A kubectl exec credential (`client.authentication.k8s.io/v1` `ExecCredential`).
    K8sExecCredential,
}

#[derive(Subcommand)]
enum Command {
    /// Prints a usable token (from the store while it is valid).
    #[command(after_help = EXIT_STATUS_HELP)]
    Token {
        #[command(flatten)]
        common: Common,
        /// Output format.
        #[arg(long, value_enum, default_value = "raw")]
        format: Format,
    },
    /// Prints what the store holds for the credential and where the store's key comes from
    /// (JSON; never the token, never the key).
    #[command(after_help = STORE_HELP)]
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Logs out: revokes the token at the server (when it can) and wipes the store.
    #[command(after_help = STORE_HELP)]
    Revoke {
        #[command(flatten)]
        common: Common,
    },
    /// Logs a user in with the device flow: prints the code and the URL, waits.
    #[command(after_help = STORE_HELP)]
    Login {
        #[command(flatten)]
        common: Common,
    },
    /// Runs a command with the token in an environment variable; exits with its status.
    #[command(after_help = STORE_HELP)]
    Exec {
        #[command(flatten)]
        common: Common,
        /// The environment variable that carries the token.
        #[arg(long, default_value = "TOKENLEASE_TOKEN")]
        env: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The local token agent: several credentials served to local clients over a Unix
    /// socket (and optionally loopback HTTP with a per-start secret), one shared refresh.
    #[command(after_help = STORE_HELP)]
    Serve {
        /// A credential to serve, as NAME=CONFIG_FILE (repeat for several).
        #[arg(long = "credential", required = true, value_parser = parse_credential)]
        credentials: Vec<(String, PathBuf)>,
        /// The socket (default: $XDG_RUNTIME_DIR/tokenlease/agent.sock, else under the
        /// cache directory).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Also serve loopback HTTP on this port (0: any); clients send the secret the agent
        /// writes next to the socket (agent.secret) in `x-tokenlease-agent`.
        #[arg(long)]
        http_port: Option<u16>,
    },
    /// A git credential helper (`get`, `store`, `erase` on stdin/stdout):
    /// `git config credential.helper '!tokenlease git-credential --config FILE'`.
    #[command(after_help = STORE_HELP)]
    GitCredential {
        #[command(flatten)]
        common: Common,
        /// The user name git sends with the token.
        #[arg(long, default_value = "x-access-token")]
        username: String,
        /// What git asks for.
        operation: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    // Let the managers' queued events land (bounded), so a notice about the store is seen.
    tokenlease::events::flush(EVENT_FLUSH);
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tokenlease: {err}");
            ExitCode::from(exit_status(err.kind()))
        }
    }
}

/// How long the command waits for its managers' queued events before it exits.
const EVENT_FLUSH: Duration = Duration::from_millis(200);

/// 10 + the stable error kind number.
fn exit_status(kind: ErrorKind) -> u8 {
    u8::try_from(10 + kind.code()).unwrap_or(1)
}

fn run(cli: Cli) -> tokenlease::Result<ExitCode> {
    match cli.command {
        Command::Token { common, format } => {
            let Setup { manager, .. } = manager(&common)?;
            let token = with_progress("waiting for the token", || manager.token_blocking())?;
            print_token(&manager, &token, format)?;
        }
        Command::Status { common } => {
            let setup = manager(&common)?;
            println!("{}", status(&setup));
        }
        Command::Revoke { common } => {
            let Setup { manager, .. } = manager(&common)?;
            // Adopt what the store holds first, so the server revokes that token.
            let _ = manager.token_blocking();
            manager.revoke_blocking()?;
        }
        Command::Login { common } => {
            let Setup { manager, .. } = manager(&common)?;
            let device = manager.start_device_login_blocking()?;
            eprintln!(
                "tokenlease: open {} and enter the code {}",
                device.verification_uri(),
                device.user_code()
            );
            if let Some(complete) = device.verification_uri_complete() {
                eprintln!("tokenlease: or open {complete}");
            }
            with_progress("waiting for the login to be approved", || {
                manager.complete_device_login_blocking(&device)
            })?;
            eprintln!("tokenlease: logged in");
        }
        Command::Exec {
            common,
            env,
            command,
        } => {
            let Setup { manager, .. } = manager(&common)?;
            let token = with_progress("waiting for the token", || manager.token_blocking())?;
            // A notice about the store comes before the command's own output.
            manager.flush_events(EVENT_FLUSH);
            let (program, arguments) = command
                .split_first()
                .ok_or_else(|| Error::new(ErrorKind::Usage, "exec: give the command after --"))?;
            let status = std::process::Command::new(program)
                .args(arguments)
                .env(&env, token.value().expose())
                .status()
                .map_err(|err| {
                    Error::new(
                        ErrorKind::Usage,
                        format!("exec: cannot run {program:?}: {}", err.kind()),
                    )
                })?;
            return Ok(match status.code() {
                Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                None => ExitCode::from(1),
            });
        }
        Command::GitCredential {
            common,
            username,
            operation,
        } => return git_credential(&common, &username, &operation),
        Command::Serve {
            credentials,
            socket,
            http_port,
        } => {
            serve::init_logs();
            SERVING.store(true, Ordering::SeqCst);
            let agent = serve::Agent::new(
                &credentials,
                Box::new(|_path, text| setup_from_text(text, None).map(|setup| setup.manager)),
            )?;
            let socket = socket.unwrap_or_else(|| {
                std::env::var_os("XDG_RUNTIME_DIR")
                    .map(|dir| PathBuf::from(dir).join("tokenlease"))
                    .unwrap_or_else(|| cache_dir().join("agent"))
                    .join("agent.sock")
            });
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|err| Error::new(ErrorKind::Internal, format!("cannot start: {err}")))?;
            runtime
                .block_on(serve::run(
                    std::sync::Arc::new(agent),
                    serve::Listeners { socket, http_port },
                ))
                .map_err(|err| {
                    Error::new(ErrorKind::Configuration, format!("cannot serve: {err}"))
                })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether this process is the agent (`serve`): its notices go to its JSON log.
static SERVING: AtomicBool = AtomicBool::new(false);

/// The default store's key, looked up once per process (the agent builds a manager per
/// credential, and again on SIGHUP).
static STORE_KEY: OnceLock<StoreKey> = OnceLock::new();

/// What a subcommand runs with.
struct Setup {
    manager: Manager,
    /// The store the manager was built with.
    store: StoreConfig,
    /// Where the default store's key comes from; `None` when the configuration names the
    /// store (its key, if any, is the configuration's business).
    store_key: Option<&'static StoreKey>,
}

/// The manager the configuration describes, with the CLI's store: a process lives for one
/// call, so a memory store would share nothing; it becomes the default file store.
fn manager(common: &Common) -> tokenlease::Result<Setup> {
    let text = std::fs::read_to_string(&common.config).map_err(|err| {
        Error::new(
            ErrorKind::Configuration,
            format!(
                "cannot read the configuration {}: {}",
                common.config.display(),
                err.kind()
            ),
        )
    })?;
    setup_from_text(&text, common.key.as_deref())
}

/// The manager a configuration text describes, with the CLI's default store.
fn setup_from_text(text: &str, key: Option<&str>) -> tokenlease::Result<Setup> {
    let mut config = ManagerConfig::parse(text)?;
    if let Some(key) = key {
        config.key = Some(key.to_owned());
    }
    let mut store_key = None;
    if matches!(config.store, StoreConfig::Memory) {
        let cache = cache_dir();
        let dir = cache.join("cli-store");
        // A misspelt opt-out is an error each time, never a quiet use of the keyring.
        store_key::keyring_enabled()?;
        let found = STORE_KEY.get_or_init(|| {
            let found = store_key::resolve(&cache);
            announce_store_key(&found, &dir);
            found
        });
        config.store = StoreConfig::File {
            dir: dir.to_string_lossy().into_owned(),
            encryption_key: found.value.clone(),
        };
        store_key = Some(found);
    }
    let manager = config.build()?;
    manager.add_listener(Arc::new(StoreNotice {
        origin: store_key.map(|found| found.origin),
        shown: AtomicBool::new(false),
    }));
    Ok(Setup {
        manager,
        store: config.store,
        store_key,
    })
}

/// Says where the default store's key comes from when that matters: plaintext mode (on a
/// terminal, or in the agent's log), a keyring entry made now (on a terminal, or logged).
fn announce_store_key(found: &StoreKey, dir: &std::path::Path) {
    let serving = SERVING.load(Ordering::SeqCst);
    match found.origin {
        store_key::Origin::None if serving => tracing::warn!(
            store = %dir.display(),
            reason = %found.detail,
            "no store key: tokens are kept without their refresh tokens"
        ),
        store_key::Origin::None if std::io::stderr().is_terminal() => eprintln!(
            "tokenlease: no store key ({}): tokens are kept in {} without their refresh \
             tokens (set {STORE_KEY_ENV} to a base64 32-byte key, or use an OS keyring, to \
             keep them, encrypted)",
            found.detail,
            dir.display()
        ),
        store_key::Origin::Keyring if serving => tracing::info!(
            keyring = found.detail,
            entry = found.entry.as_deref().unwrap_or_default(),
            created = found.created,
            "store key from the keyring"
        ),
        store_key::Origin::Keyring if found.created && std::io::stderr().is_terminal() => {
            eprintln!(
                "tokenlease: the store's key is now kept in {} (new entry {}; \
                 {KEYRING_ENV}=off goes without)",
                found.detail,
                found.entry.as_deref().unwrap_or_default()
            );
        }
        _ => {}
    }
}

/// Whether a store error is about a record that was read but cannot be used (core's
/// record codec names it "token record"), rather than about reaching the store.
fn is_record_error(message: &str) -> bool {
    message.contains("token record")
}

/// Why a stored record cannot be used, in the user's terms (`origin`: where this process's
/// store key comes from; `None`: the configuration's store).
fn unreadable_record(message: &str, origin: Option<store_key::Origin>) -> String {
    let why = if message.contains("cannot decrypt") {
        match origin {
            Some(store_key::Origin::Keyring) => {
                "it was sealed with another key than the keyring's (with $TOKENLEASE_STORE_KEY, \
                 or before the keyring entry was replaced, e.g. the keyring was emptied by a \
                 reboot)"
            }
            Some(store_key::Origin::Env) => {
                "it was sealed with another key than $TOKENLEASE_STORE_KEY"
            }
            _ => "it was sealed with another key",
        }
    } else if message.contains("stored in plaintext") {
        "it was written without a store key (plaintext mode), and this process has one"
    } else if message.contains("no encryption key is configured") {
        "it is encrypted, and this process has no store key"
    } else {
        message
    };
    format!("the stored token cannot be used: {why}")
}

/// Reports, once per manager, a stored record that cannot be used (on stderr, or in the
/// agent's log): the manager then fetches a token as if the store were empty. (A store that
/// cannot be reached is core's to report: its events and logs.)
struct StoreNotice {
    origin: Option<store_key::Origin>,
    shown: AtomicBool,
}

impl EventListener for StoreNotice {
    fn on_event(&self, key: &str, event: &Event) {
        let Event::StoreError {
            operation: "load",
            message,
        } = event
        else {
            return;
        };
        if !is_record_error(message) || self.shown.swap(true, Ordering::SeqCst) {
            return;
        }
        let text = format!(
            "{}; the store is treated as empty: a new token is fetched and replaces it",
            unreadable_record(message, self.origin)
        );
        if SERVING.load(Ordering::SeqCst) {
            tracing::warn!(key, "{text}");
        } else {
            eprintln!("tokenlease: {text}");
        }
    }
}

/// `tokenlease status`: what the store holds (read now, never fetched) and where the
/// default store's key comes from; never the token, never the key.
fn status(setup: &Setup) -> serde_json::Value {
    let stored = stored_record(setup);
    let record = stored.as_ref().ok().and_then(Option::as_ref);
    let state = record.map_or(TokenState::Empty, |record| {
        stored_state(record, setup.manager.policy())
    });
    let mut shown = serde_json::json!({
        "key": setup.manager.key(),
        "state": format!("{state:?}"),
        "expires_at": record.map(|record| rfc3339(record.expires_at())),
        "has_refresh_token": record.map(|record| record.refresh_token.is_some()),
        "store_key": setup.store_key.map_or("configuration", |found| found.origin.name()),
    });
    if let Some(found) = setup.store_key {
        shown["store_key_detail"] = found.detail.clone().into();
        if let Some(entry) = &found.entry {
            shown["keyring_entry"] = entry.clone().into();
        }
    }
    if let Err(err) = &stored {
        let text = if is_record_error(err.message()) {
            format!(
                "{}; the next token request treats the store as empty and replaces it",
                unreadable_record(err.message(), setup.store_key.map(|found| found.origin))
            )
        } else {
            format!("the store cannot be read: {}", err.message())
        };
        eprintln!("tokenlease: {text}");
        shown["store_error"] = text.into();
    }
    shown
}

/// The record the store holds for the manager's key (bounded by the policy's store timeout).
fn stored_record(setup: &Setup) -> tokenlease::Result<Option<TokenRecord>> {
    let store = setup.store.open()?;
    let key = setup.manager.key().to_owned();
    let limit = setup.manager.policy().store_timeout();
    tokenlease::runtime::handle().block_on(async move {
        match tokio::time::timeout(limit, store.load(&key)).await {
            Ok(loaded) => loaded,
            Err(_) => Err(Error::new(
                ErrorKind::Store,
                "the store did not answer in time",
            )),
        }
    })
}

/// A stored token's state now, by the manager's windows (without jitter).
fn stored_state(record: &TokenRecord, policy: &tokenlease::Policy) -> TokenState {
    let lifetime = record
        .expires_at()
        .duration_since(record.obtained_at())
        .unwrap_or_default();
    match record.expires_at().duration_since(SystemTime::now()) {
        Err(_) => TokenState::Expired,
        Ok(left) if left <= policy.mandatory_window(lifetime) => TokenState::Mandatory,
        Ok(left) if left <= policy.advisory_window(lifetime) => TokenState::Stale,
        Ok(_) => TokenState::Fresh,
    }
}

/// `NAME=FILE` of `serve --credential`.
fn parse_credential(text: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = text
        .split_once('=')
        .ok_or_else(|| "give NAME=CONFIG_FILE".to_owned())?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(format!(
            "{name:?}: a credential name is letters, digits, '-', '_', '.'"
        ));
    }
    Ok((name.to_owned(), PathBuf::from(file)))
}

/// `$TOKENLEASE_CACHE_DIR`, else `$XDG_CACHE_HOME/tokenlease`, else `~/.cache/tokenlease`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOKENLEASE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tokenlease")
}

/// Runs `work`; on a terminal, says what it waits for when that takes over a second.
fn with_progress<T>(what: &str, work: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let what = what.to_owned();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            if !done.load(Ordering::SeqCst) {
                eprintln!("tokenlease: {what}...");
            }
        })
    };
    let result = work();
    done.store(true, Ordering::SeqCst);
    drop(watcher);
    result
}

fn print_token(manager: &Manager, token: &Token, format: Format) -> tokenlease::Result<()> {
    let expires_at = rfc3339(token.expires_at_wall());
    let text = match format {
        Format::Raw => token.value().expose().to_owned(),
        Format::Json => serde_json::json!({
            "access_token": token.value().expose(),
            "token_type": token.token_type(),
            "expires_at": expires_at,
            "expires_in": token
                .expires_at_wall()
                .duration_since(SystemTime::now())
                .map_or(0, |left| left.as_secs()),
        })
        .to_string(),
        Format::Header => {
            let (name, value) = manager
                .request_header(token.value(), token.token_type())?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Usage,
                        "this configuration sends the token in the request body, not a header",
                    )
                })?;
            format!("{name}: {}", value.expose())
        }
        Format::K8sExecCredential => serde_json::json!({
            "apiVersion": "client.authentication.k8s.io/v1",
            "kind": "ExecCredential",
            "status": {"token": token.value().expose(), "expirationTimestamp": expires_at},
        })
        .to_string(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|err| {
            Error::new(
                ErrorKind::Usage,
                format!("cannot write the token: {}", err.kind()),
            )
        })
}

/// git's credential helper protocol: `get` answers `username`/`password`; `erase` (git
/// says the server refused them) replaces the token now when it is the one git used;
/// `store` has nothing to do (the manager persists tokens itself).
fn git_credential(
    common: &Common,
    username: &str,
    operation: &str,
) -> tokenlease::Result<ExitCode> {
    let mut attributes = std::collections::BTreeMap::new();
    for line in std::io::stdin().lock().lines().take(256) {
        let line = line.map_err(|err| {
            Error::new(
                ErrorKind::Usage,
                format!("cannot read git's request: {}", err.kind()),
            )
        })?;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once('=') {
            attributes.insert(name.to_owned(), value.to_owned());
        }
    }
    match operation {
        "get" => {
            let Setup { manager, .. } = manager(common)?;
            let token = manager.token_blocking()?;
            let mut out = std::io::stdout().lock();
            let written = writeln!(out, "username={username}")
                .and_then(|()| writeln!(out, "password={}", token.value().expose()))
                .and_then(|()| out.flush());
            written.map_err(|err| {
                Error::new(
                    ErrorKind::Usage,
                    format!("cannot answer git: {}", err.kind()),
                )
            })?;
        }
        "erase" => {
            let Setup { manager, .. } = manager(common)?;
            let token = manager.token_blocking()?;
            let rejected = attributes
                .get("password")
                .is_some_and(|password| token.value().matches(password));
            if rejected {
                let token = token.into_arc();
                manager.invalidate(&token);
                manager.token_blocking()?;
            }
        }
        "store" => {}
        other => {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("git-credential: unknown operation {other:?} (get, store or erase)"),
            ))
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// RFC 3339 in UTC, whole seconds.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    tokenlease::session::format_rfc3339(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_stable_kinds() {
        assert_eq!(exit_status(ErrorKind::InvalidCredentials), 11);
        assert_eq!(exit_status(ErrorKind::LoginRequired), 26);
    }
}
