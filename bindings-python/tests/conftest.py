"""Fixtures: the project's real test token server, spawned once per session."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]


def _server_binary() -> Path:
    explicit = os.environ.get("TOKENLEASE_TEST_SERVER_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or str(
        Path(
            os.environ.get("TOKENLEASE_CACHE_DIR")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenlease"
        )
        / "target"
    )
    binary = Path(target) / "debug" / "tokenlease-test-server"
    if not binary.exists():
        subprocess.run(
            ["cargo", "build", "-q", "-p", "tokenlease-test-server"],
            cwd=REPO,
            check=True,
            env={**os.environ, "CARGO_TARGET_DIR": target},
        )
    return binary


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.token_url = url + "/oauth/token"
        self.revoke_url = url + "/oauth/revoke"
        self.resource_url = url + "/api/resource"

    def stats(self) -> Dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def control(self, **control: Any) -> None:
        request = urllib.request.Request(
            self.url + "/control",
            data=json.dumps(control).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def config(
        self, secret: str = "demo-secret", key: Optional[str] = None, **policy: Any
    ) -> Dict[str, Any]:
        config: Dict[str, Any] = {
            "source": {
                "type": "oauth2_client_credentials",
                "token_url": self.token_url,
                "client_id": "demo-client",
                "client_secret": secret,
                "revocation_url": self.revoke_url,
            },
            "policy": {"jitter_fraction": 0.0, **policy},
        }
        if key is not None:
            config["key"] = key
        return config

    def resource_status(self, token: str) -> int:
        request = urllib.request.Request(
            self.resource_url, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return int(err.code)


@contextlib.contextmanager
def spawn_server(max_lifetime_s: int = 900) -> Iterator[Server]:
    """A fresh test token server on 127.0.0.1, stopped on the way out (and by itself after
    ``max_lifetime_s``)."""
    process = subprocess.Popen(
        [str(_server_binary()), "--max-lifetime-s", str(max_lifetime_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        prefix = "TOKENLEASE_TEST_SERVER_URL="
        assert line.startswith(prefix), line
        yield Server(line[len(prefix):])
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    with spawn_server() as running:  # the session's server, stopped at session end
        yield running


@pytest.fixture(autouse=True)
def clean_server(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that uses the server starts from a healthy server with zeroed stats."""
    if "server" not in request.fixturenames:
        yield
        return
    server: Server = request.getfixturevalue("server")
    reset = dict(
        reset_stats=True,
        clear_outage=True,
        clear_rate_limit=True,
        latency_ms=0,
        early_expiry_s=0,
        default_ttl_s=3600,
        fail_next_token_requests={"count": 0, "error": "invalid_client"},
    )
    server.control(**reset)
    yield
    server.control(**reset)
