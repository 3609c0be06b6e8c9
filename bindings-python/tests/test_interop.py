"""Interop from Python with real third-party OAuth2/OIDC servers whose issuer has a path.

- npm ``oidc-provider`` (tests/oidc/server.js) mounted under ``/realms/tl``: the issuer is
  ``http://127.0.0.1:PORT/realms/tl``, the shape of Keycloak, Okta custom authorization
  servers and Entra ID; discovery, client credentials (basic and post), password grant with
  rotating refresh tokens, revocation, the ``requests`` adapter, a bad secret.
- Maven ``no.nav.security:mock-oauth2-server`` (tests/mock-oauth2/launch), issuer
  ``http://127.0.0.1:PORT/default``.

Each server is started once for this module on 127.0.0.1 and stopped at its end. A server
that is not installed (``./scripts/setup-oidc``, ``./scripts/setup-mock-oauth2``) fails
these tests when CI=true and skips them, loudly, otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests

import tokenlease
from tokenlease import Manager
from tokenlease.requests_auth import TokenleaseAuth

REPO = Path(__file__).resolve().parents[2]
MOUNT = "/realms/tl"
BASIC_CLIENT = "tokenlease-basic"
POST_CLIENT = "tokenlease-post"
SECRET = "tokenlease-secret"
STARTUP_TIMEOUT_S = 60


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
