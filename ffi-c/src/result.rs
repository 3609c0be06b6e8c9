//! The stable result codes: the `tl_result` type, at the bottom of the crate (it uses no
//! other module; `boundary` and every export use it). Its C functions are in `result_text`.

use std::ffi::CStr;

use tl_core::ErrorKind;

/// The result of a tokenlease C function. Stable numbers: never renumbered, only appended.
///
/// `TL_OK` is 0. Codes 1 to 15 are exactly tokenlease's error kinds (the same numbers in
/// every language binding). Codes from 100 up exist only in the C ABI (argument errors).
/// In C the type is a `uint32_t`; treat unknown values as errors.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum tl_result {
    /// Success.
    TL_OK = 0,
    /// The client credentials were rejected (`invalid_client`, bad password). Terminal.
    TL_INVALID_CREDENTIALS = 1,
    /// The grant (refresh token, authorization) is invalid or expired. Terminal.
    TL_INVALID_GRANT = 2,
    /// The token or session was revoked. Terminal.
    TL_REVOKED = 3,
    /// The cached token expired and no replacement could be obtained.
    TL_EXPIRED = 4,
    /// A temporary failure (5xx, connection error). Retried in the background with backoff.
    TL_TRANSIENT = 5,
    /// The server asked us to slow down (HTTP 429). Retried after Retry-After.
    TL_RATE_LIMITED = 6,
    /// A request, or a wait for the in-flight refresh, took too long.
    TL_TIMEOUT = 7,
    /// The configuration is invalid (unknown field, missing value, bad URL). Terminal.
    TL_CONFIGURATION = 8,
    /// The token store failed.
    TL_STORE = 9,
    /// The manager was closed.
    TL_CLOSED = 10,
    /// The resource server rejected the token.
    TL_TOKEN_REJECTED = 11,
    /// The server answered something tokenlease could not understand.
    TL_PROTOCOL = 12,
    /// The API was misused (e.g. a blocking call from inside a tokenlease callback).
    TL_USAGE = 13,
    /// A bug in tokenlease, a caught panic, or an unknown code returned by a callback.
    TL_INTERNAL = 14,
    /// The operation was cancelled.
    TL_CANCELLED = 15,
    /// The user must log in again (the refresh token of a user login is dead).
    TL_LOGIN_REQUIRED = 16,
    /// A required pointer argument was NULL.
    TL_NULL_ARGUMENT = 100,
    /// A text argument was not valid UTF-8.
    TL_INVALID_UTF8 = 101,
    /// The caller's buffer is too small; `*written` holds the needed size.
    TL_BUFFER_TOO_SMALL = 102,
    /// An argument had an invalid value (unknown code, empty token, malformed JSON).
    TL_INVALID_ARGUMENT = 103,
}

impl tl_result {
    const ALL: [tl_result; 21] = [
        tl_result::TL_OK,
        tl_result::TL_INVALID_CREDENTIALS,
        tl_result::TL_INVALID_GRANT,
        tl_result::TL_REVOKED,
        tl_result::TL_EXPIRED,
        tl_result::TL_TRANSIENT,
        tl_result::TL_RATE_LIMITED,
        tl_result::TL_TIMEOUT,
        tl_result::TL_CONFIGURATION,
        tl_result::TL_STORE,
        tl_result::TL_CLOSED,
        tl_result::TL_TOKEN_REJECTED,
        tl_result::TL_PROTOCOL,
        tl_result::TL_USAGE,
        tl_result::TL_INTERNAL,
        tl_result::TL_CANCELLED,
        tl_result::TL_LOGIN_REQUIRED,
        tl_result::TL_NULL_ARGUMENT,
        tl_result::TL_INVALID_UTF8,
        tl_result::TL_BUFFER_TOO_SMALL,
        tl_result::TL_INVALID_ARGUMENT,
    ];

    /// The code with this number, if it is one.
    pub(crate) fn from_code(code: u32) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|result| *result as u32 == code)
    }

    /// The code of a core error kind (same number); a kind added to core later and not yet
    /// known here becomes `TL_INTERNAL`.
    pub(crate) fn from_kind(kind: ErrorKind) -> Self {
        match Self::from_code(kind.code()) {
            Some(result) if (1..100).contains(&(result as u32)) => result,
            _ => tl_result::TL_INTERNAL,
        }
    }

    /// The core error kind of a code 1..=16.
    pub(crate) fn kind(self) -> Option<ErrorKind> {
        ErrorKind::from_code(self as u32)
    }

    pub(crate) fn name(self) -> &'static CStr {
        match self {
            tl_result::TL_OK => c"TL_OK",
            tl_result::TL_INVALID_CREDENTIALS => c"TL_INVALID_CREDENTIALS",
            tl_result::TL_INVALID_GRANT => c"TL_INVALID_GRANT",
            tl_result::TL_REVOKED => c"TL_REVOKED",
            tl_result::TL_EXPIRED => c"TL_EXPIRED",
            tl_result::TL_TRANSIENT => c"TL_TRANSIENT",
            tl_result::TL_RATE_LIMITED => c"TL_RATE_LIMITED",
            tl_result::TL_TIMEOUT => c"TL_TIMEOUT",
            tl_result::TL_CONFIGURATION => c"TL_CONFIGURATION",
            tl_result::TL_STORE => c"TL_STORE",
            tl_result::TL_CLOSED => c"TL_CLOSED",
            tl_result::TL_TOKEN_REJECTED => c"TL_TOKEN_REJECTED",
            tl_result::TL_PROTOCOL => c"TL_PROTOCOL",
            tl_result::TL_USAGE => c"TL_USAGE",
            tl_result::TL_INTERNAL => c"TL_INTERNAL",
            tl_result::TL_CANCELLED => c"TL_CANCELLED",
            tl_result::TL_LOGIN_REQUIRED => c"TL_LOGIN_REQUIRED",
            tl_result::TL_NULL_ARGUMENT => c"TL_NULL_ARGUMENT",
            tl_result::TL_INVALID_UTF8 => c"TL_INVALID_UTF8",
            tl_result::TL_BUFFER_TOO_SMALL => c"TL_BUFFER_TOO_SMALL",
            tl_result::TL_INVALID_ARGUMENT => c"TL_INVALID_ARGUMENT",
        }
    }

    pub(crate) fn description(self) -> &'static str {
        match self {
            tl_result::TL_OK => "success",
            tl_result::TL_INVALID_CREDENTIALS => "the client credentials were rejected",
            tl_result::TL_INVALID_GRANT => "the grant or refresh token is invalid or expired",
            tl_result::TL_REVOKED => "the token or session was revoked",
            tl_result::TL_EXPIRED => "the token expired and no replacement could be obtained",
            tl_result::TL_TRANSIENT => "a temporary failure; retried with backoff",
            tl_result::TL_RATE_LIMITED => "the server asked the client to slow down",
            tl_result::TL_TIMEOUT => "a request or a wait for the refresh took too long",
            tl_result::TL_CONFIGURATION => "the configuration is invalid",
            tl_result::TL_STORE => "the token store failed",
            tl_result::TL_CLOSED => "the token manager was closed",
            tl_result::TL_TOKEN_REJECTED => "the resource server rejected the token",
            tl_result::TL_PROTOCOL => "the server answered something unexpected",
            tl_result::TL_USAGE => "the API was misused",
            tl_result::TL_INTERNAL => "an internal error (a bug or a caught panic)",
            tl_result::TL_CANCELLED => "the operation was cancelled",
            tl_result::TL_LOGIN_REQUIRED => "the user must log in again",
            tl_result::TL_NULL_ARGUMENT => "a required pointer argument was NULL",
            tl_result::TL_INVALID_UTF8 => "a text argument was not valid UTF-8",
            tl_result::TL_BUFFER_TOO_SMALL => "the buffer is too small",
            tl_result::TL_INVALID_ARGUMENT => "an argument had an invalid value",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_mirror_core_error_kinds() {
        for kind in ErrorKind::ALL {
            let result = tl_result::from_kind(kind);
            assert_eq!(result as u32, kind.code());
            assert_eq!(result.kind(), Some(kind));
            let name = result.name().to_str().unwrap();
            assert_eq!(name, format!("TL_{}", kind.name().to_uppercase()));
        }
        assert_eq!(tl_result::from_code(17), None);
        assert_eq!(tl_result::from_code(100), Some(tl_result::TL_NULL_ARGUMENT));
        assert_eq!(tl_result::TL_NULL_ARGUMENT.kind(), None);
    }
}
