"""Interop from Python with real third-party OAuth2/OIDC servers whose issuer has a path.

- npm ``oidc-provider`` (tests/oidc/server.js) mounted under ``/realms/tl``: the issuer is
  ``http://127.0.0.1:PORT/realms/tl``, the shape of Keycloak, Okta custom authorization
  servers and Entra ID; discovery, client credentials (basic and post), password grant with
  rotating refresh tokens, revocation, the ``requests`` adapter, a bad secret.
- Maven ``no.nav.security:mock-oauth2-server`` (tests/mock-oauth2/launch), issuer
  ``http://127.0.0.1:PORT/default``.
- User logins (issue 15) of oidc-provider's public app client ``tokenlease-app``, with the
  server's simulated browser (``/__browser/authorize``, ``/__browser/device``,
  ``/__browser/revoke-grants``, shared with the other languages' tests): login required ->
  browser login -> refresh with rotation -> the user removes the app's access
  (``LoginRequiredError`` for 32 threads from one refused refresh) -> device login -> logout;
  the asyncio forms (1,000 tasks, one refresh; a cancelled task stops polling); denied and
  cancelled device logins; ``seed`` never rolls back a newer token in an encrypted file store.

Each server is started once for this module on 127.0.0.1 and stopped at its end. A server
that is not installed (``./scripts/setup-oidc``, ``./scripts/setup-mock-oauth2``) fails
these tests when CI=true and skips them, loudly, otherwise.
"""

from __future__ import annotations

import _thread
import asyncio
import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests

import tokenlease
from tokenlease import DeviceLogin, FetchedToken, LoginRequest, Manager
from tokenlease.requests_auth import TokenleaseAuth

REPO = Path(__file__).resolve().parents[2]
MOUNT = "/realms/tl"
BASIC_CLIENT = "tokenlease-basic"
POST_CLIENT = "tokenlease-post"
SECRET = "tokenlease-secret"
STARTUP_TIMEOUT_S = 60
APP_CLIENT = "tokenlease-app"
REDIRECT_URI = "http://127.0.0.1:49152/callback"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ENCRYPTION_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def _missing(message: str) -> None:
    if os.environ.get("CI") in ("true", "1"):
        pytest.fail(f"{message} (CI=true: a missing interop server fails the run)")
    # A warning shows in pytest's summary even with -q (a skip reason needs -rs).
    warnings.warn(f"<<<<<<<<<< SKIPPED, NOT RUN: {message} >>>>>>>>>>", stacklevel=2)
    pytest.skip(message)


class Process:
    """A server process that prints ``PREFIX=URL`` once it listens and exits when its stdin
    closes; stopped by :meth:`stop`."""

    def __init__(self, args: List[str], prefix: str) -> None:
        # A server that stalls at start-up (seen rarely on a loaded machine) is started once more.
        try:
            self._start(args, prefix)
        except RuntimeError as first:
            print(f"{first}; starting it again", file=sys.stderr)
            self._start(args, prefix)

    def _start(self, args: List[str], prefix: str) -> None:
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def read_stdout() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                lines.put(line.strip())
            lines.put(None)

        threading.Thread(target=read_stdout, daemon=True).start()
        self.errors: List[str] = []

        def read_stderr() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                if len(self.errors) < 200:
                    self.errors.append(line)

        threading.Thread(target=read_stderr, daemon=True).start()
        wanted = prefix + "="
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT_S)
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(
                    f"{args[0]} did not print {wanted} in {STARTUP_TIMEOUT_S} s: "
                    + "".join(self.errors)
                )
            if line.startswith(wanted):
                self.url = line[len(wanted):]
                return

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _post_form(url: str, form: Dict[str, str], client_id: str) -> Any:
    credentials = base64.b64encode(f"{client_id}:{SECRET}".encode()).decode()
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _post(url: str, data: bytes, content_type: str) -> Any:
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class OidcProvider:
    def __init__(self, process: Process) -> None:
        self.process = process
        self.issuer = process.url
        parsed = urllib.parse.urlsplit(self.issuer)
        self.origin = f"{parsed.scheme}://{parsed.netloc}"
        self.port = parsed.port

    def stats(self) -> Dict[str, Any]:
        return _get_json(self.origin + "/__stats")  # type: ignore[no-any-return]

    def introspect(self, token: str) -> Dict[str, Any]:
        return _post_form(  # type: ignore[no-any-return]
            self.issuer + "/token/introspection", {"token": token}, BASIC_CLIENT
        )

    def errors(self, code: str) -> int:
        return int(self.stats()["errors"].get(code, 0))

    def grants(self, grant: str) -> int:
        return int(self.stats()["grants"].get(grant, 0))

    def token_requests(self) -> int:
        return int(self.stats()["token_requests"])

    def _browser(self, action: str, body: Dict[str, Any]) -> Any:
        return _post(
            f"{self.origin}/__browser/{action}", json.dumps(body).encode(), "application/json"
        )

    def browser_authorize(self, url: str) -> str:
        """The user's browser follows the authorization URL, alice logs in, and the redirect
        back to the app (with the code and state) is returned."""
        return str(self._browser("authorize", {"url": url})["redirect"])

    def browser_device(self, user_code: str, approve: bool) -> None:
        """The user, at another device, enters the code and approves or denies."""
        assert self._browser("device", {"user_code": user_code, "approve": approve})["done"]

    def revoke_grants(self) -> int:
        """The user removes the app's access: every grant alice gave ends."""
        return int(self._browser("revoke-grants", {})["revoked"])

    def external_login(self) -> FetchedToken:
        """A login the app did without tokenlease (as a platform SDK would): the device flow
        over plain HTTP, approved by the user at once."""
        form = "application/x-www-form-urlencoded"
        device = _post(
            self.issuer + "/device/auth",
            urllib.parse.urlencode(
                {"client_id": APP_CLIENT, "scope": "openid offline_access"}
            ).encode(),
            form,
        )
        self.browser_device(device["user_code"], True)
        token = _post(
            self.issuer + "/token",
            urllib.parse.urlencode(
                {
                    "grant_type": DEVICE_GRANT,
                    "device_code": device["device_code"],
                    "client_id": APP_CLIENT,
                }
            ).encode(),
            form,
        )
        return FetchedToken(
            value=token["access_token"],
            expires_in=token["expires_in"],
            refresh_token=token["refresh_token"],
        )

    def user_login_config(
        self, client_id: str = APP_CLIENT, store: Optional[Dict[str, Any]] = None
    ) -> Dict[str, Any]:
        """The user-login configuration every binding's login test uses (a public client)."""
        return {
            "source": {
                "type": "oauth2",
                "issuer": self.issuer,
                "client_id": client_id,
                "grant": {"type": "user_login"},
                "scopes": ["openid", "offline_access"],
                "authorization_params": {"prompt": "consent"},
            },
            "store": store or {"type": "memory"},
        }

    def config(
        self,
        client_id: str = BASIC_CLIENT,
        secret: str = SECRET,
        client_auth: str = "basic",
        grant: Optional[Dict[str, Any]] = None,
        scopes: Optional[List[str]] = None,
        issuer: Optional[str] = None,
    ) -> Dict[str, Any]:
        return {
            "source": {
                "type": "oauth2",
                "issuer": issuer or self.issuer,
                "client_id": client_id,
                "client_secret": secret,
                "client_auth": client_auth,
                "grant": grant or {"type": "client_credentials"},
                "scopes": scopes or ["api:read"],
            },
            "policy": {"jitter_fraction": 0.0},
        }


@pytest.fixture(scope="module")
def oidc() -> Iterator[OidcProvider]:
    node = shutil.which("node")
    if node is None or not (REPO / "tests/oidc/node_modules/oidc-provider/package.json").is_file():
        _missing("oidc-provider (tests/oidc/node_modules) or Node.js is missing: run ./scripts/setup-oidc")
    process = Process(
        [
            node or "node",
            str(REPO / "tests/oidc/server.js"),
            "--lifetime",
            "300",
            "--exit-with-stdin",
            "--mount",
            MOUNT,
        ],
        "OIDC_PROVIDER_URL",
    )
    try:
        yield OidcProvider(process)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def mock_oauth2() -> Iterator[str]:
    launcher = REPO / "tests/mock-oauth2/launch"
    check = subprocess.run(
        ["bash", str(launcher), "--check"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        _missing("mock-oauth2-server is missing: " + check.stderr.strip())
    process = Process(
        ["bash", str(launcher), "--lifetime", "300", "--exit-with-stdin"],
        "MOCK_OAUTH2_SERVER_URL",
    )
    try:
        yield process.url
    finally:
        process.stop()


def test_path_issuer_with_basic_and_post_client_auth(oidc: OidcProvider) -> None:
    assert oidc.issuer.endswith(MOUNT)
    before = oidc.stats()["paths"].get(f"GET {MOUNT}/.well-known/openid-configuration", 0)
    for client_id, auth in [(BASIC_CLIENT, "basic"), (POST_CLIENT, "post")]:
        with Manager.from_config(oidc.config(client_id=client_id, client_auth=auth)) as manager:
            token = manager.token()
            assert manager.token() == token
            introspection = oidc.introspect(token)
            assert introspection["active"] is True
            assert introspection["client_id"] == client_id
    paths = oidc.stats()["paths"]
    # The document under the issuer's path, once for both managers (shared per issuer).
    assert paths[f"GET {MOUNT}/.well-known/openid-configuration"] == before + 1
    assert "GET /realms/.well-known/openid-configuration" not in paths


def test_bad_secret_is_invalid_credentials_error(oidc: OidcProvider) -> None:
    for client_id, auth in [(BASIC_CLIENT, "basic"), (POST_CLIENT, "post")]:
        with Manager.from_config(
            oidc.config(client_id=client_id, client_auth=auth, secret="wrong-secret")
        ) as manager:
            with pytest.raises(tokenlease.InvalidCredentialsError) as info:
                manager.token()
        err = info.value
        assert err.kind == "invalid_credentials" and err.code == 1
        assert "answered 401" in str(err)
        assert "wrong-secret" not in str(err) and "wrong-secret" not in repr(err)


def test_password_grant_rotates_refresh_tokens(oidc: OidcProvider) -> None:
    before = oidc.stats()["grants"]
    config = oidc.config(
        grant={"type": "password", "username": "alice", "password": "wonderland"},
        scopes=["openid", "offline_access"],
    )
    with Manager.from_config(config) as manager:
        first = manager.token_info()
        assert manager.invalidate(first)
        second = manager.token_info()
        assert second.generation == first.generation + 1
        assert second.value != first.value
        assert oidc.introspect(second.value)["active"] is True
        assert manager.invalidate(second)
        manager.token()
        status = manager.status()
        assert (status.counters["fetches"], status.counters["refreshes"]) == (1, 2)
    grants = oidc.stats()["grants"]
    assert grants["refresh_token"] - before.get("refresh_token", 0) == 2
    assert grants["password"] - before.get("password", 0) == 1


def test_requests_adapter_and_revoke_through_a_path_issuer(oidc: OidcProvider) -> None:
    config = oidc.config(
        grant={"type": "password", "username": "alice", "password": "wonderland"},
        scopes=["openid", "offline_access"],
    )
    with Manager.from_config(config) as manager:
        response = requests.get(oidc.issuer + "/me", auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 200
        assert response.json()["sub"] == "alice"
        token = manager.token()
        revocations = oidc.stats()["revocation_requests"]
        manager.revoke()
        assert oidc.stats()["revocation_requests"] == revocations + 2
        assert oidc.introspect(token)["active"] is False


def test_an_issuer_its_document_does_not_name_is_a_configuration_error(oidc: OidcProvider) -> None:
    configured = f"http://localhost:{oidc.port}{MOUNT}"
    with Manager.from_config(oidc.config(issuer=configured)) as manager:
        with pytest.raises(tokenlease.ConfigurationError) as info:
            manager.token()
    message = str(info.value)
    assert info.value.code == 8
    assert json.dumps(configured) in message and json.dumps(oidc.issuer) in message


def test_mock_oauth2_server_path_issuer(mock_oauth2: str) -> None:
    issuer = mock_oauth2 + "/default"
    source: Dict[str, Any] = {
        "type": "oauth2",
        "issuer": issuer,
        "client_id": "python-client",
        "client_secret": SECRET,
        "grant": {"type": "client_credentials"},
        "scopes": ["api.read"],
    }
    config = {"source": source}
    with Manager.from_config(config) as manager:
        token = manager.token()
        introspection = _post_form(issuer + "/introspect", {"token": token}, "python-client")
        assert introspection["active"] is True
        assert introspection["sub"] == "python-client"
        assert introspection["iss"] == issuer
        # mock-oauth2-server revokes refresh tokens only; revoke() still succeeds.
        manager.revoke()
    # No client authentication at all: 401 invalid_client.
    public = {k: v for k, v in source.items() if k != "client_secret"}
    with Manager.from_config({"source": {**public, "client_id": "public"}}) as manager:
        with pytest.raises(tokenlease.InvalidCredentialsError):
            manager.token()


# ---- user logins (issue 15) ----


def _until(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_user_login_browser_refresh_access_removed_device_relogin_logout(
    oidc: OidcProvider,
) -> None:
    with Manager.from_config(oidc.user_login_config()) as manager:
        # Nobody logged in yet.
        with pytest.raises(tokenlease.LoginRequiredError) as info:
            manager.token()
        assert info.value.code == 16 and info.value.kind == "login_required"

        # The browser login: the URL goes to the user's browser, the redirect comes back.
        request = manager.begin_login(REDIRECT_URI)
        assert isinstance(request, LoginRequest)
        assert request.url.startswith(oidc.issuer + "/auth?")
        assert "code_challenge_method=S256" in request.url
        assert request.redirect_uri == REDIRECT_URI
        state = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)["state"][0]
        assert repr(request) == f"LoginRequest(redirect_uri={REDIRECT_URI!r})"
        assert state not in repr(request) and state not in str(request)
        back = oidc.browser_authorize(request.url)
        assert back.startswith(REDIRECT_URI + "?")
        first = manager.complete_login(request, back)
        assert isinstance(first, tokenlease.TokenInfo)
        assert first.value not in repr(first)
        # The OpenID Connect ID token of the login (scope openid): opaque, a JWT's three
        # parts, never shown.
        assert first.id_token is not None and first.id_token.count(".") == 2
        assert first.id_token not in repr(first) and first.id_token not in str(first)
        assert oidc.introspect(first.value)["active"] is True
        assert manager.token() == first.value
        assert manager.token_info().generation == first.generation

        # Refreshed with rotation: one refresh-token grant, a new value.
        refreshes = oidc.grants("refresh_token")
        assert manager.invalidate(first)
        second = manager.token_info()
        assert second.value != first.value and second.generation == first.generation + 1
        assert oidc.grants("refresh_token") == refreshes + 1
        assert oidc.introspect(second.value)["active"] is True

        # The user removes the app's access: 32 threads each get LoginRequiredError, from one
        # refused refresh, and nothing hangs.
        refused = oidc.errors("invalid_grant")
        assert oidc.revoke_grants() >= 1
        assert manager.invalidate(second)
        barrier = threading.Barrier(32)

        def call() -> BaseException:
            barrier.wait()
            try:
                manager.token()
            except tokenlease.TokenleaseError as err:
                return err
            raise AssertionError("a token after the user removed the app's access")

        with ThreadPoolExecutor(max_workers=32) as pool:
            futures = [pool.submit(call) for _ in range(32)]
            outcomes = [future.result(timeout=30) for future in futures]
        assert all(isinstance(err, tokenlease.LoginRequiredError) for err in outcomes), outcomes
        assert oidc.errors("invalid_grant") == refused + 1, "one refresh attempt for 32 threads"
        requests = oidc.token_requests()
        with pytest.raises(tokenlease.LoginRequiredError):
            manager.token()
        assert oidc.token_requests() == requests, "asked again: no request"

        # A new login with the device flow.
        device = manager.start_device_login()
        assert isinstance(device, DeviceLogin)
        assert device.verification_uri.startswith(oidc.issuer + "/device")
        assert device.verification_uri_complete is not None
        assert device.user_code in device.verification_uri_complete
        assert device.interval == 1.0  # the server's interval
        assert device.expires_in == 600.0
        assert not device.cancelled
        assert repr(device).startswith(f"DeviceLogin(user_code={device.user_code!r}, ")
        grants = oidc.grants(DEVICE_GRANT)
        oidc.browser_device(device.user_code, True)
        relogin = manager.complete_device_login(device)
        assert oidc.grants(DEVICE_GRANT) == grants + 1
        assert manager.token_info().generation == relogin.generation
        assert oidc.introspect(relogin.value)["active"] is True

        # Logout: both tokens revoked at the server, login required again.
        revocations = oidc.stats()["revocation_requests"]
        manager.revoke()
        assert oidc.stats()["revocation_requests"] == revocations + 2
        assert oidc.introspect(relogin.value)["active"] is False
        with pytest.raises(tokenlease.LoginRequiredError):
            manager.token()


def test_user_login_from_asyncio_1000_tasks_one_refresh_and_a_cancelled_device_login(
    oidc: OidcProvider,
) -> None:
    async def main() -> None:
        async with Manager.from_config(oidc.user_login_config()) as manager:
            loop = asyncio.get_running_loop()
            request = await manager.begin_login_async(REDIRECT_URI)
            back = await loop.run_in_executor(None, oidc.browser_authorize, request.url)
            first = await manager.complete_login_async(request, back)
            assert await manager.token_async() == first.value

            # 1,000 tasks after the token was invalidated: one refresh-token grant, one new
            # token for all of them, no refresh token redeemed twice.
            refreshes = oidc.grants("refresh_token")
            refused = oidc.errors("invalid_grant")
            assert manager.invalidate(first)
            values = await asyncio.gather(*(manager.token_async() for _ in range(1000)))
            assert len(set(values)) == 1 and values[0] != first.value
            assert oidc.grants("refresh_token") == refreshes + 1
            assert oidc.errors("invalid_grant") == refused

            # A device login whose task is cancelled while it polls: the polling stops.
            device = await manager.start_device_login_async()
            pending = oidc.errors("authorization_pending")
            waiting = asyncio.ensure_future(manager.complete_device_login_async(device))
            await loop.run_in_executor(
                None,
                _until,
                lambda: oidc.errors("authorization_pending") > pending,
                "a pending poll",
            )
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            requests = oidc.token_requests()
            await asyncio.sleep(3.5)  # past the next poll (1 s interval, +5 s after slow_down)
            assert oidc.token_requests() == requests, "no poll after the task was cancelled"
            assert not device.cancelled
            assert await manager.token_async() == values[0], "the session is untouched"

            # A device login approved, from asyncio.
            device = await manager.start_device_login_async()
            await loop.run_in_executor(None, oidc.browser_device, device.user_code, True)
            relogin = await manager.complete_device_login_async(device)
            assert (await manager.token_info_async()).generation == relogin.generation
            await loop.run_in_executor(None, manager.revoke)

    asyncio.run(main())


def test_a_denied_device_login_is_cancelled(oidc: OidcProvider) -> None:
    with Manager.from_config(oidc.user_login_config()) as manager:
        device = manager.start_device_login()
        oidc.browser_device(device.user_code, False)
        with pytest.raises(tokenlease.TokenCancelledError) as info:
            manager.complete_device_login(device)
        assert info.value.code == 15 and "denied" in str(info.value)
        with pytest.raises(tokenlease.LoginRequiredError):
            manager.token()


def test_a_waiting_device_login_is_cancelled_from_another_thread(oidc: OidcProvider) -> None:
    with Manager.from_config(oidc.user_login_config()) as manager:
        device = manager.start_device_login()
        pending = oidc.errors("authorization_pending")
        outcome: List[BaseException] = []

        def wait() -> None:
            try:
                manager.complete_device_login(device)
            except BaseException as err:  # noqa: BLE001 - reported below
                outcome.append(err)

        waiter = threading.Thread(target=wait)
        waiter.start()
        _until(lambda: oidc.errors("authorization_pending") > pending, "a pending poll")
        cancelled_at = time.monotonic()
        device.cancel()
        waiter.join(timeout=10)
        assert not waiter.is_alive()
        assert time.monotonic() - cancelled_at < 2, "at once, not at the next poll"
        assert len(outcome) == 1 and isinstance(outcome[0], tokenlease.TokenCancelledError)
        assert device.cancelled
        with pytest.raises(tokenlease.TokenCancelledError):
            manager.complete_device_login(device)  # cancelled stays cancelled


def test_ctrl_c_interrupts_a_waiting_device_login(oidc: OidcProvider) -> None:
    with Manager.from_config(oidc.user_login_config()) as manager:
        device = manager.start_device_login()
        pending = oidc.errors("authorization_pending")

        def press_ctrl_c() -> None:
            _until(lambda: oidc.errors("authorization_pending") > pending, "a pending poll")
            _thread.interrupt_main()  # as SIGINT does

        presser = threading.Thread(target=press_ctrl_c)
        presser.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            manager.complete_device_login(device)
        presser.join()
        assert time.monotonic() - started < 10
        requests = oidc.token_requests()
        time.sleep(3.5)  # past the next poll
        assert oidc.token_requests() == requests, "the polling stopped"
        assert not device.cancelled


def test_seed_never_rolls_back_a_newer_stored_login(oidc: OidcProvider, tmp_path: Path) -> None:
    store = {"type": "file", "dir": str(tmp_path), "encryption_key": ENCRYPTION_KEY}
    config = oidc.user_login_config(store=store)

    # First run: the app seeds the manager with a login result it got elsewhere, and keeps
    # that result itself.
    seeded_at = datetime.now(timezone.utc)
    kept = oidc.external_login()
    with Manager.from_config(config) as manager:
        served = manager.seed(kept, issued_at=seeded_at)
        assert served.value == kept.value
        refreshes = oidc.grants("refresh_token")
        assert manager.invalidate(served)
        rotated = manager.token()
        assert oidc.grants("refresh_token") == refreshes + 1
    # The store holds the rotated tokens, encrypted.
    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    assert rotated.encode() not in stored and kept.value.encode() not in stored

    # Next run: seeding the kept (older) result again serves the rotated token from the
    # store: no request at all, and the kept refresh token (dead since the rotation) is
    # never sent.
    requests = oidc.token_requests()
    refused = oidc.errors("invalid_grant")
    with Manager.from_config(config) as manager:
        served = manager.seed(kept, issued_at=seeded_at)
        assert served.value == rotated
        assert oidc.token_requests() == requests, "0 logins, 0 refreshes"
        assert manager.invalidate(served)
        manager.token()
        assert oidc.grants("refresh_token") == refreshes + 2, "with the rotated refresh token"
        assert oidc.errors("invalid_grant") == refused

    async def third_run() -> str:
        async with Manager.from_config(config) as manager:
            # Without an issue time, any stored token wins as well.
            served = await manager.seed_async(kept)
            assert served.value not in (kept.value, rotated)
            # A result issued after the stored token replaces it; so does a new login.
            newer = oidc.external_login()
            replaced = await manager.seed_async(newer, datetime.now(timezone.utc))
            assert replaced.value == newer.value
            newest = oidc.external_login()
            logged_in = await manager.login_async(newest)
            assert logged_in.value == newest.value
            assert await manager.token_async() == newest.value
            return newest.value

    newest_value = asyncio.run(third_run())
    with Manager.from_config(config) as manager:
        # The new login was persisted; log out (both tokens revoked, the store wiped).
        assert manager.token() == newest_value
        manager.revoke()
        assert oidc.introspect(newest_value)["active"] is False
        with pytest.raises(tokenlease.LoginRequiredError):
            manager.token()
