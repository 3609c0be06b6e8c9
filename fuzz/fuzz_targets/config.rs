//! `tokenlease::config::ManagerConfig::{parse, from_json, from_toml}` on arbitrary text,
//! then `PolicyConfig::to_policy` and the policy's window/backoff arithmetic (pure: nothing
//! is built — `ManagerConfig::build` would create HTTP clients).
//!
//! Properties: no panic; `parse` agrees with the parser it dispatches to; every error is a
//! `Configuration` error that keeps only serde's structural messages (field and variant
//! names, never a value); a parsed config's Debug never shows an inline secret; a policy
//! that builds never panics when used.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokenlease::config::{GrantConfig, ManagerConfig, SecretValue, SourceConfig, StoreConfig};
use tokenlease::ErrorKind;

const DETAILS: [&str; 3] = [
    "not valid JSON/TOML syntax",
    "invalid type or value",
    "trailing characters after the JSON document",
];
const STRUCTURAL: [&str; 5] = [
    ": unknown field",
    ": missing field",
    ": unknown variant",
    ": duplicate field",
    ": give `env` or `file`",
];

fn check_error(err: &tokenlease::Error, text: &str) {
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    let message = err.message();
    assert!(message.starts_with("config"), "{message:?}");
    assert!(
        DETAILS.iter().any(|d| message.ends_with(d))
            || STRUCTURAL.iter().any(|s| message.contains(s)),
        "unexpected message {message:?}"
    );
    // Serde's "invalid type: string \"...\"" / "invalid value" details are never kept (the
    // path may still echo a key of the input that happens to contain those words).
    for detail in ["invalid type:", "invalid value:", "invalid length"] {
        let word = detail.trim_end_matches(':');
        assert!(
            !message.contains(detail) || text.contains(word),
            "{message:?}"
        );
    }
}

fn inline_secrets(config: &ManagerConfig) -> Vec<&str> {
    fn inline(value: Option<&SecretValue>) -> Option<&str> {
        match value {
            Some(SecretValue::Inline(secret)) => Some(secret.expose()),
            _ => None,
        }
    }
    let mut out: Vec<&str> = Vec::new();
    let mut push = |value| out.extend(inline(value));
    match &config.source {
        SourceConfig::Oauth2(oauth2) => {
            push(oauth2.client_secret.as_ref());
            match &oauth2.grant {
                GrantConfig::Password { password, .. } => push(Some(password)),
                GrantConfig::TokenExchange { subject_token, .. } => push(Some(subject_token)),
                _ => {}
            }
        }
        SourceConfig::SessionLogin { credentials, .. } => {
            credentials.values().for_each(|value| push(Some(value)))
        }
        #[allow(unreachable_patterns)]
        _ => {}
    }
    #[allow(irrefutable_let_patterns)]
    if let StoreConfig::File { encryption_key, .. } = &config.store {
        push(encryption_key.as_ref());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let json = ManagerConfig::from_json(text);
    let toml = ManagerConfig::from_toml(text);
    let parsed = ManagerConfig::parse(text);
    let direct = if text.trim_start().starts_with('{') {
        &json
    } else {
        &toml
    };
    match (&parsed, direct) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parse and its parser disagree"),
    }
    for result in [&json, &toml] {
        match result {
            Err(err) => check_error(err, text),
            Ok(config) => {
                // An inline secret occurring once in the text is nowhere else in the config.
                let debug = format!("{config:?}");
                for secret in inline_secrets(config) {
                    if secret.len() >= 8 && text.matches(secret).count() == 1 {
                        assert!(!debug.contains(secret), "Debug shows an inline secret");
                    }
                }
                match config.policy.to_policy() {
                    Err(err) => {
                        assert_eq!(err.kind(), ErrorKind::Configuration);
                        assert!(err.message().starts_with("policy."), "{err}");
                    }
                    Ok(policy) => {
                        for lifetime in [0, 1, 59, 900, 86_400, 1 << 40] {
                            let lifetime = Duration::from_secs(lifetime);
                            let advisory = policy.advisory_window(lifetime);
                            let mandatory = policy.mandatory_window(lifetime);
                            assert!(advisory <= lifetime && mandatory <= advisory);
                        }
                        for failures in [0, 1, 2, 31, 32, u32::MAX] {
                            for retry_after in [None, Some(Duration::from_secs(3600))] {
                                let delay = policy.backoff_with(failures, retry_after, 1.0);
                                assert!(
                                    delay
                                        <= policy
                                            .backoff_ceiling(failures)
                                            .max(retry_after.unwrap_or_default())
                                );
                            }
                        }
                    }
                }
            }
        }
    }
});
