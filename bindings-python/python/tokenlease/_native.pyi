"""Type stubs of the compiled module ``tokenlease._native``.

``Manager``, ``LoginRequest`` and ``DeviceLogin`` are public (re-exported by ``tokenlease``);
everything else here is internal: use ``tokenlease``.
"""

from datetime import datetime
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    Union,
    final,
)

from typing_extensions import disjoint_base

from ._errors import TokenleaseError
from ._manager import EventListener, LoginResult, Source, Status, Store, TokenInfo

__all__ = [
    "Manager",
    "LoginRequest",
    "DeviceLogin",
    "AsyncCall",
    "_register_errors",
    "flush_events",
    "_shutdown",
    "is_token_rejected",
    "error_kinds",
    "MAX_JUDGED_BODY_BYTES",
    "__version__",
]

__version__: str

#: The largest response body prefix ``Manager.judge_response`` looks at (64 KiB).
MAX_JUDGED_BODY_BYTES: int

_TokenTuple = Tuple[str, str, float, int, Optional[str], Dict[str, str]]

@final
class AsyncCall:
    def cancel(self) -> None: ...

@final
class LoginRequest:
    """An interactive login in progress (authorization code with PKCE), from
    ``Manager.begin_login``: open ``url`` in the user's browser, then hand the URL the browser
    is sent back to (at ``redirect_uri``) to ``Manager.complete_login``.

    It holds the secret ``state`` and PKCE verifier; ``repr()`` shows neither (nor the URL,
    which carries the state).
    """

    @property
    def url(self) -> str:
        """The URL to open in the user's browser (it carries the ``state``: do not log it)."""
    @property
    def redirect_uri(self) -> str:
        """The redirect URI the request names (where the browser comes back)."""

@final
class DeviceLogin:
    """A device login in progress (RFC 8628), from ``Manager.start_device_login``: show the
    user ``verification_uri`` and ``user_code`` (or ``verification_uri_complete`` as a QR
    code), then wait with ``Manager.complete_device_login``. ``cancel()`` (from any thread)
    ends that wait with ``TokenCancelledError``.

    It holds the secret device code; ``repr()`` never shows it.
    """

    @property
    def user_code(self) -> str:
        """The code the user enters at ``verification_uri``."""
    @property
    def verification_uri(self) -> str:
        """Where the user goes to approve (on a phone or computer)."""
    @property
    def verification_uri_complete(self) -> Optional[str]:
        """The verification URI with the user code in it (for a QR code), or ``None``."""
    @property
    def expires_in(self) -> float:
        """Seconds the user has to approve, from ``start_device_login``."""
    @property
    def interval(self) -> float:
        """The polling interval the server asked for, in seconds."""
    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
    def cancel(self) -> None:
        """Stops the login: a ``complete_device_login`` waiting on it (or started later)
        raises ``TokenCancelledError``. Safe from any thread; never blocks."""

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
        clock: Optional[ManualClock] = None,
    ) -> Manager:
        """A manager from the configuration every language uses (a dict, JSON or TOML).

        ``clock``: a ``tokenlease.testing.ManualClock`` for tests (the system clock when
        omitted).
        """
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
    def request_header(self, token: TokenInfo) -> Optional[Tuple[str, str]]:
        """The header ``(name, value)`` that carries ``token`` on an API request, as this
        manager's configuration says: ``("Authorization", "Bearer …")``, a session's own
        header (``vmware-api-session-id``, with its prefix) or ``("Cookie", "NAME=…")``.
        ``None`` when the token travels only in the request body (``authorize_body``). The
        value contains the token: never log it."""
    def authorize_body(self, token: TokenInfo, body: Union[str, bytes, bytearray]) -> Optional[bytes]:
        """For a configuration that carries the token in request bodies (``"send": {"body":
        "{{session}}"}``, a SOAP ``SessionHeader``): ``body`` with the placeholder replaced
        by the XML-escaped token, as UTF-8 ``bytes``. ``None`` when the token does not travel
        in bodies: send ``body`` as it is. The result contains the token: never log it."""
    def needs_response_body(self, status: int) -> bool:
        """Whether a response with ``status`` needs (a prefix of) its body read before
        ``judge_response`` can tell whether it rejects the token. Successful responses never
        do."""
    def judge_response(
        self,
        generation: int,
        status: int,
        headers: Union[Mapping[str, str], Iterable[Tuple[str, str]], None] = None,
        body_prefix: Union[bytes, bytearray, None] = None,
    ) -> bool:
        """Judges the response to a request made with the token of ``generation``: ``True``
        when it rejects that token by this configuration's rules (the manager has then
        discarded exactly that token: get a token again and retry the request once);
        ``False`` otherwise (a sliding session's use is recorded). ``headers``: a mapping or
        ``(name, value)`` pairs (the first 256 are read); ``body_prefix``: the first bytes of
        the body when ``needs_response_body(status)`` (at most 64 KiB are looked at)."""
    def dpop_proof(self, token: TokenInfo, method: str, url: str) -> Optional[str]:
        """The DPoP proof (RFC 9449) for an API request ``method`` ``url`` with ``token`` when
        that token is bound to this manager's key (``token_type`` ``"DPoP"``, from a
        configuration with ``"dpop": true``): send it as the ``DPoP`` header next to
        ``request_header``'s ``Authorization: DPoP …``. A new proof (new ``jti``, the
        server's latest nonce) on every call. ``None`` for other tokens. The proof is a
        credential: never log it."""
    def dpop_resend(
        self,
        token_type: str,
        url: str,
        status: int,
        headers: Union[Mapping[str, str], Iterable[Tuple[str, str]], None] = None,
    ) -> bool:
        """After an API request made with a token of ``token_type`` to ``url`` was answered
        with ``status`` and ``headers``: keeps the ``DPoP-Nonce`` it carried, whatever the
        status, and returns whether to send the same request once more with a new proof (a
        DPoP-bound token's 401 that brought a new nonce). Core decides; the adapters only ask."""
    def remember_dpop_nonce(
        self,
        url: str,
        headers: Union[Mapping[str, str], Iterable[Tuple[str, str]], None] = None,
    ) -> bool:
        """Keeps the ``DPoP-Nonce`` a response from ``url`` carried (``headers``: a mapping or
        ``(name, value)`` pairs; the first 256 are read), for the next proofs to that origin.
        ``True`` when the nonce is new: a 401 that brings one is worth sending once more,
        with a new proof. ``False`` without one, for a known one, or for a manager without
        DPoP."""
    def session_info(self) -> str:
        """Asks the server about the current session (``session.info`` in the configuration,
        e.g. vSphere's ``GET /api/session``) and returns the response body.
        ``ConfigurationError`` without ``session.info``; ``TokenRejectedError`` when the
        server says the session ended (the manager has then discarded it)."""
    async def session_info_async(self) -> str:
        """Like ``session_info()``, without blocking the event loop. Cancellable."""
    def begin_login(self, redirect_uri: str) -> LoginRequest:
        """Starts an interactive login (authorization code with PKCE): a ``LoginRequest``
        whose ``url`` the app opens in the user's browser. ``redirect_uri`` must be
        registered for the client (``http://127.0.0.1:PORT/callback`` for desktop apps and
        CLIs). ``ConfigurationError`` when the source has no interactive login."""
    def complete_login(self, request: LoginRequest, redirect_url: str) -> TokenInfo:
        """Finishes an interactive login with the URL the browser was sent back to: checks its
        ``state``, redeems the code, stores the tokens and serves them from now on. Returns
        the new ``TokenInfo``. ``TokenCancelledError`` when the user said no,
        ``ProtocolError`` for a forged or foreign redirect."""
    def start_device_login(self) -> DeviceLogin:
        """Starts a device login (RFC 8628): a ``DeviceLogin`` with what to show the user;
        then wait with ``complete_device_login``."""
    def complete_device_login(self, device: DeviceLogin) -> TokenInfo:
        """Waits (GIL released; Ctrl-C interrupts it) until the user approved the device login,
        then stores the tokens and serves them from now on. Returns the new ``TokenInfo``.
        ``TokenCancelledError`` when the user denied it or ``device.cancel()`` was called;
        ``LoginRequiredError`` when the code expired."""
    def login(self, result: LoginResult) -> TokenInfo:
        """Installs the result of a new login the app did itself (e.g. through a platform SDK):
        a ``FetchedToken`` (or a mapping with its keys) with its refresh token. It replaces
        whatever the manager held. Returns the installed ``TokenInfo``."""
    def seed(self, result: LoginResult, issued_at: Optional[datetime] = None) -> TokenInfo:
        """Installs a login result kept from before, unless memory or the store already hold a
        token obtained at or after ``issued_at`` (a datetime; with ``None`` any stored token
        counts as newer): then that one is served and ``result`` is ignored, so a rotated
        refresh token is never rolled back. Returns the ``TokenInfo`` served from now on."""
    async def begin_login_async(self, redirect_uri: str) -> LoginRequest:
        """Like ``begin_login()``, without blocking the event loop. Cancellable."""
    async def complete_login_async(self, request: LoginRequest, redirect_url: str) -> TokenInfo:
        """Like ``complete_login()``, without blocking the event loop. Cancellable."""
    async def start_device_login_async(self) -> DeviceLogin:
        """Like ``start_device_login()``, without blocking the event loop. Cancellable."""
    async def complete_device_login_async(self, device: DeviceLogin) -> TokenInfo:
        """Like ``complete_device_login()``, without blocking the event loop. Cancelling the
        task stops the polling (as ``device.cancel()`` does, without cancelling ``device``)."""
    async def login_async(self, result: LoginResult) -> TokenInfo:
        """Like ``login()``, without blocking the event loop."""
    async def seed_async(
        self, result: LoginResult, issued_at: Optional[datetime] = None
    ) -> TokenInfo:
        """Like ``seed()``, without blocking the event loop."""
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
    # Internal, for tokenlease._manager (token_async and the asyncio login calls).
    def _cached_token(self) -> Optional[str]: ...
    def _cached_token_info(self) -> Optional[_TokenTuple]: ...
    def _token_start(
        self, callback: Callable[[Any, Optional[BaseException]], None], info: bool = False
    ) -> AsyncCall: ...
    def _login_start(
        self, callback: Callable[[Any, Optional[BaseException]], None], step: str, *args: Any
    ) -> AsyncCall: ...

def _register_errors(
    base: Type[TokenleaseError], classes: Dict[int, Type[TokenleaseError]]
) -> None: ...
@final
class ManualClock:
    """A clock that moves only when ``advance`` is called (``tokenlease.testing``)."""

    def __new__(cls, wall: Optional[float] = None) -> ManualClock:
        """Wall time ``wall`` (seconds since the epoch; the system's time now when omitted)."""
    def advance(
        self, seconds: float, *, settle: Optional[Manager] = None, timeout: float = 20.0
    ) -> None:
        """Moves the clock forward; with ``settle``, waits (GIL released, at most ``timeout``
        seconds) until that manager's background work finished (``TokenTimeoutError``)."""
    def wall(self) -> float:
        """The clock's wall time, in seconds since the epoch."""

def flush_events() -> None: ...
def _shutdown() -> None: ...
def is_token_rejected(status: int, www_authenticate: Optional[str] = None) -> bool: ...
def error_kinds() -> List[Tuple[int, str]]: ...
