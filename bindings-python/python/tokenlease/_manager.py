"""The public ``Manager`` (a native class) and the Python pieces around it.

Refresh, retry, caching and scheduling all happen in the Rust core, on its one background
runtime. ``Manager`` itself is native (``tokenlease._native.Manager``, shown as
``tokenlease.Manager``), so reading a cached token costs one native call; this module holds
the dataclasses and protocols of the API and the few functions the native class calls for
what is simpler in Python (event logging, datetimes, the coroutines of ``token_async``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Tuple,
    Union,
    runtime_checkable,
)

from . import _errors  # noqa: F401  (registers the exception classes with the native module)
from . import _native
from ._native import DeviceLogin, LoginRequest, Manager

__all__ = [
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
]

#: Events are logged under this logger (never with a token value).
LOGGER_NAME = "tokenlease"
_logger = logging.getLogger(LOGGER_NAME)

atexit.register(_native._shutdown)


def _utc(seconds: Optional[float]) -> Optional[datetime]:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


@dataclass(frozen=True)
class FetchedToken:
    """What a Python ``Source.fetch()`` returns (a dict with the same keys works too).

    ``expires_in`` is seconds from the moment ``fetch()`` was called; ``expires_at`` an
    aware datetime; with neither, the policy's default lifetime applies. ``id_token`` is an
    OpenID Connect ID token, kept opaque (``TokenInfo.id_token``).
    """

    value: str = field(repr=False)
    expires_in: Optional[float] = None
    token_type: str = "Bearer"
    refresh_token: Optional[str] = field(default=None, repr=False)
    scopes: Optional[List[str]] = None
    expires_at: Optional[datetime] = None
    id_token: Optional[str] = field(default=None, repr=False)


@dataclass(frozen=True)
class TokenInfo:
    """A token and what is known about it. ``repr()`` never shows the value or the ID token.

    ``id_token`` is the OpenID Connect ID token of a user login (opaque: verify it before
    trusting what it says), else ``None``. ``attributes`` are other values the login response
    carried (a session profile's ``values``, e.g. Zuora's ``server_url``); not secrets.
    """

    value: str = field(repr=False)
    token_type: str
    expires_at: datetime
    generation: int
    id_token: Optional[str] = field(default=None, repr=False)
    attributes: Dict[str, str] = field(default_factory=dict, hash=False)

    def authorization(self) -> str:
        """The ``Authorization`` header value of a bearer token (``"Bearer <token>"``).

        What a request should carry is the configuration's call (a session header, a cookie,
        the request body): ask ``Manager.request_header`` / ``Manager.authorize_body``, as
        the requests and httpx adapters do."""
        scheme = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        return f"{scheme} {self.value}"

    def __str__(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class Status:
    """A snapshot of a manager."""

    state: str
    generation: int
    expires_at: Optional[datetime]
    last_refresh: Optional[datetime]
    last_error_kind: Optional[str]
    last_error_message: Optional[str]
    refreshing: bool
    counters: Dict[str, int]


FetchResult = Union[FetchedToken, Mapping[str, Any], str]

#: What ``Manager.login`` / ``Manager.seed`` take: a login result in the shape a source's
#: ``fetch()`` returns (usually a ``FetchedToken`` with ``refresh_token`` and ``expires_in``).
LoginResult = FetchResult


@runtime_checkable
class Source(Protocol):
    """A Python token source. ``fetch`` may be ``def`` or ``async def``.

    Optional methods: ``refresh(refresh_token: str)`` and ``revoke(token_value: str)``.
    Called on tokenlease's blocking pool (never concurrently for one manager), with the
    GIL taken only for the call. Raise a tokenlease exception to choose the error kind.
    """

    def fetch(self) -> Any: ...


@runtime_checkable
class Store(Protocol):
    """A Python token store; records are opaque JSON strings (they contain secrets)."""

    def load(self, key: str) -> Optional[str]: ...

    def save(self, key: str, record: str) -> None: ...

    def delete(self, key: str) -> None: ...


EventListener = Callable[[Dict[str, Any]], None]

_LEVELS = {
    "refresh_failed": logging.WARNING,
    "store_error": logging.WARNING,
    "expired": logging.WARNING,
    "served_stale": logging.INFO,
    "revoked": logging.INFO,
    "invalidated": logging.INFO,
}


def _event_handler(listener: Optional[EventListener]) -> Callable[[str, Dict[str, Any]], None]:
    def on_event(key: str, event: Dict[str, Any]) -> None:
        event["key"] = key
        for name in ("expires_at", "next_retry_at"):
            if name in event:
                event[name] = _utc(event[name])
        level = _LEVELS.get(event["type"], logging.DEBUG)
        if _logger.isEnabledFor(level):
            details = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("type", "key"))
            _logger.log(
                level,
                "tokenlease %s key=%s %s",
                event["type"],
                key,
                details,
                extra={"tokenlease_event": dict(event)},
            )
        if listener is not None:
            try:
                listener(event)
            except Exception:
                # A listener bug must not disturb the manager; report it like logging does.
                _logger.exception("tokenlease event listener raised (event %s)", event["type"])

    return on_event


def _info(raw: Tuple[str, str, float, int, Optional[str], Dict[str, str]]) -> TokenInfo:
    value, token_type, expires_at, generation, id_token, attributes = raw
    return TokenInfo(
        value,
        token_type,
        datetime.fromtimestamp(expires_at, tz=timezone.utc),
        generation,
        id_token,
        attributes,
    )


# ``Manager`` is the native class (``tokenlease._native``, shown as ``tokenlease.Manager``),
# so a cached ``token()`` is one native call with no Python frame in between. The functions
# below are what stays in Python; the native class calls them (never on the cached path).


def _status(raw: Dict[str, Any]) -> Status:
    return Status(
        state=raw["state"],
        generation=raw["generation"],
        expires_at=_utc(raw["expires_at"]),
        last_refresh=_utc(raw["last_refresh"]),
        last_error_kind=raw["last_error_kind"],
        last_error_message=raw["last_error_message"],
        refreshing=raw["refreshing"],
        counters=dict(raw["counters"]),
    )


async def _token_async(manager: Manager) -> str:
    value = manager._cached_token()
    if value is not None:
        return value
    result: str = await _await_native(manager, False)
    return result


async def _token_info_async(manager: Manager) -> TokenInfo:
    raw = manager._cached_token_info()
    if raw is not None:
        return _info(raw)
    return _info(await _await_native(manager, True))


async def _await_native(manager: Manager, info: bool) -> Any:
    return await _await_call(lambda deliver: manager._token_start(deliver, info))


async def _await_call(start: Callable[[Callable[[Any, Optional[BaseException]], None]], Any]) -> Any:
    """Starts a native call with ``start(deliver)`` (which returns its ``AsyncCall``) and
    waits for ``deliver(value, error)``; cancelling the task cancels the native call."""
    loop = asyncio.get_running_loop()
    future: "asyncio.Future[Any]" = loop.create_future()

    def settle(value: Any, error: Optional[BaseException]) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def deliver(value: Any, error: Optional[BaseException]) -> None:
        # Runs on tokenlease's dispatcher thread (completions).
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:
            pass  # the loop is closed; nobody is waiting any more

    call = start(deliver)
    try:
        return await future
    except asyncio.CancelledError:
        # Stop waiting; a shared refresh (if any) carries on for everyone else, a device
        # login stops polling.
        call.cancel()
        raise


async def _begin_login_async(manager: Manager, redirect_uri: str) -> LoginRequest:
    result: LoginRequest = await _await_call(
        lambda deliver: manager._login_start(deliver, "begin_login", redirect_uri)
    )
    return result


async def _complete_login_async(
    manager: Manager, request: LoginRequest, redirect_url: str
) -> TokenInfo:
    return _info(
        await _await_call(
            lambda deliver: manager._login_start(deliver, "complete_login", request, redirect_url)
        )
    )


async def _start_device_login_async(manager: Manager) -> DeviceLogin:
    result: DeviceLogin = await _await_call(
        lambda deliver: manager._login_start(deliver, "start_device_login")
    )
    return result


async def _complete_device_login_async(manager: Manager, device: DeviceLogin) -> TokenInfo:
    return _info(
        await _await_call(
            lambda deliver: manager._login_start(deliver, "complete_device_login", device)
        )
    )


async def _login_async(manager: Manager, result: LoginResult) -> TokenInfo:
    return _info(await _await_call(lambda deliver: manager._login_start(deliver, "login", result)))


async def _seed_async(
    manager: Manager, result: LoginResult, issued_at: Optional[datetime]
) -> TokenInfo:
    return _info(
        await _await_call(
            lambda deliver: manager._login_start(deliver, "seed", result, issued_at)
        )
    )


async def _session_info_async(manager: Manager) -> str:
    result: str = await _await_call(lambda deliver: manager._login_start(deliver, "session_info"))
    return result


async def _aenter(manager: Manager) -> Manager:
    return manager


async def _aexit(manager: Manager) -> None:
    manager.close()


def flush_events() -> None:
    """Waits until every event queued so far reached listeners and the log (for tests)."""
    _native.flush_events()


def is_token_rejected(status: int, www_authenticate: Optional[str] = None) -> bool:
    """Core's decision whether a resource server's response rejects the token."""
    return _native.is_token_rejected(status, www_authenticate)
