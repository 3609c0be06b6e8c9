//! `tokenlease`: a usable token for shell scripts, `curl`, `kubectl` and `git`, from the same
//! configuration file every binding reads. Invocations share tokens through a store (an
//! encrypted file store under the user's cache directory unless the configuration names
//! another), so a loop of invocations makes no token request while the token is valid and
//! concurrent cold invocations make one (the store's lease).
//!
//! Exit status: 0 on success; 10 + the stable error kind number on a token error (11
//! `invalid_credentials` ... 26 `login_required`, see `tokenlease --help`); 2 for a usage
//! error; for `exec`, the command's own status. Messages go to stderr and never contain a
//! token or secret.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};

mod serve;
use tokenlease::config::{ManagerConfig, SecretValue, StoreConfig};
use tokenlease::{Error, ErrorKind, Manager, Token};

/// The environment variable holding the default store's key (base64 of 32 bytes).
const STORE_KEY_ENV: &str = "TOKENLEASE_STORE_KEY";

const EXIT_STATUS_HELP: &str = "\
Exit status: 0 success; 2 usage error; 10 + the error kind on failure:
  11 invalid_credentials  12 invalid_grant  13 rate_limited  14 transient  15 timeout
  16 store  17 token_rejected  18 configuration  19 expired  20 closed  21 refresh_failed
  22 protocol  23 usage  24 internal  25 cancelled  26 login_required
Tokens are shared through a store: the configuration's, else an encrypted file store under
$TOKENLEASE_CACHE_DIR (or $XDG_CACHE_HOME/tokenlease, ~/.cache/tokenlease)/cli-store keyed by
$TOKENLEASE_STORE_KEY (base64 of 32 bytes; without it refresh tokens are not written).";

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
    /// Prints what the store holds for the credential (JSON; never the token).
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Logs out: revokes the token at the server (when it can) and wipes the store.
    Revoke {
        #[command(flatten)]
        common: Common,
    },
    /// Logs a user in with the device flow: prints the code and the URL, waits.
    Login {
        #[command(flatten)]
        common: Common,
    },
    /// Runs a command with the token in an environment variable; exits with its status.
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
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tokenlease: {err}");
            ExitCode::from(exit_status(err.kind()))
        }
    }
}

/// 10 + the stable error kind number.
fn exit_status(kind: ErrorKind) -> u8 {
    u8::try_from(10 + kind.code()).unwrap_or(1)
}

fn run(cli: Cli) -> tokenlease::Result<ExitCode> {
    match cli.command {
        Command::Token { common, format } => {
            let manager = manager(&common)?;
            let token = with_progress("waiting for the token", || manager.token_blocking())?;
            print_token(&manager, &token, format)?;
        }
        Command::Status { common } => {
            let manager = manager(&common)?;
            // Only what is cached or stored: a status never fetches.
            let token = manager.cached();
            let status = manager.status();
            let shown = serde_json::json!({
                "key": manager.key(),
                "state": format!("{:?}", status.state),
                "expires_at": token.as_ref().map(|token| rfc3339(token.expires_at_wall())),
                "has_refresh_token": token.as_ref().map(|token| token.refresh_token().is_some()),
            });
            println!("{shown}");
        }
        Command::Revoke { common } => {
            let manager = manager(&common)?;
            // Adopt what the store holds first, so the server revokes that token.
            let _ = manager.token_blocking();
            manager.revoke_blocking()?;
        }
        Command::Login { common } => {
            let manager = manager(&common)?;
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
            let manager = manager(&common)?;
            let token = with_progress("waiting for the token", || manager.token_blocking())?;
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
            let agent = serve::Agent::new(
                &credentials,
                Box::new(|_path, text| manager_from_text(text, None)),
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

/// The manager the configuration describes, with the CLI's store: a process lives for one
/// call, so a memory store would share nothing; it becomes the default file store.
fn manager(common: &Common) -> tokenlease::Result<Manager> {
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
    manager_from_text(&text, common.key.as_deref())
}

/// The manager a configuration text describes, with the CLI's default store.
fn manager_from_text(text: &str, key: Option<&str>) -> tokenlease::Result<Manager> {
    let mut config = ManagerConfig::parse(text)?;
    if let Some(key) = key {
        config.key = Some(key.to_owned());
    }
    if matches!(config.store, StoreConfig::Memory) {
        let dir = cache_dir().join("cli-store");
        let encryption_key = std::env::var_os(STORE_KEY_ENV).map(|_| SecretValue::Env {
            env: STORE_KEY_ENV.to_owned(),
        });
        if encryption_key.is_none() && std::io::stderr().is_terminal() {
            eprintln!(
                "tokenlease: {STORE_KEY_ENV} is not set: tokens are kept in {} without their \
                 refresh tokens (set it to a base64 32-byte key to keep them, encrypted)",
                dir.display()
            );
        }
        config.store = StoreConfig::File {
            dir: dir.to_string_lossy().into_owned(),
            encryption_key,
        };
    }
    config.build()
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
            let manager = manager(common)?;
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
            let manager = manager(common)?;
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
