"""Cost of getting a cached, fresh token from Python (ns/op), median of several runs.

    python bindings-python/benches/cached_token.py            # Python source (no server)
    python bindings-python/benches/cached_token.py URL        # OAuth2 config against the test server

Build the extension with --release first (TOKENLEASE_PY_RELEASE=1 ./scripts/test-python, or
`maturin develop --release` in bindings-python/).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

from tokenlease import FetchedToken, Manager


class Static:
    def fetch(self) -> FetchedToken:
        return FetchedToken(value="x" * 40, expires_in=3600)


def per_op_ns(call: Callable[[], object], n: int = 1_000_000) -> float:
    start = time.perf_counter_ns()
    for _ in range(n // 10):
        call(); call(); call(); call(); call(); call(); call(); call(); call(); call()  # noqa: E702
    return (time.perf_counter_ns() - start) / n


def empty() -> None:
    return None


def main() -> None:
    if len(sys.argv) > 1:
        url = sys.argv[1].rstrip("/")
        manager = Manager.from_config({"source": {
            "type": "oauth2_client_credentials", "token_url": url + "/oauth/token",
            "client_id": "demo-client", "client_secret": "demo-secret"}})
    else:
        manager = Manager(Static())
    manager.token()
    for name, call in [
        ("empty Python call (baseline)", empty),
        ("Manager.token()", manager.token),
        ("_native.token() (no wrapper)", manager._native.token),
        ("Manager.token_info()", manager.token_info),
    ]:
        runs = [per_op_ns(call) for _ in range(7)]
        print(f"{name:32s} median {statistics.median(runs):7.1f} ns/op  (min {min(runs):.1f})")
    manager.close()


if __name__ == "__main__":
    main()
