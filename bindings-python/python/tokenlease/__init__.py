"""tokenlease: one correct token lifecycle (fetch, cache, background refresh, retry on
expiry, persistence), written once in Rust.

    from tokenlease import Manager

    with Manager.from_config({"source": {...}}) as manager:
        headers = {"Authorization": f"Bearer {manager.token()}"}

Adapters: ``tokenlease.requests_auth.TokenleaseAuth`` (requests) and
``tokenlease.httpx_auth.TokenleaseHttpxAuth`` (httpx, sync and async).
"""

from ._errors import (
    ERROR_CLASSES,
    ClosedError,
    ConfigurationError,
    ExpiredError,
    InternalError,
    InvalidCredentialsError,
    InvalidGrantError,
    LoginRequiredError,
    ProtocolError,
    RateLimitedError,
    RevokedError,
    StoreError,
    TokenCancelledError,
    TokenleaseError,
    TokenRejectedError,
    TokenTimeoutError,
    TransientError,
    UsageError,
)
from ._manager import (
    LOGGER_NAME,
    DeviceLogin,
    EventListener,
    FetchedToken,
    LoginRequest,
    LoginResult,
    Manager,
    Source,
    Status,
    Store,
    TokenInfo,
    flush_events,
    is_token_rejected,
)
from ._native import __version__

__all__ = [
    "__version__",
    "Manager",
    "LoginRequest",
    "DeviceLogin",
    "LoginResult",
    "TokenInfo",
    "Status",
    "FetchedToken",
    "Source",
    "Store",
    "EventListener",
    "LOGGER_NAME",
    "flush_events",
    "is_token_rejected",
    "ERROR_CLASSES",
    "TokenleaseError",
    "InvalidCredentialsError",
    "InvalidGrantError",
    "RevokedError",
    "ExpiredError",
    "TransientError",
    "RateLimitedError",
    "TokenTimeoutError",
    "ConfigurationError",
    "StoreError",
    "ClosedError",
    "TokenRejectedError",
    "ProtocolError",
    "UsageError",
    "InternalError",
    "TokenCancelledError",
    "LoginRequiredError",
]
