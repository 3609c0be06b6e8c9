"""The public ``Manager``: a thin conversion layer over core's ``Manager``.

Refresh, retry, caching and scheduling all happen in the Rust core, on its one background
runtime; this module converts arguments, results, events and errors.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Tuple,
    Type,
    Union,
    runtime_checkable,
)

from . import _errors  # noqa: F401  (registers the exception classes with the native module)
from . import _native

__all__ = [
    "Manager",
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
    aware datetime; with neither, the policy's default lifetime applies.
    """

    value: str = field(repr=False)
    expires_in: Optional[float] = None
    token_type: str = "Bearer"
    refresh_token: Optional[str] = field(default=None, repr=False)
    scopes: Optional[List[str]] = None
    expires_at: Optional[datetime] = None


@dataclass(frozen=True)
class TokenInfo:
    """A token and what is known about it. ``repr()`` never shows the value."""

    value: str = field(repr=False)
    token_type: str
    expires_at: datetime
    generation: int

    def authorization(self) -> str:
        """The ``Authorization`` header value (``"Bearer <token>"``)."""
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


def _info(raw: Tuple[str, str, float, int]) -> TokenInfo:
    value, token_type, expires_at, generation = raw
    return TokenInfo(value, token_type, datetime.fromtimestamp(expires_at, tz=timezone.utc), generation)


class Manager:
    """Gets, caches and refreshes the token of one credential.

    Thread-safe; share one per credential. ``token()`` on a fresh token is a lock-free
    read; otherwise it waits (GIL released) for the single shared refresh.
    """

    __slots__ = ("_native", "__weakref__")

    def __init__(
        self,
        source: Source,
        *,
        store: Optional[Store] = None,
        listener: Optional[EventListener] = None,
        key: str = "default",
        policy: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """A manager around a Python ``source`` (and optional ``store``, ``listener``).

        ``policy`` takes the same fields as the ``policy`` section of the configuration
        (e.g. ``{"waiter_timeout_ms": 5000}``).
        """
        if not hasattr(source, "fetch"):
            raise TypeError("source must have a fetch() method")
        if store is not None and not all(hasattr(store, m) for m in ("load", "save", "delete")):
            raise TypeError("store must have load(), save() and delete() methods")
        policy_json = None if policy is None else json.dumps(dict(policy))
        self._native = _native.NativeManager.with_source(source, store, key, policy_json)
        self._native.add_listener(_event_handler(listener))

    @classmethod
    def from_config(
        cls,
        config: Union[str, Mapping[str, Any]],
        *,
        listener: Optional[EventListener] = None,
    ) -> "Manager":
        """A manager from the configuration every language uses (a dict, JSON or TOML)."""
        text = config if isinstance(config, str) else json.dumps(dict(config))
        self = cls.__new__(cls)
        self._native = _native.NativeManager.from_config(text)
        self._native.add_listener(_event_handler(listener))
        return self

    @property
    def key(self) -> str:
        """The store key of this manager."""
        return self._native.key

    def token(self) -> str:
        """A valid token value (waits, GIL released, for the shared refresh when needed)."""
        return self._native.token()

    def token_info(self) -> TokenInfo:
        """The token with its type, expiry and generation."""
        return _info(self._native.token_info())

    async def token_async(self) -> str:
        """Like ``token()``, without ever blocking the event loop. Cancellable."""
        value = self._native.cached_token()
        if value is not None:
            return value
        result: str = await self._await_native(False)
        return result

    async def token_info_async(self) -> TokenInfo:
        """Like ``token_info()``, without ever blocking the event loop. Cancellable."""
        raw = self._native.cached_token_info()
        if raw is not None:
            return _info(raw)
        return _info(await self._await_native(True))

    async def _await_native(self, info: bool) -> Any:
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

        call = self._native.token_start(deliver, info)
        try:
            return await future
        except asyncio.CancelledError:
            # Stop waiting; the shared refresh (if any) carries on for everyone else.
            call.cancel()
            raise

    def invalidate(self, token: Union[str, int, TokenInfo]) -> bool:
        """Discards the cached token if it is still ``token`` (a value, a generation or a
        ``TokenInfo``). A late rejection of an older token never discards a newer one."""
        if isinstance(token, TokenInfo):
            return self._native.invalidate_generation(token.generation)
        if isinstance(token, bool):
            raise TypeError("invalidate() takes a token value, a generation or a TokenInfo")
        if isinstance(token, int):
            return self._native.invalidate_generation(token)
        if isinstance(token, str):
            return self._native.invalidate_value(token)
        raise TypeError("invalidate() takes a token value, a generation or a TokenInfo")

    def revoke(self) -> None:
        """Logs out: revokes at the source, clears memory and store."""
        self._native.revoke()

    def status(self) -> Status:
        """State, expiry, generation, last error and counters."""
        raw = self._native.status()
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

    def close(self) -> None:
        """Cancels background refreshes and drops the cached token; later calls raise
        ``ClosedError``."""
        self._native.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._native.closed

    def __enter__(self) -> "Manager":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    async def __aenter__(self) -> "Manager":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Manager(key={self.key!r}, state={self._native.status()['state']!r})"


def flush_events() -> None:
    """Waits until every event queued so far reached listeners and the log (for tests)."""
    _native.flush_events()


def is_token_rejected(status: int, www_authenticate: Optional[str] = None) -> bool:
    """Core's decision whether a resource server's response rejects the token."""
    return _native.is_token_rejected(status, www_authenticate)
