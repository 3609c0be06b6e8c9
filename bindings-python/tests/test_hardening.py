"""Faults that enter from Python: exception text, Retry-After values, slow listeners, bad
token values; and callers right after an outage, in real time against the test server."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
import requests

import tokenlease
from tokenlease import Manager
from tokenlease.requests_auth import TokenleaseAuth


class RaisingSource:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def fetch(self) -> Any:
        raise self.error


def test_exception_text_is_redacted_before_it_reaches_errors_and_events() -> None:
    secrets = ["hunter2", "abc123query", "sekrit-opaque-token-value-0123456789", "pw-in-pair"]
    error = RuntimeError(
        "GET https://user:hunter2@idp.example/token?access_token=abc123query failed; "
        "Authorization: Bearer sekrit-opaque-token-value-0123456789 password=pw-in-pair"
    )
    events: List[Dict[str, Any]] = []
    with Manager(RaisingSource(error), listener=events.append) as manager:
        with pytest.raises(tokenlease.InternalError) as info:
            manager.token()
        tokenlease.flush_events()
        status = manager.status()
    text = " ".join([str(info.value), repr(info.value), str(status), str(events)])
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked: {text}"
    assert "RuntimeError" in str(info.value)
    assert "idp.example/token" in str(info.value)
    # The original exception stays available to the application as the cause.
    assert info.value.__cause__ is error


def test_a_huge_retry_after_from_a_callback_is_capped() -> None:
    events: List[Dict[str, Any]] = []
    source = RaisingSource(tokenlease.TransientError("busy", retry_after=1e9))
    with Manager(source, listener=events.append) as manager:
        with pytest.raises(tokenlease.TransientError):
            manager.token()
        tokenlease.flush_events()
    failed = [e for e in events if e["type"] == "refresh_failed"]
    assert failed, events
    next_retry = failed[-1]["next_retry_at"]
    now = datetime.datetime.now(datetime.timezone.utc)
    assert next_retry - now <= datetime.timedelta(seconds=301), next_retry


class BlockingSource:
    def __init__(self) -> None:
        self.release = threading.Event()

    def fetch(self) -> Any:
        self.release.wait(30)
        return {"value": "late-token", "expires_in": 600}


def test_a_slow_python_listener_never_delays_another_manager() -> None:
    sleeping = threading.Event()

    def slow_listener(event: Dict[str, Any]) -> None:
        if event["type"] == "refresh_started":
            sleeping.set()
            time.sleep(2)

    class Quick:
        def fetch(self) -> Any:
            return {"value": "quick-token", "expires_in": 600}

    hung = BlockingSource()
    with Manager(Quick(), listener=slow_listener) as slow, Manager(
        hung, policy={"waiter_timeout_ms": 100}
    ) as other:
        slow.token()
        assert sleeping.wait(5)
        started = time.monotonic()
        with pytest.raises(tokenlease.TokenTimeoutError):
            other.token()
        waited = time.monotonic() - started
        hung.release.set()
    assert waited < 1.5, f"waited {waited:.2f} s behind another manager's listener"


@pytest.mark.parametrize(
    "token, problem",
    [
        ({"value": "", "expires_in": 60}, "empty"),
        ({"value": "a\r\nX-Injected: 1", "expires_in": 60}, "control character"),
        ({"value": "ok", "expires_in": 1e12}, "bound"),
        ({"value": "ok", "expires_in": 60, "refresh_token": ""}, "refresh token"),
    ],
)
def test_bad_token_values_from_a_python_source_are_protocol_errors(
    token: Dict[str, Any], problem: str
) -> None:
    class Source:
        def fetch(self) -> Any:
            return token

    with Manager(Source()) as manager:
        with pytest.raises(tokenlease.ProtocolError) as info:
            manager.token()
    assert problem in str(info.value)


def test_no_caller_fails_once_the_token_endpoint_has_recovered(server: Any) -> None:
    """The report's timeline, shortened: 6-second tokens, the token endpoint answers 503
    for 5.5 s spanning the token's expiry, 4 threads call the API through requests. After
    the endpoint is back (plus the 0.5 s caller retry interval and scheduling slack), no
    call fails."""
    server.control(default_ttl_s=6)
    config = server.config(advisory_min_s=1, mandatory_min_s=0.5)
    failures: List[Tuple[float, str]] = []
    recovered_at: List[float] = []
    stop = threading.Event()
    with Manager.from_config(config) as manager:
        manager.token()
        started = time.monotonic()
        session = requests.Session()
        session.auth = TokenleaseAuth(manager)

        def caller() -> None:
            while not stop.is_set():
                try:
                    response = session.get(server.resource_url, timeout=5)
                    if response.status_code != 200:
                        failures.append((time.monotonic(), f"HTTP {response.status_code}"))
                except tokenlease.TokenleaseError as err:
                    failures.append((time.monotonic(), type(err).__name__))
                time.sleep(0.01)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        server.control(outage={"mode": "status503", "duration_ms": 5500})
        recovered_at.append(time.monotonic() + 5.5)
        time.sleep(10 - (time.monotonic() - started))
        stop.set()
        for thread in threads:
            thread.join(10)
    late = [(round(at - recovered_at[0], 2), what) for at, what in failures if at > recovered_at[0] + 1.0]
    assert not late, f"callers failed after the endpoint recovered: {late[:10]} ({len(late)} in all)"
