"""A Redis-backed config from Python: separate processes share one token (one request).

The fixture starts a throwaway ``redis-server`` on 127.0.0.1. Without redis-server the
tests are skipped with a loud reason, except under CI (``CI=true``), where that is a failure
(scripts/test-all installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List

import pytest

import tokenlease
from tokenlease import Manager

# One manager per process, built from the config in argv[1]; waits for a line on stdin (so
# both processes call token() at once), then prints the token and the counters as JSON.
CHILD = r"""
import json, sys
from tokenlease import Manager
manager = Manager.from_config(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
token = manager.token()
counters = manager.status().counters
manager.close()
print(json.dumps({"token": token, "counters": counters}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(7) == b"+PONG\r\n"
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = (
            "SKIPPED LOUDLY: redis-server is not installed, the Redis store tests did not run "
            "(apt-get install -y redis-server)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _ping(port):
            assert process.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not answer PING in 10 s"
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _redis_config(server: Any, url: str, key: str) -> Dict[str, Any]:
    config: Dict[str, Any] = server.config(key=key)
    config["store"] = {"type": "redis", "url": url, "prefix": "pytest:"}
    return config


def test_two_processes_on_a_redis_config_make_one_token_request(server, redis_url):
    config = json.dumps(_redis_config(server, redis_url, "py-redis-shared"))
    # A slow token endpoint: both processes ask while the first request is in flight.
    server.control(latency_ms=500)
    children: List[subprocess.Popen[str]] = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, config],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=60)
            assert child.returncode == 0, out
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert results[0]["token"] == results[1]["token"]
    assert server.resource_status(results[0]["token"]) == 200
    assert server.stats()["token_requests"] == 1
    # One process fetched; the other adopted its record from Redis.
    fetches = sorted(r["counters"]["fetches"] for r in results)
    assert fetches == [0, 1], results
    assert sum(r["counters"]["store_loads"] for r in results) == 1, results
    assert all(r["counters"]["store_errors"] == 0 for r in results), results

    # A third manager (a restart, or another host) reuses the stored token.
    with Manager.from_config(config) as manager:
        assert manager.token() == results[0]["token"]
        assert manager.status().counters["store_loads"] == 1
    assert server.stats()["token_requests"] == 1


def test_redis_down_is_a_store_event_not_a_failure(server):
    port = _free_port()  # nothing listens there
    config = _redis_config(server, f"redis://127.0.0.1:{port}/", "py-redis-down")
    with Manager.from_config(config) as manager:
        started = time.monotonic()
        assert manager.token()
        assert time.monotonic() - started < 10
        assert manager.status().counters["store_errors"] >= 1
    assert server.stats()["token_requests"] == 1


@pytest.mark.parametrize(
    "url, expected",
    [
        ("nope://:hunter2@127.0.0.1:1/0", "invalid URL"),
        ("rediss://:hunter2@127.0.0.1:1/0#insecure", "#insecure"),
    ],
)
def test_bad_redis_urls_are_configuration_errors_without_the_password(server, url, expected):
    config = _redis_config(server, url, "py-redis-bad")
    with pytest.raises(tokenlease.ConfigurationError) as info:
        Manager.from_config(config)
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value)


def test_a_rediss_config_is_accepted(server):
    # Before the bindings were built with TLS (and Redis) this was a configuration error.
    port = _free_port()
    config = _redis_config(server, f"rediss://127.0.0.1:{port}/", "py-rediss")
    with Manager.from_config(config) as manager:
        assert manager.token()
        assert manager.status().counters["store_errors"] >= 1
