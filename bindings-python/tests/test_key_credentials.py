"""Key credentials (issue 17) from Python, each kind end to end from the shared configuration,
against real servers:

- npm ``oidc-provider`` (tests/oidc/server.js, under ``/realms/tl``, ``--client-keys-out``):
  private_key_jwt (RS256 and ES256, the server's own client keys) and client_secret_jwt; a
  wrong key is ``InvalidCredentialsError``; a key file others may read is refused;
- DPoP (RFC 9449) at oidc-provider, which demands server nonces everywhere: client
  credentials give a bound token (``token_type`` ``DPoP``, ``cnf.jkt``), ``dpop_proof`` is an
  ES256 ``dpop+jwt``; a user login of ``tokenlease-app`` bound with DPoP calls the userinfo
  API (``GET <issuer>/me``) through the requests and httpx adapters; and a local resource
  server with nonces of its own: the adapters send once more on a 401 with a new
  ``DPoP-Nonce`` (once only), replay bodies, give a same-origin redirect a proof for the new
  URL, and strip the proof on a redirect to another origin;
- a Google service-account key file made here with ``openssl``, against the project's test
  token server started with ``--jwt-bearer-keys`` (it verifies the RS256 signature);
- token exchange with ``subject_token_file``, rewritten between exchanges;
- mutual TLS (RFC 8705): oidc-provider over TLS with a CA, server, client and self-signed
  certificates made here with ``openssl``: tls_client_auth and self_signed_tls_client_auth
  authenticate and bind the token (``cnf.x5t#S256``), a wrong certificate is
  ``InvalidCredentialsError``.

No key, token or proof reaches a repr, an exception message or the log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import json
import logging
import os
import shutil
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest
import requests

import tokenlease
from tokenlease import Manager
from tokenlease.httpx_auth import TokenleaseHttpxAuth
from tokenlease.requests_auth import TokenleaseAuth

from conftest import _server_binary
from test_interop import (
    BASIC_CLIENT,
    MOUNT,
    REDIRECT_URI,
    REPO,
    SECRET,
    OidcProvider,
    Process,
    _missing,
)

CLIENT_JWT_SECRET = "tokenlease-client-secret-jwt-0123456789-abcdefghij"


def _b64url_json(part: str) -> Dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def _jwt(token: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    header, claims, _signature = token.split(".")
    return _b64url_json(header), _b64url_json(claims)


def _ath(token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()


def _write_secret(path: Path, content: str) -> None:
    """A file only its owner may read (what the secret-file check wants)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(content)
    os.chmod(path, 0o600)


def _openssl(*args: str, cwd: Optional[Path] = None) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def _start_oidc(*args: str, mount: bool = True) -> OidcProvider:
    node = shutil.which("node")
    if node is None or not (REPO / "tests/oidc/node_modules/oidc-provider/package.json").is_file():
        _missing("oidc-provider (tests/oidc/node_modules) or Node.js is missing: run ./scripts/setup-oidc")
    command = [
        node or "node",
        str(REPO / "tests/oidc/server.js"),
        "--lifetime",
        "300",
        "--exit-with-stdin",
        *args,
    ]
    if mount:
        command += ["--mount", MOUNT]
    return OidcProvider(Process(command, "OIDC_PROVIDER_URL"))


@pytest.fixture(scope="module")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-keys")


@pytest.fixture(scope="module")
def oidc(client_keys: Path) -> Iterator[OidcProvider]:
    """oidc-provider under /realms/tl, its signed-assertion clients' keys written to
    ``client_keys`` (tokenlease-pkjwt.pem, tokenlease-pkjwt-es.pem)."""
    provider = _start_oidc("--client-keys-out", str(client_keys))
    try:
        yield provider
    finally:
        provider.process.stop()


def _no_secret_in_log(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    text = caplog.text + "".join(repr(record.__dict__) for record in caplog.records)
    for secret in secrets:
        assert secret not in text


# ---- signed client assertions ----


def _pkjwt_config(oidc: OidcProvider, client_id: str, alg: str, key: Path) -> Dict[str, Any]:
    return {
        "source": {
            "type": "oauth2",
            "issuer": oidc.issuer,
            "client_id": client_id,
            "scopes": ["api:read"],
            "client_auth": {
                "private_key_jwt": {
                    "key": {"file": str(key)},
                    "alg": alg,
                    "kid": "pkjwt-rs" if alg == "RS256" else "pkjwt-es",
                }
            },
        }
    }


def test_private_key_jwt_rs256_and_es256_and_client_secret_jwt(
    oidc: OidcProvider, client_keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenlease")
    grants = oidc.grants("client_credentials")
    for client_id, alg in [("tokenlease-pkjwt", "RS256"), ("tokenlease-pkjwt-es", "ES256")]:
        key = client_keys / f"{client_id}.pem"
        pem = key.read_text()
        with Manager.from_config(_pkjwt_config(oidc, client_id, alg, key)) as manager:
            first = manager.token_info()
            assert first.token_type == "Bearer"
            introspection = oidc.introspect(first.value)
            assert introspection["active"] is True and introspection["client_id"] == client_id
            # A new assertion per request (the server refuses a replayed jti).
            assert manager.invalidate(first)
            second = manager.token_info()
            assert second.value != first.value
            assert pem not in repr(manager) and "PRIVATE KEY" not in repr(manager)
        tokenlease.flush_events()
        _no_secret_in_log(caplog, pem.splitlines()[1], first.value, second.value)
    assert oidc.grants("client_credentials") == grants + 4

    # client_secret_jwt: an HS256 assertion signed with the client secret.
    secret_jwt = {
        "source": {
            "type": "oauth2",
            "issuer": oidc.issuer,
            "client_id": "tokenlease-secretjwt",
            "client_secret": CLIENT_JWT_SECRET,
            "client_auth": "client_secret_jwt",
            "scopes": ["api:read"],
        }
    }
    with Manager.from_config(secret_jwt) as manager:
        token = manager.token()
        assert oidc.introspect(token)["client_id"] == "tokenlease-secretjwt"

    # The wrong key (the ES client's key for the RS client): client authentication fails.
    wrong = _pkjwt_config(oidc, "tokenlease-pkjwt", "ES256", client_keys / "tokenlease-pkjwt-es.pem")
    with Manager.from_config(wrong) as manager:
        with pytest.raises(tokenlease.InvalidCredentialsError) as info:
            manager.token()
    es_pem = (client_keys / "tokenlease-pkjwt-es.pem").read_text()
    for text in (str(info.value), repr(info.value)):
        assert "PRIVATE KEY" not in text and es_pem.splitlines()[1] not in text

    # A key file others may read is refused before anything is sent.
    readable = tmp_path / "readable.pem"
    readable.write_text(pem)
    os.chmod(readable, 0o644)
    with pytest.raises(tokenlease.ConfigurationError) as refused:
        Manager.from_config(_pkjwt_config(oidc, "tokenlease-pkjwt", "RS256", readable))
    assert "PRIVATE KEY" not in str(refused.value)


# ---- DPoP ----


def _dpop_config(oidc: OidcProvider) -> Dict[str, Any]:
    return {
        "source": {
            "type": "oauth2",
            "issuer": oidc.issuer,
            "client_id": "tokenlease-dpop",
            "client_secret": SECRET,
            "scopes": ["api:read"],
            "dpop": True,
        }
    }


def test_dpop_client_credentials_give_a_bound_token_and_proofs(
    oidc: OidcProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenlease")
    nonce_challenges = oidc.errors("use_dpop_nonce")
    with Manager.from_config(_dpop_config(oidc)) as manager:
        info = manager.token_info()
        assert info.token_type == "DPoP", "a bound token is never Bearer"
        introspection = oidc.introspect(info.value)
        assert introspection["active"] is True
        assert introspection["cnf"]["jkt"], introspection
        # The server asked for its nonce once; the token request went again with it.
        assert oidc.errors("use_dpop_nonce") == nonce_challenges + 1

        assert manager.request_header(info) == ("authorization", f"DPoP {info.value}")
        url = "https://api.example/v1/items?page=2#top"
        proof = manager.dpop_proof(info, "post", url)
        assert proof is not None
        header, claims = _jwt(proof)
        assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
        assert header["jwk"]["kty"] == "EC" and "d" not in header["jwk"]
        assert claims["htm"] == "POST"
        assert claims["htu"] == "https://api.example/v1/items"
        assert claims["ath"] == _ath(info.value)
        again = manager.dpop_proof(info, "POST", url)
        assert again is not None and _jwt(again)[1]["jti"] != claims["jti"]
        with pytest.raises(tokenlease.UsageError) as usage:
            manager.dpop_proof(info, "GET", "/relative")
        assert info.value not in str(usage.value)
        # A response without a nonce teaches nothing.
        assert manager.remember_dpop_nonce(url, {"Content-Type": "text/plain"}) is False
        assert manager.remember_dpop_nonce(url, [("DPoP-Nonce", "n-1")]) is True
        assert manager.remember_dpop_nonce(url, [("DPoP-Nonce", "n-1")]) is False
        assert manager.remember_dpop_nonce("not a url", [("DPoP-Nonce", "n-2")]) is False
        nonced = manager.dpop_proof(info, "GET", url)
        assert nonced is not None and _jwt(nonced)[1]["nonce"] == "n-1"
        with pytest.raises(TypeError, match="remember_dpop_nonce"):
            manager.remember_dpop_nonce(url, [("DPoP-Nonce", 1)])  # type: ignore[list-item]
        # Whether to send once more is core's answer: a 401 with a new nonce, for this
        # DPoP-bound token only; every nonce is kept, also from a 200.
        assert manager.dpop_resend("DPoP", url, 200, [("DPoP-Nonce", "n-3")]) is False
        assert manager.dpop_resend("DPoP", url, 401, [("DPoP-Nonce", "n-3")]) is False
        assert manager.dpop_resend("DPoP", url, 401, [("DPoP-Nonce", "n-4")]) is True
        assert manager.dpop_resend("Bearer", url, 401, [("DPoP-Nonce", "n-5")]) is False
        latest = manager.dpop_proof(info, "GET", url)
        assert latest is not None and _jwt(latest)[1]["nonce"] == "n-5"
        with pytest.raises(TypeError, match="dpop_resend"):
            manager.dpop_resend("DPoP", url, 401, [("DPoP-Nonce", 1)])  # type: ignore[list-item]
        assert info.value not in repr(info) and proof not in repr(info)
        with pytest.raises(TypeError):
            manager.dpop_proof(info.value, "GET", url)  # type: ignore[arg-type]
    tokenlease.flush_events()
    _no_secret_in_log(caplog, info.value, proof)

    # The same client without DPoP is refused (the server requires it).
    plain = _dpop_config(oidc)
    del plain["source"]["dpop"]
    with Manager.from_config(plain) as manager:
        with pytest.raises(tokenlease.TokenleaseError):
            manager.token()

    # Bearer tokens get no proof.
    with Manager.from_config(oidc.config()) as manager:
        bearer = manager.token_info()
        assert manager.dpop_proof(bearer, "GET", oidc.issuer + "/me") is None
        assert manager.remember_dpop_nonce(oidc.issuer, {"DPoP-Nonce": "x"}) is False


def test_dpop_user_login_calls_userinfo_through_the_adapters(oidc: OidcProvider) -> None:
    config = oidc.user_login_config()
    config["source"]["dpop"] = True
    with Manager.from_config(config) as manager:
        request = manager.begin_login(REDIRECT_URI)
        login = manager.complete_login(request, oidc.browser_authorize(request.url))
        assert login.token_type == "DPoP"
        assert oidc.introspect(login.value)["cnf"]["jkt"]

        me = oidc.issuer + "/me"
        response = requests.get(me, auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 200, (response.status_code, response.headers)
        assert response.json()["sub"] == "alice"
        assert response.request.headers["Authorization"] == f"DPoP {login.value}"
        _header, claims = _jwt(response.request.headers["DPoP"])
        assert claims["htu"] == me and claims["htm"] == "GET" and claims["nonce"]
        with httpx.Client(auth=TokenleaseHttpxAuth(manager), timeout=10) as client:
            answer = client.get(me)
            assert answer.status_code == 200 and answer.json()["sub"] == "alice"

        async def call_async() -> httpx.Response:
            async with httpx.AsyncClient(auth=TokenleaseHttpxAuth(manager), timeout=10) as client:
                return await client.get(me)

        answer = asyncio.run(call_async())
        assert answer.status_code == 200 and answer.json()["sub"] == "alice"

        # Without a proof the bound token is refused.
        bare = requests.get(me, headers={"Authorization": f"DPoP {login.value}"}, timeout=10)
        assert bare.status_code in (400, 401)

        # The refresh stays bound, and the new token works at the API too.
        assert manager.invalidate(login)
        refreshed = manager.token_info()
        assert refreshed.token_type == "DPoP" and refreshed.value != login.value
        response = requests.get(me, auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 200 and response.json()["sub"] == "alice"


class _DpopApi:
    """A resource server on 127.0.0.1 that wants DPoP proofs with its own nonce (RFC 9449
    §9): a proof without the current nonce gets ``401`` ``WWW-Authenticate: DPoP
    error="use_dpop_nonce"`` and ``DPoP-Nonce``. It checks the proof's ``htm``, ``htu`` and
    ``ath`` (not its signature: oidc-provider's userinfo does that above).

    ``/api``: 200 with the body it got; ``/rotate``: a 401 with a new nonce every time;
    ``/redirect``: 302 to ``/api``; ``/away``: 302 to ``other`` + ``/api``; ``/nonce-on-ok``:
    200 that brings a new nonce."""

    def __init__(self) -> None:
        self.nonce = "api-nonce-1"
        self.rotations = 0
        self.seen: List[Dict[str, Any]] = []
        self.other = ""
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.handle_any()

            def do_POST(self) -> None:
                self.handle_any()

            def answer(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urllib.parse.urlsplit(self.path).path
                proof = self.headers.get("DPoP")
                authorization = self.headers.get("Authorization")
                seen: Dict[str, Any] = {
                    "method": self.command,
                    "path": path,
                    "proof": proof,
                    "authorization": authorization,
                    "body": body,
                }
                if proof is not None:
                    seen["claims"] = _jwt(proof)[1]
                api.seen.append(seen)
                if path == "/redirect":
                    return self.answer(302, headers={"Location": "/api?from=redirect"})
                if path == "/away":
                    return self.answer(302, headers={"Location": api.other + "/api"})
                if proof is None or authorization is None or not authorization.startswith("DPoP "):
                    return self.answer(401, headers={"WWW-Authenticate": 'DPoP algs="ES256"'})
                header, claims = _jwt(proof)
                origin = f"http://127.0.0.1:{self.server.server_address[1]}"
                if (
                    header.get("typ") != "dpop+jwt"
                    or claims.get("htm") != self.command
                    or claims.get("htu") != origin + path
                    or claims.get("ath") != _ath(authorization[len("DPoP "):])
                ):
                    return self.answer(
                        401, headers={"WWW-Authenticate": 'DPoP error="invalid_dpop_proof"'}
                    )
                if path == "/rotate":
                    api.rotations += 1
                    return self.answer(
                        401,
                        headers={
                            "WWW-Authenticate": 'DPoP error="use_dpop_nonce"',
                            "DPoP-Nonce": f"rotating-{api.rotations}",
                        },
                    )
                if claims.get("nonce") != api.nonce:
                    return self.answer(
                        401,
                        b'{"error":"use_dpop_nonce"}',
                        {
                            "WWW-Authenticate": 'DPoP error="use_dpop_nonce"',
                            "DPoP-Nonce": api.nonce,
                        },
                    )
                if path == "/nonce-on-ok":
                    api.nonce = "api-nonce-2"
                    return self.answer(200, b"ok", {"DPoP-Nonce": api.nonce})
                return self.answer(200, b"got:" + body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self) -> List[Dict[str, Any]]:
        seen, self.seen = self.seen, []
        return seen

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dpop_api() -> Iterator[Tuple[_DpopApi, _DpopApi]]:
    api, other = _DpopApi(), _DpopApi()
    api.other = other.url
    try:
        yield api, other
    finally:
        api.close()
        other.close()


def test_adapters_follow_a_resource_servers_dpop_nonce_once(
    oidc: OidcProvider, dpop_api: Tuple[_DpopApi, _DpopApi]
) -> None:
    api, other = dpop_api
    with Manager.from_config(_dpop_config(oidc)) as manager:
        token = manager.token()

        # requests: the first call meets the API's nonce (401), then is sent once more with
        # it, the body replayed; the next call carries the nonce from the start.
        response = requests.post(api.url + "/api", data=b"payload", auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 200 and response.content == b"got:payload"
        assert [r.status_code for r in response.history] == [401]
        first, second = api.take()
        assert "nonce" not in first["claims"] and second["claims"]["nonce"] == "api-nonce-1"
        assert first["claims"]["jti"] != second["claims"]["jti"]
        assert second["authorization"] == f"DPoP {token}" and second["body"] == b"payload"
        response = requests.get(api.url + "/api", auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 200 and not response.history
        assert len(api.take()) == 1

        # A nonce that comes with a 200 is kept for the next proof.
        assert requests.get(api.url + "/nonce-on-ok", auth=TokenleaseAuth(manager), timeout=10).ok
        assert requests.get(api.url + "/api", auth=TokenleaseAuth(manager), timeout=10).ok
        assert [seen["claims"]["nonce"] for seen in api.take()] == ["api-nonce-1", "api-nonce-2"]

        # A redirect within the origin: the hop gets a proof for its own URL.
        response = requests.get(api.url + "/redirect", auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 200, [seen.get("claims") for seen in api.seen]
        redirect, hop = api.take()
        assert redirect["claims"]["htu"] == api.url + "/redirect"
        assert hop["claims"]["htu"] == api.url + "/api" and hop["proof"] != redirect["proof"]

        # A redirect to another origin: neither the token nor the proof follows.
        response = requests.get(api.url + "/away", auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 401
        assert len(api.take()) == 1
        (away,) = other.take()
        assert away["proof"] is None and away["authorization"] is None

        # A server that wants a new nonce every time: sent twice, then its 401 is the answer
        # (and not a token rejection: the token is kept).
        generation = manager.token_info().generation
        response = requests.get(api.url + "/rotate", auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 401 and len(api.take()) == 2
        assert manager.token_info().generation == generation

        # httpx, sync and async: the same nonce dance (the remembered nonce is now the last
        # rotating one).
        api.nonce = "api-nonce-3"
        with httpx.Client(auth=TokenleaseHttpxAuth(manager), timeout=10) as client:
            answer = client.post(api.url + "/api", content=b"sync")
            assert answer.status_code == 200 and answer.content == b"got:sync"
            assert [r.status_code for r in answer.history] == [401]
            assert client.get(api.url + "/rotate").status_code == 401
        nonces = [seen["claims"].get("nonce") for seen in api.take()]
        assert nonces == ["rotating-2", "api-nonce-3", "api-nonce-3", "rotating-3"]
        api.nonce = "api-nonce-4"

        async def call_async() -> httpx.Response:
            async with httpx.AsyncClient(auth=TokenleaseHttpxAuth(manager), timeout=10) as client:
                return await client.post(api.url + "/api", content=b"async")

        answer = asyncio.run(call_async())
        assert answer.status_code == 200 and answer.content == b"got:async"
        nonces = [seen["claims"].get("nonce") for seen in api.take()]
        assert nonces == ["rotating-4", "api-nonce-4"]


# ---- service account key file ----


def _test_server(*args: str) -> Tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    process = subprocess.Popen(
        [str(_server_binary()), "--max-lifetime-s", "120", *args], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    prefix = "TOKENLEASE_TEST_SERVER_URL="
    assert line.startswith(prefix), line
    return process, line[len(prefix):]


def _stats(url: str) -> Dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_a_service_account_key_file_gets_tokens_with_the_jwt_bearer_grant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenlease")
    private, public, other = tmp_path / "key.pem", tmp_path / "key.pub.pem", tmp_path / "other.pem"
    for key in (private, other):
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    _openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
    email = "python@project.iam.gserviceaccount.com"
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"issuer": email, "public_key_pem": public.read_text()}]))
    process, url = _test_server("--jwt-bearer-keys", str(keys))
    try:
        key_file = tmp_path / "service-account.json"

        def write_key_file(pem: str) -> None:
            _write_secret(
                key_file,
                json.dumps(
                    {
                        "type": "service_account",
                        "project_id": "project",
                        "private_key_id": "key-1",
                        "private_key": pem,
                        "client_email": email,
                        "client_id": "1234567890",
                        "token_uri": url + "/oauth/token",
                    }
                ),
            )

        write_key_file(private.read_text())
        config = {
            "source": {"type": "service_account", "key_file": {"file": str(key_file)}, "scopes": ["batch"]}
        }
        with Manager.from_config(config) as manager:
            info = manager.token_info()
            assert info.token_type == "Bearer"
            assert _stats(url)["jwt_bearer_grants"] == 1
            assert manager.invalidate(info)
            assert manager.token() != info.value
            assert _stats(url)["jwt_bearer_grants"] == 2, "a fresh assertion per request"
            assert "PRIVATE KEY" not in repr(manager)
        tokenlease.flush_events()
        _no_secret_in_log(caplog, private.read_text().splitlines()[1], info.value)

        # Another key for the same account: refused by the server's signature check.
        write_key_file(other.read_text())
        with Manager.from_config(config) as manager:
            with pytest.raises(tokenlease.InvalidGrantError) as refused:
                manager.token()
        assert "PRIVATE KEY" not in str(refused.value)
        assert other.read_text().splitlines()[1] not in str(refused.value)

        # A key file others may read: refused before anything is sent.
        os.chmod(key_file, 0o640)
        with pytest.raises(tokenlease.ConfigurationError):
            Manager.from_config(config)
        # Not a service account key file: a configuration error naming the field.
        _write_secret(key_file, '{"type": "authorized_user"}')
        with pytest.raises(tokenlease.ConfigurationError, match="source.key_file"):
            Manager.from_config(config)
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---- a subject token file (Kubernetes projected tokens, CI OIDC tokens) ----


def test_a_subject_token_file_is_read_again_for_every_exchange(server: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    config = {
        "source": {
            "type": "oauth2",
            "token_url": server.token_url,
            "client_id": "demo-client",
            "client_secret": "demo-secret",
            "grant": {
                "type": "token_exchange",
                "subject_token_file": str(token_file),
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            },
        }
    }
    token_file.write_text("projected-token-1\n")
    with Manager.from_config(config) as manager:
        first = manager.token_info()
        # The platform rewrote the file with a token the server refuses: read again for the
        # next exchange of the same manager.
        token_file.write_text("invalid")
        assert manager.invalidate(first)
        with pytest.raises(tokenlease.InvalidGrantError) as refused:
            manager.token()
        assert "projected-token" not in str(refused.value)
        # And rewritten again: the next exchange works.
        token_file.write_text("projected-token-2")
        with Manager.from_config(config) as again:
            assert again.token() != first.value
    assert server.stats()["token_requests"] == 3


# ---- mutual TLS ----


def _certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, a CA-signed client certificate
    (``CN=tokenlease-mtls``) and a self-signed one (extensions make them v3 certificates,
    which webpki wants)."""
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=tokenlease test CA", cwd=directory,
    )
    for name, subject in [("server", "/CN=127.0.0.1"), ("client", "/CN=tokenlease-mtls")]:
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject, cwd=directory,
        )
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
            cwd=directory,
        )
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "self.key", "-out", "self.pem", "-days", "1", "-subj", "/CN=self-signed",
        cwd=directory,
    )
    for key in ("client.key", "self.key"):
        os.chmod(directory / key, 0o600)


def test_mutual_tls_client_certificates_authenticate_and_bind_tokens(tmp_path: Path) -> None:
    _certificates(tmp_path)
    provider = _start_oidc(
        "--tls-cert", str(tmp_path / "server.pem"),
        "--tls-key", str(tmp_path / "server.key"),
        "--tls-ca", str(tmp_path / "ca.pem"),
        "--self-signed-client-cert", str(tmp_path / "self.pem"),
        mount=False,
    )
    try:
        assert provider.issuer.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

        def introspect(token: str) -> Dict[str, Any]:
            credentials = base64.b64encode(f"{BASIC_CLIENT}:{SECRET}".encode()).decode()
            request = urllib.request.Request(
                provider.issuer + "/token/introspection",
                data=urllib.parse.urlencode({"token": token}).encode(),
                headers={"Authorization": f"Basic {credentials}"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10, context=trusting) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]

        def config(client_id: str, cert: str, key: str) -> Dict[str, Any]:
            return {
                "source": {
                    "type": "oauth2",
                    "issuer": provider.issuer,
                    "client_id": client_id,
                    "scopes": ["api:read"],
                    "ca_file": str(tmp_path / "ca.pem"),
                    "client_auth": {
                        "tls_client_auth": {
                            "certificate": str(tmp_path / cert),
                            "key": {"file": str(tmp_path / key)},
                        }
                    },
                }
            }

        # tls_client_auth: a certificate from the CA with the registered subject.
        with Manager.from_config(config("tokenlease-mtls", "client.pem", "client.key")) as manager:
            token = manager.token()
            introspection = introspect(token)
            assert introspection["active"] is True
            assert introspection["cnf"]["x5t#S256"], "bound to the certificate"
        # self_signed_tls_client_auth: the registered self-signed certificate.
        with Manager.from_config(config("tokenlease-mtls-self", "self.pem", "self.key")) as manager:
            assert introspect(manager.token())["active"] is True
        # The certificate inline (PEM text) works as well as its path.
        inline = config("tokenlease-mtls", "client.pem", "client.key")
        inline["source"]["client_auth"]["tls_client_auth"]["certificate"] = (
            tmp_path / "client.pem"
        ).read_text()
        with Manager.from_config(inline) as manager:
            manager.token()
        # The wrong certificate for a client: client authentication fails.
        with Manager.from_config(config("tokenlease-mtls", "self.pem", "self.key")) as manager:
            with pytest.raises(tokenlease.InvalidCredentialsError) as wrong:
                manager.token()
        assert "PRIVATE KEY" not in str(wrong.value)
        # A key file others may read is refused before anything is sent.
        os.chmod(tmp_path / "client.key", 0o644)
        with pytest.raises(tokenlease.ConfigurationError):
            Manager.from_config(config("tokenlease-mtls", "client.pem", "client.key"))
    finally:
        provider.process.stop()


def test_no_dpop_for_a_manager_without_it(server: Any) -> None:
    with Manager.from_config(server.config()) as manager:
        info = manager.token_info()
        assert manager.dpop_proof(info, "GET", server.resource_url) is None
        assert manager.remember_dpop_nonce(server.resource_url, {"DPoP-Nonce": "n"}) is False
        response = requests.get(server.resource_url, auth=TokenleaseAuth(manager), timeout=10)
        assert response.status_code == 200 and "DPoP" not in response.request.headers
