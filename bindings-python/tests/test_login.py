"""User logins without a server: argument checks, redirect checks, login/seed semantics.

The logins against a real authorization server (oidc-provider) are in test_interop.py.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Any, Dict

import pytest

import tokenlease
from tokenlease import FetchedToken, LoginRequest, Manager

REDIRECT_URI = "http://127.0.0.1:49152/callback"

# A user login with fixed endpoints on a closed loopback port: begin_login needs no request
# (no discovery), and nothing below reaches the token endpoint.
OFFLINE: Dict[str, Any] = {
    "source": {
        "type": "oauth2",
        "client_id": "app",
        "token_url": "http://127.0.0.1:9/token",
        "authorization_url": "http://127.0.0.1:9/authorize",
        "grant": {"type": "user_login"},
        "scopes": ["openid"],
    }
}


class CountingSource:
    def __init__(self) -> None:
        self.fetches = 0

    def fetch(self) -> FetchedToken:
        self.fetches += 1
        return FetchedToken(value=f"fetched-{self.fetches}", expires_in=600)


def test_begin_login_and_redirect_checks() -> None:
    with Manager.from_config(OFFLINE) as manager:
        with pytest.raises(tokenlease.LoginRequiredError):
            manager.token()
        request = manager.begin_login(REDIRECT_URI)
        assert request.url.startswith("http://127.0.0.1:9/authorize?")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
        assert query["client_id"] == ["app"] and query["code_challenge_method"] == ["S256"]
        assert query["redirect_uri"] == [REDIRECT_URI]
        state = query["state"][0]
        assert state not in repr(request)
        with pytest.raises(TypeError):
            LoginRequest()  # type: ignore[call-arg]

        # Forged, foreign or malformed redirects never reach the token endpoint.
        with pytest.raises(tokenlease.ProtocolError) as info:
            manager.complete_login(request, REDIRECT_URI + "?code=c&state=forged")
        assert "state" in str(info.value)
        with pytest.raises(tokenlease.ProtocolError):
            manager.complete_login(request, "not a url")
        with pytest.raises(tokenlease.ProtocolError):
            manager.complete_login(request, f"http://127.0.0.1:1/elsewhere?code=c&state={state}")
        # The user said no.
        with pytest.raises(tokenlease.TokenCancelledError):
            manager.complete_login(request, f"{REDIRECT_URI}?error=access_denied&state={state}")

        # Bad arguments.
        with pytest.raises(TypeError):
            manager.complete_login("not a request", REDIRECT_URI)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            manager.complete_login(request, None)  # type: ignore[arg-type]
        with pytest.raises(tokenlease.UsageError):
            manager.begin_login("not a url")
        with pytest.raises(TypeError):
            manager.complete_device_login(request)  # type: ignore[arg-type]
        # No device authorization endpoint here.
        with pytest.raises(tokenlease.ConfigurationError):
            manager.start_device_login()


def test_the_asyncio_forms_check_the_same() -> None:
    async def main() -> None:
        async with Manager.from_config(OFFLINE) as manager:
            request = await manager.begin_login_async(REDIRECT_URI)
            assert isinstance(request, LoginRequest)
            with pytest.raises(tokenlease.ProtocolError):
                await manager.complete_login_async(request, REDIRECT_URI + "?code=c&state=x")
            with pytest.raises(tokenlease.ConfigurationError):
                await manager.start_device_login_async()
            with pytest.raises(TypeError):
                await manager.complete_login_async("nope", REDIRECT_URI)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await manager.login_async({"expires_in": 60})

    asyncio.run(main())


def test_a_source_without_interactive_login_is_a_configuration_error() -> None:
    with Manager(CountingSource()) as manager:
        with pytest.raises(tokenlease.ConfigurationError):
            manager.begin_login(REDIRECT_URI)
        with pytest.raises(tokenlease.ConfigurationError):
            manager.start_device_login()


def test_login_replaces_and_seed_never_rolls_back() -> None:
    source = CountingSource()
    with Manager(source) as manager:
        assert manager.token() == "fetched-1"
        held = manager.token_info()
        seed = FetchedToken(value="seeded", expires_in=600, refresh_token="seeded-refresh")
        # Issued long before the held token, or at an unknown time: the held one is served.
        old = datetime(2001, 1, 1, tzinfo=timezone.utc)
        assert manager.seed(seed, issued_at=old).value == "fetched-1"
        assert manager.seed(seed).value == "fetched-1"
        assert manager.token() == "fetched-1"
        # Issued after it: installed.
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        installed = manager.seed(seed, issued_at=later)
        assert installed.value == "seeded" and installed.generation > held.generation
        assert "seeded" not in repr(installed)
        assert manager.token() == "seeded"
        # A login always replaces; a mapping or a bare string works as a login result too.
        assert manager.login({"value": "from-a-dict", "expires_in": 600}).value == "from-a-dict"
        assert manager.login("bare-string").value == "bare-string"
        assert manager.token() == "bare-string"
        assert source.fetches == 1

        # Bad login results and issue times.
        with pytest.raises(TypeError):
            manager.login({"expires_in": 60})
        with pytest.raises(TypeError):
            manager.seed(seed, issued_at="yesterday")  # type: ignore[arg-type]
        with pytest.raises(tokenlease.ProtocolError) as info:
            manager.login(FetchedToken(value="line\nbreak"))
        assert "line" not in str(info.value)
        assert manager.token() == "bare-string"

    closed = Manager(CountingSource())
    closed.close()
    with pytest.raises(tokenlease.ClosedError):
        closed.login(FetchedToken(value="late", expires_in=60))
