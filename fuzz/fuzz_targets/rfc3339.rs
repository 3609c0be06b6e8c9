//! `tokenlease::session::parse_rfc3339` on arbitrary text, and against an independent
//! calendar (`httpdate`) on generated timestamps.
//!
//! The first byte picks the mode: even — the rest is the text; odd — the rest gives a
//! time (8 bytes seconds, 4 bytes nanoseconds, 2 bytes UTC offset in minutes, 1 byte
//! fraction digits and separators) that is formatted as RFC 3339 and must parse back to
//! exactly that instant (truncated to the digits written).
//!
//! Properties: no panic (in particular no arithmetic overflow on huge fields); surrounding
//! whitespace changes nothing; generated timestamps round-trip exactly.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tokenlease::session::parse_rfc3339;

/// Seconds at 9999-12-31T23:59:59Z, httpdate's last representable second.
const MAX_SECONDS: u64 = 253_402_300_799;

/// `YYYY-MM-DD` and `hh:mm:ss` of a UTC instant, via httpdate's IMF-fixdate.
fn civil(seconds: u64) -> (String, String) {
    let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(seconds));
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts: Vec<&str> = text.split(' ').collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])
    .unwrap()
        + 1;
    (
        format!("{}-{month:02}-{}", parts[3], parts[1]),
        parts[4].to_owned(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let parsed = parse_rfc3339(text);
        assert_eq!(parse_rfc3339(&format!(" \t{text}\n ")), parsed);
        return;
    }
    if rest.len() < 15 {
        return;
    }
    let seconds = u64::from_le_bytes(rest[..8].try_into().unwrap()) % (MAX_SECONDS + 1);
    let nanos = u32::from_le_bytes(rest[8..12].try_into().unwrap()) % 1_000_000_000;
    let offset_minutes = i64::from(i16::from_le_bytes([rest[12], rest[13]])) % (24 * 60);
    let flags = rest[14];
    let digits = usize::from(flags % 10);
    let separator = ['T', 't', ' '][usize::from(flags / 10 % 3)];
    let zulu = ['Z', 'z'][usize::from(flags / 30 % 2)];

    // The local wall-clock time at that offset must itself be a representable instant.
    let Some(local) = seconds
        .checked_add_signed(offset_minutes * 60)
        .filter(|&local| local <= MAX_SECONDS)
    else {
        return;
    };
    let (date, clock) = civil(local);
    let fraction = format!("{nanos:09}")[..digits].to_owned();
    let kept_nanos = if digits == 0 {
        0
    } else {
        format!("{fraction:0<9}").parse::<u32>().unwrap()
    };
    let fraction = if digits == 0 {
        String::new()
    } else {
        format!(".{fraction}")
    };
    let zone = if offset_minutes == 0 {
        zulu.to_string()
    } else {
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let abs = offset_minutes.unsigned_abs();
        format!("{sign}{:02}:{:02}", abs / 60, abs % 60)
    };
    let text = format!("{date}{separator}{clock}{fraction}{zone}");
    let expected = UNIX_EPOCH + Duration::new(seconds, kept_nanos);
    assert_eq!(parse_rfc3339(&text), Some(expected), "{text}");
});
