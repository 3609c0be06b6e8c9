"""Type stubs of the compiled module ``tokenlease._native``.

``Manager`` is public (re-exported as ``tokenlease.Manager``); everything else here is
internal: use ``tokenlease``.
"""

from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type, Union, final

from typing_extensions import disjoint_base

from ._errors import TokenleaseError
from ._manager import EventListener, Source, Status, Store, TokenInfo

__all__ = [
    "Manager",
    "AsyncCall",
    "_register_errors",
    "flush_events",
    "_shutdown",
    "is_token_rejected",
    "error_kinds",
    "__version__",
]

__version__: str

_TokenTuple = Tuple[str, str, float, int]

@final
class AsyncCall:
    def cancel(self) -> None: ...

@disjoint_base
class Manager:
    """Gets, caches and refreshes the token of one credential.

    Thread-safe; share one per credential. ``token()`` on a fresh token is a lock-free
    read; otherwise it waits (GIL released) for the single shared refresh.
    """

    def __new__(
        cls,
        source: Source,
        *,
        store: Optional[Store] = None,
        listener: Optional[EventListener] = None,
        key: str = "default",
        policy: Optional[Mapping[str, Any]] = None,
    ) -> Manager:
        """A manager around a Python ``source`` (and optional ``store``, ``listener``).

        ``policy`` takes the same fields as the ``policy`` section of the configuration
        (e.g. ``{"waiter_timeout_ms": 5000}``).
        """
    @classmethod
    def from_config(
        cls,
        config: Union[str, Mapping[str, Any]],
        *,
        listener: Optional[EventListener] = None,
    ) -> Manager:
        """A manager from the configuration every language uses (a dict, JSON or TOML)."""
    @property
    def key(self) -> str:
        """The store key of this manager."""
    def token(self) -> str:
        """A valid token value (waits, GIL released, for the shared refresh when needed)."""
    def token_info(self) -> TokenInfo:
        """The token with its type, expiry and generation."""
    async def token_async(self) -> str:
        """Like ``token()``, without ever blocking the event loop. Cancellable."""
    async def token_info_async(self) -> TokenInfo:
        """Like ``token_info()``, without ever blocking the event loop. Cancellable."""
    def invalidate(self, token: Union[str, int, TokenInfo]) -> bool:
        """Discards the cached token if it is still ``token`` (a value, a generation or a
        ``TokenInfo``). A late rejection of an older token never discards a newer one."""
    def revoke(self) -> None:
        """Logs out: revokes at the source, clears memory and store."""
    def status(self) -> Status:
        """State, expiry, generation, last error and counters."""
    def close(self) -> None:
        """Cancels background refreshes and drops the cached token; later calls raise
        ``ClosedError``."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def __enter__(self) -> Manager: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...
    async def __aenter__(self) -> Manager: ...
    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...
    # Internal, for tokenlease._manager (token_async).
    def _cached_token(self) -> Optional[str]: ...
    def _cached_token_info(self) -> Optional[_TokenTuple]: ...
    def _token_start(
        self, callback: Callable[[Any, Optional[BaseException]], None], info: bool = False
    ) -> AsyncCall: ...

def _register_errors(
    base: Type[TokenleaseError], classes: Dict[int, Type[TokenleaseError]]
) -> None: ...
def flush_events() -> None: ...
def _shutdown() -> None: ...
def is_token_rejected(status: int, www_authenticate: Optional[str] = None) -> bool: ...
def error_kinds() -> List[Tuple[int, str]]: ...
