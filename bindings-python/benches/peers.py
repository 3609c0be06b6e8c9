"""tokenlease against its Python peers, side by side in one run, all against the project's
test token server (loopback, 100 ms added latency on the token endpoint):

    python bindings-python/benches/peers.py            # full run (about 1 minute)
    python bindings-python/benches/peers.py --quick    # smoke run (about 20 s)
    python bindings-python/benches/peers.py --record docs/benchmarks.md   # also append the table

Build tokenlease with --release first (TOKENLEASE_PY_RELEASE=1 ./scripts/test-python) and
install the peers into the same venv:
    pip install google-auth authlib httpx requests requests-oauthlib botocore

Scenarios (the same for every subject):
 (1) cost of getting a cached valid token, ns/op: one thread, a fresh 1-hour token, the
     median of several timed runs of each subject's per-request "get the token" call.
 (2) 64 threads released at once by a barrier on a cold cache, one call each: token
     requests the server saw.
 (3) tokens of 10 s lifetime under continuous load (8 threads, each: get, sleep 2 ms) for
     12 s after the first token: token requests during the load, blocked calls (a call that
     took >= 50 ms, i.e. waited on a token request; the server adds 100 ms) and failures.
 (4) a 5 s token-endpoint outage (HTTP 503) from 3 s to 8 s into the life of a 10 s token,
     i.e. covering the moment every subject with an early-refresh margin wants a new token;
     same load for 11 s: application-visible failures (exceptions from the get call).
 Scenarios (3) and (4) run every subject at the same time, each in its own process against
 its own server, so they share the machine but not a GIL or a server.

Fair configuration: every subject gets the same refresh margin tokenlease uses by default
for a 10 s token (refresh from 5 s before expiry; botocore's mandatory window = tokenlease's,
2 s). google-auth's margin is a module constant (`_helpers.REFRESH_THRESHOLD`, 3 min 45 s:
longer than the whole token) and is set to 5 s here; authlib gets `leeway=5`; botocore
`advisory_timeout=5, mandatory_timeout=2`; requests-oauthlib has no margin (it raises
`TokenExpiredError` once the token has expired and the application fetches again, as its
documentation shows). A "cold cache" is what each library starts from: no token for
tokenlease and google-auth; an already-expired token for authlib and requests-oauthlib
(their refresh path needs a token dict; without one their sessions send no token) and for
botocore (`create_from_metadata` needs initial metadata).

The "get cached token" call of each subject (what its transport does before each request):
  tokenlease            manager.token()
  google-auth           creds.before_request(transport_request, "GET", url, headers)
                        (what google.auth.transport.requests.AuthorizedSession calls;
                        checks validity / token_state, refreshes, writes the header)
  authlib (requests)    session.ensure_active_token(session.token); session.token["access_token"]
  authlib (httpx)       client.ensure_active_token(client.token); client.token["access_token"]
                        (both: what OAuth2Session.request / OAuth2Client.request run)
  requests-oauthlib     session._client.add_token(url, "GET", None, {}) (what
                        OAuth2Session.request runs), on TokenExpiredError fetch_token + retry
  botocore              creds.get_frozen_credentials().token
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the token server is http://127.0.0.1
# Failures are counted, not printed: keep the libraries' own warnings (tokenlease, botocore,
# google-auth's refresh thread log them) off stderr.
logging.getLogger().addHandler(logging.NullHandler())
warnings.filterwarnings("ignore", message=".*httpx.*deprecated")

REPO = Path(__file__).resolve().parents[2]
# Measure this checkout's build (`maturin develop` puts the extension next to the sources):
# the shared venv's editable install may point at another checkout.
_CHECKOUT_PACKAGE = REPO / "bindings-python" / "python"
if list((_CHECKOUT_PACKAGE / "tokenlease").glob("_native*.so")):
    sys.path.insert(0, str(_CHECKOUT_PACKAGE))
CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-secret"
API_URL = "https://api.example/resource"  # the resource each "request" would go to (never called)
MARGIN_S = 5  # tokenlease's default advisory window for a 10 s token
MANDATORY_S = 2  # tokenlease's default mandatory window for a 10 s token
LATENCY_MS = 100
BLOCKED_S = 0.050
EXPIRED = {"access_token": "expired", "token_type": "Bearer", "expires_at": 1}


# --------------------------------------------------------------------------- server


def server_binary() -> Path:
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
        subprocess.run(["cargo", "build", "-q", "-p", "tokenlease-test-server"], cwd=REPO,
                       check=True, env={**os.environ, "CARGO_TARGET_DIR": target})
    return binary


class Server:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [str(server_binary()), "--max-lifetime-s", "600", "--default-ttl-s", "3600"],
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        prefix = "TOKENLEASE_TEST_SERVER_URL="
        assert line.startswith(prefix), line
        self.url = line[len(prefix):]
        self.token_url = self.url + "/oauth/token"

    def stats(self) -> Dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def control(self, **control: Any) -> None:
        request = urllib.request.Request(
            self.url + "/control", data=json.dumps(control).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def reset(self, ttl_s: int) -> None:
        self.control(reset_stats=True, clear_outage=True, latency_ms=LATENCY_MS,
                     default_ttl_s=ttl_s)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --------------------------------------------------------------------------- subjects

Getter = Callable[[], str]


def make_tokenlease(token_url: str, cold: bool) -> Tuple[Getter, Callable[[], None]]:
    from tokenlease import Manager

    manager = Manager.from_config({"source": {
        "type": "oauth2_client_credentials", "token_url": token_url,
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}})
    if not cold:
        manager.token()
    return manager.token, manager.close


def make_google(token_url: str, cold: bool, non_blocking: bool) -> Tuple[Getter, Callable[[], None]]:
    import google.auth.credentials
    import google.auth.exceptions
    import google.auth.transport.requests
    import requests
    from google.auth import _helpers

    # google-auth's early-refresh margin is a module constant (3 min 45 s by default, more
    # than the whole 10 s token); give it the margin every subject gets.
    _helpers.REFRESH_THRESHOLD = dt.timedelta(seconds=MARGIN_S)
    basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()

    class ClientCredentials(google.auth.credentials.Credentials):
        """client_credentials the way google-auth's own credentials refresh."""

        def refresh(self, request: Any) -> None:
            response = request(url=token_url, method="POST",
                               body="grant_type=client_credentials",
                               headers={"Content-Type": "application/x-www-form-urlencoded",
                                        "Authorization": basic})
            if response.status != 200:
                raise google.auth.exceptions.RefreshError(f"token endpoint: {response.status}")
            data = json.loads(response.data)
            self.token = data["access_token"]
            self.expiry = _helpers.utcnow() + dt.timedelta(seconds=data["expires_in"])

    session = requests.Session()
    transport = google.auth.transport.requests.Request(session)
    creds = ClientCredentials()
    if non_blocking:
        creds.with_non_blocking_refresh()
    if not cold:
        creds.refresh(transport)
    headers: Dict[str, str] = {}

    def get() -> str:
        creds.before_request(transport, "GET", API_URL, headers)
        return headers["authorization"]

    return get, session.close


def make_authlib(token_url: str, cold: bool, flavour: str) -> Tuple[Getter, Callable[[], None]]:
    if flavour == "requests":
        from authlib.integrations.requests_client import OAuth2Session as Client
    else:
        from authlib.integrations.httpx_client import OAuth2Client as Client  # type: ignore[assignment]
    client = Client(CLIENT_ID, CLIENT_SECRET, token_endpoint=token_url,
                    grant_type="client_credentials", leeway=MARGIN_S,
                    token=dict(EXPIRED) if cold else None)
    if not cold:
        client.fetch_token()

    def get() -> str:
        client.ensure_active_token(client.token)
        return client.token["access_token"]  # type: ignore[no-any-return]

    return get, client.close


def make_requests_oauthlib(token_url: str, cold: bool) -> Tuple[Getter, Callable[[], None]]:
    from oauthlib.oauth2 import BackendApplicationClient, TokenExpiredError
    from requests_oauthlib import OAuth2Session

    client = BackendApplicationClient(client_id=CLIENT_ID)
    session = OAuth2Session(client=client, token=dict(EXPIRED) if cold else None)

    def fetch() -> None:
        session.fetch_token(token_url=token_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                            timeout=30)

    if not cold:
        fetch()

    def get() -> str:
        try:
            _, headers, _ = client.add_token(API_URL, "GET", None, {})
        except TokenExpiredError:
            fetch()
            _, headers, _ = client.add_token(API_URL, "GET", None, {})
        return headers["Authorization"]  # type: ignore[no-any-return]

    return get, session.close


def make_botocore(token_url: str, cold: bool) -> Tuple[Getter, Callable[[], None]]:
    import requests
    from botocore.credentials import RefreshableCredentials

    session = requests.Session()

    def refresh_using() -> Dict[str, str]:
        response = session.post(token_url, data={"grant_type": "client_credentials"},
                                auth=(CLIENT_ID, CLIENT_SECRET), timeout=30)
        response.raise_for_status()
        data = response.json()
        expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=data["expires_in"])
        return {"access_key": CLIENT_ID, "secret_key": "-", "token": data["access_token"],
                "expiry_time": expiry.isoformat()}

    metadata = ({"access_key": CLIENT_ID, "secret_key": "-", "token": "expired",
                 "expiry_time": "1970-01-01T00:00:01+00:00"} if cold else refresh_using())
    creds = RefreshableCredentials.create_from_metadata(
        metadata, refresh_using=refresh_using, method="custom",
        advisory_timeout=MARGIN_S, mandatory_timeout=MANDATORY_S)

    def get() -> str:
        return creds.get_frozen_credentials().token  # type: ignore[no-any-return]

    return get, session.close


SUBJECTS: Dict[str, Callable[[str, bool], Tuple[Getter, Callable[[], None]]]] = {
    "tokenlease": make_tokenlease,
    "google-auth (blocking refresh)": lambda u, c: make_google(u, c, False),
    "google-auth (non-blocking refresh)": lambda u, c: make_google(u, c, True),
    "authlib (requests OAuth2Session)": lambda u, c: make_authlib(u, c, "requests"),
    "authlib (httpx OAuth2Client)": lambda u, c: make_authlib(u, c, "httpx"),
    "requests-oauthlib (BackendApplicationClient)": make_requests_oauthlib,
    "botocore (RefreshableCredentials)": make_botocore,
}


# --------------------------------------------------------------------------- scenarios


def runs_of(call: Getter, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n // 10):
        call(); call(); call(); call(); call(); call(); call(); call(); call(); call()  # noqa: E702
    return (time.perf_counter_ns() - start) / (n // 10 * 10)


def cached_ns(server: Server, name: str, quick: bool) -> float:
    server.reset(3600)
    server.control(latency_ms=0)
    get, close = SUBJECTS[name](server.token_url, False)
    get()
    per_op = runs_of(get, 2000)
    budget_s = 0.05 if quick else 0.25
    n = max(1000, int(budget_s * 1e9 / max(per_op, 1.0)))
    results = [runs_of(get, n) for _ in range(3 if quick else 7)]
    close()
    return statistics.median(results)


def cold_burst(server: Server, name: str, threads: int = 64) -> Dict[str, Any]:
    server.reset(3600)
    get, close = SUBJECTS[name](server.token_url, True)
    barrier = threading.Barrier(threads)
    failures = [0]
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            get()
        except Exception:
            with lock:
                failures[0] += 1

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    close()
    return {"requests": server.stats()["token_requests"], "failures": failures[0],
            "elapsed_ms": elapsed * 1000}


def load(get: Getter, seconds: float, threads: int = 8,
         at: Optional[Tuple[float, Callable[[], None]]] = None) -> Dict[str, Any]:
    """`threads` threads call get() then sleep 2 ms, for `seconds`; `at` = (t, action)."""
    lock = threading.Lock()
    totals = {"calls": 0, "blocked": 0, "failures": 0, "max_ms": 0.0}
    start = time.monotonic()
    deadline = start + seconds

    def worker() -> None:
        calls = blocked = failures = 0
        worst = 0.0
        while True:
            t0 = time.perf_counter()
            if t0 > deadline:
                break
            try:
                get()
            except Exception:
                failures += 1
            took = time.perf_counter() - t0
            calls += 1
            if took >= BLOCKED_S:
                blocked += 1
            worst = max(worst, took)
            time.sleep(0.002)
        with lock:
            totals["calls"] += calls
            totals["blocked"] += blocked
            totals["failures"] += failures
            totals["max_ms"] = max(totals["max_ms"], worst * 1000)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    if at is not None:
        time.sleep(max(0.0, start + at[0] - time.monotonic()))
        at[1]()
    for w in workers:
        w.join()
    return totals


def worker_main(name: str, quick: bool) -> None:
    """Scenarios (3) and (4) for one subject, against its own server; prints one JSON line."""
    server = Server()
    try:
        # (3) 10 s tokens, continuous load.
        server.reset(10)
        get, close = SUBJECTS[name](server.token_url, False)
        server.control(reset_stats=True)
        refresh = load(get, 6.0 if quick else 12.0)
        refresh["requests"] = server.stats()["token_requests"]
        close()
        # (4) a 5 s outage from 3 s to 8 s into the life of a fresh 10 s token.
        server.reset(10)
        get, close = SUBJECTS[name](server.token_url, False)
        server.control(reset_stats=True)
        outage = load(get, 11.0, at=(3.0, lambda: server.control(
            outage={"mode": "status503", "duration_ms": 5000})))
        outage["requests"] = server.stats()["token_requests"]
        close()
    finally:
        server.close()
    print(json.dumps({"refresh": refresh, "outage": outage}), flush=True)


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} cores (shared with other jobs, noisy), {cpu}, "
            f"{platform.system()} {platform.machine()}, CPython {platform.python_version()}, "
            f"load average {load1:.1f} at the start")


def versions() -> str:
    from importlib.metadata import version

    names = ["tokenlease", "google-auth", "authlib", "httpx", "requests", "requests-oauthlib",
             "oauthlib", "botocore"]
    out = []
    for n in names:
        try:
            out.append(f"{n} {version(n)}")
        except Exception:
            out.append(f"{n} (missing)")
    return ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (~20 s)")
    parser.add_argument("--only", help="comma-separated subject name prefixes")
    parser.add_argument("--record", metavar="MARKDOWN", help="append the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.quick)
        return

    names = list(SUBJECTS)
    if args.only:
        prefixes = [p.strip() for p in args.only.split(",")]
        names = [n for n in names if any(n.startswith(p) for p in prefixes)]
    started = time.monotonic()
    description = machine()
    import tokenlease._native

    print(f"# {description}\n# {versions()}\n# tokenlease from {tokenlease._native.__file__}",
          flush=True)

    # (3) + (4): every subject at once, each in its own process with its own server.
    workers = {
        name: subprocess.Popen(
            [sys.executable, __file__, "--worker", name] + (["--quick"] if args.quick else []),
            stdout=subprocess.PIPE, text=True)
        for name in names
    }
    # (1) + (2): one subject after the other, in this process, while (3)/(4) are running
    # would distort (1); so wait for them first.
    loaded: Dict[str, Dict[str, Any]] = {}
    for name, process in workers.items():
        out, _ = process.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if process.returncode != 0 or not lines:
            raise SystemExit(f"worker {name!r} failed (exit {process.returncode})")
        loaded[name] = json.loads(lines[-1])
        print(f"# (3)/(4) {name}: {loaded[name]}", flush=True)

    server = Server()
    rows: List[Dict[str, Any]] = []
    try:
        for name in names:
            cached = cached_ns(server, name, args.quick)
            cold = cold_burst(server, name)
            rows.append({"name": name, "cached_ns": cached, "cold": cold, **loaded[name]})
            print(f"# {name}: (1) {cached:.0f} ns/op, (2) {cold}", flush=True)
    finally:
        server.close()
    elapsed = time.monotonic() - started

    best_peer = min((r["cached_ns"] for r in rows if r["name"] != "tokenlease"), default=None)
    table = [
        "| Subject | (1) cached get, ns/op | (2) token requests, 64 threads cold | "
        "(3) 10 s tokens, 12 s load: token requests / blocked calls / failures | "
        "(4) 5 s outage: failures (blocked calls) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cold = r["cold"]
        cold_cell = f"{cold['requests']}" + (f" ({cold['failures']} failed)" if cold["failures"] else "")
        ref, out = r["refresh"], r["outage"]
        name = f"**{r['name']}**" if r["name"] == "tokenlease" else r["name"]
        table.append(
            f"| {name} | {r['cached_ns']:.0f} | {cold_cell} | "
            f"{ref['requests']} / {ref['blocked']} / {ref['failures']} "
            f"(of {ref['calls']} calls, max {ref['max_ms']:.0f} ms) | "
            f"{out['failures']} ({out['blocked']}) of {out['calls']} calls |")
    table_text = "\n".join(table)
    print()
    print(table_text)
    tl = next((r for r in rows if r["name"] == "tokenlease"), None)
    verdict = []
    if tl is not None:
        c = tl["cached_ns"]
        verdict.append(f"(1) {c:.0f} ns/op: target <= 200 ns {'met' if c <= 200 else 'MISSED'}"
                       f" (aim <= 100 ns {'met' if c <= 100 else 'missed'})"
                       + ("" if best_peer is None else
                          f"; fastest peer {best_peer:.0f} ns/op -> "
                          f"{'faster than every peer' if c < best_peer else 'NOT faster than every peer'}"))
        verdict.append(f"(2) {tl['cold']['requests']} token request(s): target 1 "
                       f"{'met' if tl['cold']['requests'] == 1 else 'MISSED'}")
        verdict.append(f"(3) {tl['refresh']['blocked']} blocked calls: target 0 "
                       f"{'met' if tl['refresh']['blocked'] == 0 else 'MISSED'}")
        verdict.append(f"(4) {tl['outage']['failures']} failures: target 0 "
                       f"{'met' if tl['outage']['failures'] == 0 else 'MISSED'}")
        print("\n" + "\n".join("tokenlease " + v for v in verdict))
    print(f"\n(run took {elapsed:.0f} s)")

    if args.record:
        command = "python bindings-python/benches/peers.py" + (" --quick" if args.quick else "")
        section = [
            "",
            f"## Python peers side by side — {dt.date.today().isoformat()}",
            "",
            f"Command: `TOKENLEASE_PY_RELEASE=1 ./scripts/test-python -q` (release build into the "
            f"venv), then `{command}` ({elapsed:.0f} s).",
            f"Machine: {description}.",
            f"Versions: {versions()}.",
            "",
            table_text,
            "",
            "tokenlease against the targets: " + "; ".join(verdict) + ".",
            "",
        ]
        with open(args.record, "a", encoding="utf-8") as f:
            f.write("\n".join(section))
        print(f"appended to {args.record}")


if __name__ == "__main__":
    main()
