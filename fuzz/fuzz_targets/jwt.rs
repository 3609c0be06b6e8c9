//! `tokenlease::http::jwt_expiry` and `cross_check_jwt_expiry` on arbitrary tokens.
//!
//! The first byte picks the mode: 0 — the rest is the token as text; 1 — the rest is the
//! JWT payload (base64url-encoded into `header.payload.signature`), to reach the claims
//! parser; 2 — the rest gives an `exp` (8 bytes, f64) and a subject, and the result is
//! compared with the expected expiry exactly.
//!
//! Properties: no panic; `exp` is only accepted when finite, positive and below 1e11;
//! the cross-check never lengthens `expires_in`, never yields a zero lifetime, equals
//! `exp − Date − 1 s` against a server clock, and leaves non-JWT tokens alone.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use tokenlease::http::{cross_check_jwt_expiry, jwt_expiry};
use tokenlease::{FetchedToken, Lifetime};

const HEADER: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";

fn check(token: &str) -> Option<SystemTime> {
    let exp = jwt_expiry(token);
    if let Some(exp) = exp {
        let since = exp.duration_since(UNIX_EPOCH).unwrap();
        assert!(since < Duration::from_secs(100_000_000_000), "{since:?}");
    }
    let expires_in = Duration::from_secs(3600);
    let server_now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for now in [Some(server_now), None] {
        let checked = cross_check_jwt_expiry(FetchedToken::bearer(token, expires_in), now);
        assert_eq!(checked.value.expose(), token);
        let Lifetime::ExpiresIn(lifetime) = checked.lifetime else {
            panic!("cross-check gave {:?}", checked.lifetime);
        };
        match (exp, now) {
            (None, _) => assert_eq!(lifetime, expires_in),
            (Some(exp), Some(now)) => {
                let by_exp = exp
                    .duration_since(now)
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_secs(1));
                let expected = expires_in.min(by_exp).max(Duration::from_nanos(1));
                assert_eq!(lifetime, expected);
            }
            (Some(_), None) => assert!(!lifetime.is_zero() && lifetime <= expires_in),
        }
    }
    exp
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                check(token);
            }
        }
        1 => {
            let token = format!("{HEADER}.{}.c2ln", URL_SAFE_NO_PAD.encode(rest));
            check(&token);
        }
        _ => {
            if rest.len() < 8 {
                return;
            }
            let (exp_bytes, subject) = rest.split_at(8);
            let exp = f64::from_le_bytes(exp_bytes.try_into().unwrap());
            let subject = String::from_utf8_lossy(subject);
            // Non-finite numbers serialise as null: no exp.
            let claims = serde_json::json!({ "sub": subject, "exp": exp });
            let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
            // serde_json may round a float it parses by one ULP (it has no float_roundtrip
            // feature here): expect what serde_json reads back, not `exp` itself.
            let exp = if exp.is_finite() {
                serde_json::from_str::<f64>(&serde_json::to_string(&exp).unwrap()).unwrap()
            } else {
                exp
            };
            let expected =
                (exp.is_finite() && exp > 0.0 && exp < 1e11 && payload.len() <= 64 * 1024)
                    .then(|| UNIX_EPOCH + Duration::from_secs_f64(exp));
            assert_eq!(check(&format!("{HEADER}.{payload}.c2ln")), expected);
            // Padded payloads are accepted too.
            let padded = base64::engine::general_purpose::URL_SAFE
                .encode(serde_json::to_vec(&claims).unwrap());
            assert_eq!(check(&format!("{HEADER}.{padded}.c2ln")), expected);
            // Two or four parts are not a JWT.
            assert_eq!(jwt_expiry(&format!("{HEADER}.{payload}")), None);
            assert_eq!(jwt_expiry(&format!("{HEADER}.{payload}.c2ln.x")), None);
        }
    }
});
