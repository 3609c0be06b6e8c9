"""Every exception subclass, raised by real failures."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Dict

import pytest

import tokenlease
from tokenlease import Manager


def test_classes_match_core_kinds():
    assert len(tokenlease.ERROR_CLASSES) == 16
    assert tokenlease.ERROR_CLASSES[16] is tokenlease.LoginRequiredError
    assert tokenlease.LoginRequiredError.kind == "login_required"
    for code, cls in tokenlease.ERROR_CLASSES.items():
        assert cls.code == code
        assert issubclass(cls, tokenlease.TokenleaseError)
    assert issubclass(tokenlease.TokenTimeoutError, TimeoutError)
    assert issubclass(tokenlease.ConfigurationError, ValueError)


def test_bad_secret_is_invalid_credentials(server):
    with Manager.from_config(server.config(secret="wrong-secret")) as manager:
        with pytest.raises(tokenlease.InvalidCredentialsError) as info:
            manager.token()
    err = info.value
    assert err.kind == "invalid_credentials" and err.code == 1
    assert "wrong-secret" not in str(err) and "wrong-secret" not in repr(err)


def test_invalid_grant_from_the_server(server):
    server.control(fail_next_token_requests={"count": 1, "error": "invalid_grant"})
    with Manager.from_config(server.config()) as manager:
        with pytest.raises(tokenlease.InvalidGrantError) as info:
            manager.token()
    assert info.value.code == 2


def test_outage_on_an_empty_cache_is_transient(server):
    server.control(outage={"mode": "status503", "duration_ms": None})
    with Manager.from_config(server.config()) as manager:
        with pytest.raises(tokenlease.TransientError) as info:
            manager.token()
    assert info.value.code == 5


def test_rate_limit_is_rate_limited_with_retry_after(server):
    server.control(rate_limit={"duration_ms": None, "retry_after_s": 5})
    with Manager.from_config(server.config()) as manager:
        with pytest.raises(tokenlease.RateLimitedError) as info:
            manager.token()
    assert info.value.code == 6
    assert info.value.retry_after == 5


def test_slow_server_is_a_timeout(server):
    server.control(latency_ms=2000)
    with Manager.from_config(server.config(waiter_timeout_ms=200)) as manager:
        with pytest.raises(tokenlease.TokenTimeoutError) as info:
            manager.token()
    assert info.value.code == 7
    assert isinstance(info.value, TimeoutError)


def test_expired_after_outage_keeps_the_transient_cause(server):
    server.control(default_ttl_s=2)
    policy = dict(advisory_fraction=0.5, advisory_min_s=0, mandatory_fraction=0.2,
                  mandatory_min_s=0, backoff_base_ms=50, backoff_cap_ms=200)
    with Manager.from_config(server.config(**policy)) as manager:
        manager.token()
        server.control(outage={"mode": "status503", "duration_ms": None})
        time.sleep(2.3)
        with pytest.raises(tokenlease.ExpiredError) as info:
            manager.token()
    assert info.value.code == 4
    assert isinstance(info.value.__cause__, tokenlease.TransientError)


def test_bad_config_is_configuration_error():
    with pytest.raises(tokenlease.ConfigurationError) as info:
        Manager.from_config({"source": {"type": "oauth2_client_credentials"}})
    assert "client_id" in str(info.value)
    with pytest.raises(tokenlease.ConfigurationError) as info:
        Manager.from_config({"source": {"type": "oauth2_client_credentials",
                                        "token_url": "http://idp.example/token",
                                        "client_id": "c", "client_secret": "s3cr3t-value"}})
    assert "HTTPS" in str(info.value) and "s3cr3t-value" not in str(info.value)


def _source(raise_: BaseException):
    class Source:
        def fetch(self) -> Dict[str, Any]:
            raise raise_
    return Source()


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (tokenlease.TransientError("upstream busy"), tokenlease.TransientError),
        (tokenlease.InvalidCredentialsError("bad password"), tokenlease.InvalidCredentialsError),
        (tokenlease.RevokedError("session revoked"), tokenlease.RevokedError),
        (tokenlease.StoreError("vault"), tokenlease.StoreError),
        (tokenlease.TokenRejectedError("nope"), tokenlease.TokenRejectedError),
        (tokenlease.InternalError("bug"), tokenlease.InternalError),
        (tokenlease.TokenCancelledError("stop"), tokenlease.TokenCancelledError),
        (tokenlease.LoginRequiredError("log in again"), tokenlease.LoginRequiredError),
        (ConnectionError("refused"), tokenlease.TransientError),
        (TimeoutError("slow"), tokenlease.TokenTimeoutError),
        (ValueError("bug in my source"), tokenlease.InternalError),
    ],
)
def test_python_source_exceptions_keep_kind_and_cause(raised, expected):
    with Manager(_source(raised)) as manager:
        with pytest.raises(expected) as info:
            manager.token()
    assert type(info.value) is expected
    assert info.value.__cause__ is raised
    assert type(raised).__name__ in str(info.value)


def test_rate_limited_from_python_source_keeps_retry_after():
    with Manager(_source(tokenlease.RateLimitedError("slow down", retry_after=7))) as manager:
        with pytest.raises(tokenlease.RateLimitedError) as info:
            manager.token()
    assert info.value.retry_after == 7


def test_already_expired_token_is_a_protocol_error():
    class Source:
        def fetch(self) -> Dict[str, Any]:
            return {"value": "x", "expires_in": 0}

    with Manager(Source()) as manager:
        with pytest.raises(tokenlease.ProtocolError) as info:
            manager.token()
    assert info.value.code == 12


def test_blocking_call_inside_a_source_is_a_usage_error():
    holder: Dict[str, Manager] = {}

    class Reentrant:
        def fetch(self) -> Dict[str, Any]:
            holder["other"].token()  # would deadlock: core refuses
            return {"value": "x", "expires_in": 60}

    other = Manager(Reentrant())
    holder["other"] = other
    with pytest.raises(tokenlease.UsageError) as info:
        other.token()
    assert info.value.code == 13
    other.close()


def test_wrong_fetch_result_is_internal():
    class Source:
        def fetch(self) -> int:
            return 42

    with Manager(Source()) as manager:
        with pytest.raises(tokenlease.InternalError) as info:
            manager.token()
    assert isinstance(info.value.__cause__, TypeError)


def test_async_errors_and_cancellation_are_delivered():
    release = threading.Event()
    calls = []

    class Slow:
        def fetch(self) -> Dict[str, Any]:
            calls.append(1)
            release.wait(10)
            return {"value": "slow-token", "expires_in": 3600}

    manager = Manager(Slow())

    async def main() -> None:
        task = asyncio.ensure_future(manager.token_async())
        await asyncio.sleep(0.1)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # wait_for-style timeouts cancel too.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(manager.token_async(), 0.1)
        release.set()
        # The shared refresh was not broken by the cancellations.
        assert await manager.token_async() == "slow-token"

    asyncio.run(main())
    assert manager.token() == "slow-token"
    assert len(calls) == 1
    manager.close()

    async def closed() -> None:
        with pytest.raises(tokenlease.ClosedError):
            await manager.token_async()

    asyncio.run(closed())
