"""Exceptions: ``TokenleaseError`` and one real subclass per core error kind.

Every exception carries ``kind`` (the stable name, e.g. ``"invalid_credentials"``) and
``code`` (the stable number shared by every language binding). Messages never contain a
token value or a secret. When the failure started in Python code (a source or store that
raised), that exception is the ``__cause__``.

Raise these from a Python source or store to choose the kind of the failure: e.g.
``raise TransientError("upstream busy")`` is retried with backoff, while
``raise InvalidCredentialsError("bad password")`` surfaces to callers at once.
Other exceptions raised by a source map to ``TokenTimeoutError`` (``TimeoutError``),
``TransientError`` (``ConnectionError`` and other ``OSError``) or ``InternalError``
(anything else: a bug in the callback is not retried as if the server were down).
A store's other exceptions map to ``StoreError``.
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional, Type

from . import _native

__all__ = [
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
    "ERROR_CLASSES",
]


class TokenleaseError(Exception):
    """Base class of every tokenlease error."""

    kind: ClassVar[str] = "internal"
    code: ClassVar[int] = 14

    def __init__(self, message: str = "", retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        #: Seconds the server asked us to wait before retrying, when it said.
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, code={self.code}, message={self.message!r})"


class InvalidCredentialsError(TokenleaseError):
    """The client credentials were rejected (``invalid_client``, bad password). Terminal."""

    kind = "invalid_credentials"
    code = 1


class InvalidGrantError(TokenleaseError):
    """The grant (refresh token, authorization) is invalid or expired. Terminal."""

    kind = "invalid_grant"
    code = 2


class RevokedError(TokenleaseError):
    """The token or session was revoked. Terminal."""

    kind = "revoked"
    code = 3


class ExpiredError(TokenleaseError):
    """The cached token expired and no replacement could be obtained (see ``__cause__``)."""

    kind = "expired"
    code = 4


class TransientError(TokenleaseError):
    """A temporary failure (5xx, connection error). Retried with backoff."""

    kind = "transient"
    code = 5


class RateLimitedError(TokenleaseError):
    """The server asked us to slow down (429). ``retry_after`` says how long, if known."""

    kind = "rate_limited"
    code = 6


class TokenTimeoutError(TokenleaseError, TimeoutError):
    """A request, or a wait for the in-flight refresh, took too long. Also a ``TimeoutError``."""

    kind = "timeout"
    code = 7


class ConfigurationError(TokenleaseError, ValueError):
    """The configuration is invalid (names the field, never the value). Also a ``ValueError``."""

    kind = "configuration"
    code = 8


class StoreError(TokenleaseError):
    """The token store failed."""

    kind = "store"
    code = 9


class ClosedError(TokenleaseError):
    """The manager was closed."""

    kind = "closed"
    code = 10


class TokenRejectedError(TokenleaseError):
    """The resource server rejected the token (401 ``invalid_token``)."""

    kind = "token_rejected"
    code = 11


class ProtocolError(TokenleaseError):
    """The server answered something tokenlease could not understand."""

    kind = "protocol"
    code = 12


class UsageError(TokenleaseError):
    """The API was misused (e.g. a blocking call from inside a source or store callback)."""

    kind = "usage"
    code = 13


class InternalError(TokenleaseError):
    """A bug in tokenlease, or an unexpected exception in a Python callback."""

    kind = "internal"
    code = 14


class TokenCancelledError(TokenleaseError):
    """The operation was cancelled."""

    kind = "cancelled"
    code = 15


class LoginRequiredError(TokenleaseError):
    """The user must log in again: the refresh token of their login is dead. Show the
    login screen, then hand the new login to the manager."""

    kind = "login_required"
    code = 16


#: ``code -> class`` for every core error kind.
ERROR_CLASSES: Dict[int, Type[TokenleaseError]] = {
    cls.code: cls
    for cls in (
        InvalidCredentialsError,
        InvalidGrantError,
        RevokedError,
        ExpiredError,
        TransientError,
        RateLimitedError,
        TokenTimeoutError,
        ConfigurationError,
        StoreError,
        ClosedError,
        TokenRejectedError,
        ProtocolError,
        UsageError,
        InternalError,
        TokenCancelledError,
        LoginRequiredError,
    )
}

# The Rust side and this table must agree on every kind.
for _code, _name in _native.error_kinds():
    assert ERROR_CLASSES[_code].kind == _name, (_code, _name)
del _code, _name

_native._register_errors(TokenleaseError, ERROR_CLASSES)
