"""Cost of getting a cached, fresh token from Python (ns/op), median of several runs.

    python bindings-python/benches/cached_token.py            # Python source (no server)
    python bindings-python/benches/cached_token.py URL        # OAuth2 config against the test server

Build the extension with --release first (TOKENLEASE_PY_RELEASE=1 ./scripts/test-python, or
`maturin develop --release` in bindings-python/ inside the venv).

Besides the bare calls it measures, side by side in the same run (runs interleaved, so
machine noise hits both alike), what an application sees: a method of the user's own class
that returns `self.manager.token()`, against the same method calling a plain Python method
that returns a cached string. It prints both medians and their ratio (target: at most 2x).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable, Dict, List

from tokenlease import FetchedToken, Manager

RUNS = 7


class Static:
    def fetch(self) -> FetchedToken:
        return FetchedToken(value="x" * 40, expires_in=3600)


class PlainCache:
    """The cheapest possible Python token cache: a method returning a stored string."""

    def __init__(self) -> None:
        self._value = "x" * 40

    def token(self) -> str:
        return self._value


class UserClient:
    """A user's own wrapper around whatever holds the token."""

    def __init__(self, manager: object) -> None:
        self.manager = manager

    def get_token(self) -> str:
        return self.manager.token()  # type: ignore[attr-defined,no-any-return]


def per_op_ns(call: Callable[[], object], n: int = 1_000_000) -> float:
    start = time.perf_counter_ns()
    for _ in range(n // 10):
        call(); call(); call(); call(); call(); call(); call(); call(); call(); call()  # noqa: E702
    return (time.perf_counter_ns() - start) / n


def empty() -> None:
    return None


def measure(cases: Dict[str, Callable[[], object]]) -> Dict[str, List[float]]:
    """Runs every case RUNS times, interleaved (case A, case B, A, B, ...)."""
    for call in cases.values():
        per_op_ns(call, 100_000)  # warm up (and let the interpreter specialise)
    runs: Dict[str, List[float]] = {name: [] for name in cases}
    for _ in range(RUNS):
        for name, call in cases.items():
            runs[name].append(per_op_ns(call))
    return runs


def main() -> None:
    if len(sys.argv) > 1:
        url = sys.argv[1].rstrip("/")
        manager = Manager.from_config({"source": {
            "type": "oauth2_client_credentials", "token_url": url + "/oauth/token",
            "client_id": "demo-client", "client_secret": "demo-secret"}})
    else:
        manager = Manager(Static())
    manager.token()
    cases: Dict[str, Callable[[], object]] = {
        "empty Python call (baseline)": empty,
        "Manager.token()": manager.token,
        "Manager.token_info()": manager.token_info,
    }
    native = getattr(manager, "_native", None)  # the forwarding layer of older versions
    if native is not None:
        cases["_native.token() (no wrapper)"] = native.token
    user_manager = UserClient(manager).get_token
    user_plain = UserClient(PlainCache()).get_token
    cases["wrapper -> Manager.token()"] = user_manager
    cases["wrapper -> plain Python method"] = user_plain
    runs = measure(cases)
    for name, times in runs.items():
        print(f"{name:32s} median {statistics.median(times):7.1f} ns/op  (min {min(times):.1f})")
    ratio = statistics.median(runs["wrapper -> Manager.token()"]) / statistics.median(
        runs["wrapper -> plain Python method"])
    print(f"{'ratio wrapper(Manager.token) / wrapper(plain method)':52s} {ratio:.2f}x  (target <= 2x)")
    manager.close()


if __name__ == "__main__":
    main()
