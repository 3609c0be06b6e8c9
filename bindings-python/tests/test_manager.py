"""Manager from config against the real test token server."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

import tokenlease
from tokenlease import Manager


def test_fetch_and_cache(server):
    with Manager.from_config(server.config()) as manager:
        first = manager.token()
        assert isinstance(first, str) and first
        for _ in range(100):
            assert manager.token() == first
        info = manager.token_info()
        assert info.value == first
        assert info.token_type.lower() == "bearer"
        assert info.generation == 1
        assert info.expires_at.tzinfo is not None
        remaining = info.expires_at - datetime.now(timezone.utc)
        assert timedelta(minutes=55) < remaining <= timedelta(hours=1, seconds=5)
        assert server.resource_status(first) == 200
        status = manager.status()
        assert status.state == "fresh"
        assert status.generation == 1
        assert status.counters["fetches"] == 1
    assert server.stats()["token_requests"] == 1


def test_config_as_json_text_and_key(server):
    import json

    with Manager.from_config(json.dumps(server.config(key="reports"))) as manager:
        assert manager.key == "reports"
        assert manager.token()


def test_64_threads_on_a_cold_cache_make_one_request(server):
    server.control(latency_ms=200)
    manager = Manager.from_config(server.config())
    barrier = threading.Barrier(64)
    results: list = []
    errors: list = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(manager.token())
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 64 and len(set(results)) == 1
    assert server.stats()["token_requests"] == 1
    manager.close()


def test_1000_asyncio_tasks_on_a_cold_cache_make_one_request(server):
    server.control(latency_ms=200)
    manager = Manager.from_config(server.config())

    async def main() -> list:
        return await asyncio.gather(*(manager.token_async() for _ in range(1000)))

    results = asyncio.run(main())
    assert len(results) == 1000 and len(set(results)) == 1
    assert server.stats()["token_requests"] == 1
    manager.close()


def test_token_async_does_not_block_the_event_loop(server):
    server.control(latency_ms=500)
    manager = Manager.from_config(server.config())

    async def main() -> int:
        ticks = 0
        task = asyncio.ensure_future(manager.token_info_async())
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        info = await task
        assert info.generation == 1
        return ticks

    # The loop kept running (~50 ticks) while the token request took 500 ms.
    assert asyncio.run(main()) >= 20
    manager.close()


def test_outage_while_the_token_is_valid_gives_no_errors(server):
    # Short-lived tokens refreshed at half-life, so background refreshes run into the outage.
    server.control(default_ttl_s=4)
    policy = dict(
        advisory_fraction=0.5,
        advisory_min_s=0,
        mandatory_fraction=0.1,
        mandatory_min_s=0,
        backoff_base_ms=100,
        backoff_cap_ms=500,
    )
    manager = Manager.from_config(server.config(**policy))
    first = manager.token()
    server.control(outage={"mode": "status503", "duration_ms": None})
    errors = 0
    served = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            served.add(manager.token())
        except tokenlease.TokenleaseError:
            errors += 1
        time.sleep(0.005)
    assert errors == 0
    assert served == {first}
    assert manager.status().counters["failures"] >= 1
    assert server.stats()["token_errors"] >= 1
    server.control(clear_outage=True)
    # Recovers with a new token once the server is back.
    deadline = time.monotonic() + 5.0
    while manager.token() == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager.token() != first
    manager.close()


def test_background_refresh_with_no_traffic(server):
    server.control(default_ttl_s=3)
    policy = dict(advisory_fraction=0.5, advisory_min_s=0, mandatory_fraction=0.1, mandatory_min_s=0)
    with Manager.from_config(server.config(**policy)) as manager:
        first = manager.token_info()
        time.sleep(2.5)  # no calls: the timer refreshes at ~1.5 s
        assert server.stats()["token_requests"] >= 2
        second = manager.token_info()
        assert second.generation > first.generation
        assert second.value != first.value


def test_invalidate_is_generation_guarded_and_revoke(server):
    with Manager.from_config(server.config()) as manager:
        first = manager.token_info()
        assert manager.invalidate(first) is True
        second = manager.token_info()
        assert second.generation == first.generation + 1
        # A late rejection of the old token does not discard the new one.
        assert manager.invalidate(first.generation) is False
        assert manager.invalidate(first.value) is False
        assert manager.token() == second.value
        assert manager.invalidate(second.value) is True
        third = manager.token_info()
        assert third.generation == second.generation + 1
        manager.revoke()
        assert server.stats()["revocations"] == 1
        assert server.resource_status(third.value) == 401
        assert manager.token() != third.value
        with pytest.raises(TypeError):
            manager.invalidate(True)  # type: ignore[arg-type]


def test_early_server_expiry_recovered_by_one_shared_reauth(server):
    with Manager.from_config(server.config()) as manager:
        old = manager.token_info()
        server.control(revoke_all=True, reset_stats=True)
        assert server.resource_status(old.value) == 401
        # Many callers see the 401 for the same token: one re-auth.
        for _ in range(10):
            manager.invalidate(old.generation)
        new = manager.token_info()
        assert new.generation == old.generation + 1
        assert server.resource_status(new.value) == 200
        assert server.stats()["token_requests"] == 1


def test_close_and_context_manager(server):
    with Manager.from_config(server.config()) as manager:
        manager.token()
    assert manager.closed
    with pytest.raises(tokenlease.ClosedError) as info:
        manager.token()
    assert info.value.code == 10 and info.value.kind == "closed"


def test_async_context_manager(server):
    async def main() -> None:
        async with Manager.from_config(server.config()) as manager:
            assert await manager.token_async()
            assert await manager.token_async() == manager.token()
        assert manager.closed

    asyncio.run(main())
