"""Python-implemented sources, stores and listeners."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Dict, List, Optional

import pytest

import tokenlease
from tokenlease import FetchedToken, Manager


class CountingSource:
    def __init__(self, lifetime: float = 3600) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.threads: List[str] = []

    def fetch(self) -> FetchedToken:
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        return FetchedToken(value=f"py-token-{self.calls}", expires_in=self.lifetime)


class DictStore:
    def __init__(self) -> None:
        self.records: Dict[str, str] = {}
        self.calls: List[str] = []

    def load(self, key: str) -> Optional[str]:
        self.calls.append("load")
        return self.records.get(key)

    def save(self, key: str, record: str) -> None:
        self.calls.append("save")
        self.records[key] = record

    def delete(self, key: str) -> None:
        self.calls.append("delete")
        self.records.pop(key, None)


def test_python_source_store_and_listener():
    source, store, events = CountingSource(), DictStore(), []
    with Manager(source, store=store, listener=events.append, key="svc") as manager:
        assert manager.token() == "py-token-1"
        assert manager.token() == "py-token-1"
        assert source.calls == 1
        # Called from core's background runtime, not from this thread.
        assert source.threads[0] != threading.current_thread().name
        assert store.calls == ["load", "save"]
        record = json.loads(store.records["svc"])
        assert record["value"] == "py-token-1" and record["version"] == 1
        tokenlease.flush_events()
        types = [event["type"] for event in events]
        assert types == ["refresh_started", "refresh_succeeded"]
        succeeded = events[1]
        assert succeeded["key"] == "svc"
        assert succeeded["generation"] == 1
        assert succeeded["from_store"] is False
        assert succeeded["expires_at"].tzinfo is not None

    # A restart adopts the stored token: no fetch.
    source2, events2 = CountingSource(), []
    with Manager(source2, store=store, listener=events2.append, key="svc") as manager:
        assert manager.token() == "py-token-1"
        assert source2.calls == 0
        tokenlease.flush_events()
        assert any(e["type"] == "refresh_succeeded" and e["from_store"] for e in events2)
        manager.revoke()
        assert "svc" not in store.records
        tokenlease.flush_events()
        assert events2[-1]["type"] == "revoked"


def test_source_may_return_a_dict_refresh_token_and_async_fetch():
    class AsyncSource:
        def __init__(self) -> None:
            self.fetches = 0
            self.refreshes: List[str] = []

        async def fetch(self) -> Dict[str, Any]:
            await asyncio.sleep(0.01)
            self.fetches += 1
            return {"value": "a1", "expires_in": 3600, "refresh_token": "r1", "token_type": "Bearer"}

        def refresh(self, refresh_token: str) -> Dict[str, Any]:
            self.refreshes.append(refresh_token)
            return {"value": "a2", "expires_in": 3600}

    source = AsyncSource()
    with Manager(source) as manager:
        first = manager.token_info()
        assert first.value == "a1" and first.token_type == "Bearer"
        manager.invalidate(first)
        assert manager.token() == "a2"
        assert source.fetches == 1 and source.refreshes == ["r1"]


def test_python_store_failure_is_an_event_not_a_caller_error():
    class BrokenStore(DictStore):
        def save(self, key: str, record: str) -> None:
            raise OSError("disk full")

    events: List[Dict[str, Any]] = []
    with Manager(CountingSource(), store=BrokenStore(), listener=events.append) as manager:
        assert manager.token() == "py-token-1"
        tokenlease.flush_events()
        errors = [e for e in events if e["type"] == "store_error"]
        assert errors and errors[0]["operation"] == "save"
        assert "disk full" in errors[0]["message"]
        assert manager.status().counters["store_errors"] == 1


def test_corrupt_store_record_is_ignored():
    store = DictStore()
    store.records["default"] = '{"version": 1, "value": "x"'
    with Manager(CountingSource(), store=store) as manager:
        assert manager.token() == "py-token-1"
        assert manager.status().counters["store_errors"] == 1


def test_listener_exception_does_not_break_the_manager(caplog):
    def listener(event: Dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    with Manager(CountingSource(), listener=listener) as manager:
        assert manager.token() == "py-token-1"
        tokenlease.flush_events()
        assert manager.token() == "py-token-1"
    errors = [r for r in caplog.records if r.name == "tokenlease" and r.exc_info]
    assert errors and "listener bug" in str(errors[0].exc_info[1])


def test_python_source_short_lifetime_refreshes_in_background():
    source = CountingSource(lifetime=2.0)
    policy = {"advisory_fraction": 0.5, "advisory_min_s": 0, "mandatory_fraction": 0.1, "mandatory_min_s": 0}
    with Manager(source, policy=policy) as manager:
        assert manager.token() == "py-token-1"
        time.sleep(1.6)
        assert source.calls >= 2
        assert manager.token() != "py-token-1"


def test_policy_errors_are_configuration_errors():
    with pytest.raises(tokenlease.ConfigurationError) as info:
        Manager(CountingSource(), policy={"advisory_fraction": 7})
    assert "advisory_fraction" in str(info.value)
    with pytest.raises(tokenlease.ConfigurationError) as info:
        Manager(CountingSource(), policy={"no_such_field": 1})
    assert "no_such_field" in str(info.value)
    with pytest.raises(TypeError):
        Manager(object())  # type: ignore[arg-type]
