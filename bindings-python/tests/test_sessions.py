"""Session APIs from Python (issue 16): the vSphere and Zuora SOAP profiles of
examples/profiles, pointed at the real test token server, through requests and httpx (sync
and async). Every request decision is core's: the header (or the body) that carries the
session, and whether a response rejects it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

import tokenlease
from tokenlease import FetchedToken, Manager, TokenInfo

requests = pytest.importorskip("requests")
httpx = pytest.importorskip("httpx")

from tokenlease.httpx_auth import TokenleaseHttpxAuth  # noqa: E402
from tokenlease.requests_auth import TokenleaseAuth  # noqa: E402

PROFILES = Path(__file__).resolve().parents[2] / "examples" / "profiles"

#: A Zuora SOAP query whose SessionHeader carries the session placeholder.
QUERY = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:api="http://api.zuora.com/"><soapenv:Header><api:SessionHeader>'
    "<api:session>{{session}}</api:session></api:SessionHeader></soapenv:Header>"
    "<soapenv:Body><api:query><api:queryString>select Id from Account</api:queryString>"
    "</api:query></soapenv:Body></soapenv:Envelope>"
)
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}


def profile(name: str, host: str, server: Any, user: str, password: str) -> Dict[str, Any]:
    """A profile of examples/profiles pointed at the test server, credentials inline."""
    text = (PROFILES / name).read_text()
    prefix = name.split(".")[0].split("-")[0].upper()  # VSPHERE, ZUORA
    text = text.replace(host, server.url)
    text = text.replace('{"env": "%s_USER"}' % prefix, json.dumps(user))
    text = text.replace('{"env": "%s_PASSWORD"}' % prefix, json.dumps(password))
    config: Dict[str, Any] = json.loads(text)
    assert "env" not in json.dumps(config["source"]["credentials"])
    return config


def vsphere(server: Any, password: str = "wonderland") -> Dict[str, Any]:
    return profile("vsphere.json", "https://vcenter.example", server, "alice", password)


def zuora(server: Any, password: str = "wonderland") -> Dict[str, Any]:
    return profile("zuora-soap.json", "https://apisandbox.zuora.example", server, "alice", password)


@pytest.fixture
def session_idle_4s(server: Any) -> Iterator[None]:
    """Sessions created during the test idle out after 4 s on the server's clock."""
    server.control(session_idle_timeout_s=4)
    try:
        yield
    finally:
        server.control(session_idle_timeout_s=900)


# ---- vSphere: basic-auth login, vmware-api-session-id, 401 UNAUTHENTICATED ----


def test_vsphere_through_requests(server: Any) -> None:
    with Manager.from_config(vsphere(server)) as manager:
        auth = TokenleaseAuth(manager)
        vms = server.url + "/api/vcenter/vm"
        with requests.Session() as session:
            response = session.get(vms, auth=auth)
            assert response.status_code == 200, response.text
            assert "vm-42" in response.text
            assert response.history == []
            stats = server.stats()
            assert stats["session_logins"] == 1  # POST /api/session with basic auth

            # The header is core's answer for this configuration, not Authorization.
            info = manager.token_info()
            assert manager.request_header(info) == ("vmware-api-session-id", info.value)
            assert response.request.headers["vmware-api-session-id"] == info.value
            assert "Authorization" not in response.request.headers
            assert "alice" in manager.session_info()

            # The server ends every session: one 401 UNAUTHENTICATED, one new login, one retry.
            server.control(revoke_all=True, reset_stats=True)
            response = session.get(vms, auth=auth)
            assert response.status_code == 200, response.text
            assert "vm-42" in response.text
            assert [old.status_code for old in response.history] == [401]
            assert "UNAUTHENTICATED" in response.history[0].text
            stats = server.stats()
            assert stats["session_logins"] == 1
            assert stats["session_rejections"] == 1
            assert stats["session_requests"] == 2  # the rejected call and its one retry
            new = manager.token_info()
            assert new.generation == info.generation + 1 and new.value != info.value
            assert response.request.headers["vmware-api-session-id"] == new.value

            # Logout: DELETE /api/session.
            manager.revoke()
            assert server.stats()["session_logouts"] == 1


def test_vsphere_through_httpx_sync_and_async(server: Any) -> None:
    with Manager.from_config(vsphere(server)) as manager:
        auth = TokenleaseHttpxAuth(manager)
        vms = server.url + "/api/vcenter/vm"
        with httpx.Client(auth=auth) as client:
            response = client.get(vms)
            assert response.status_code == 200 and "vm-42" in response.text
            assert server.stats()["session_logins"] == 1
            assert "alice" in manager.session_info()
            server.control(revoke_all=True, reset_stats=True)
            response = client.get(vms)
            assert response.status_code == 200 and "vm-42" in response.text
            assert [old.status_code for old in response.history] == [401]
            stats = server.stats()
            assert stats["session_logins"] == 1 and stats["session_requests"] == 2
            assert response.request.headers["vmware-api-session-id"] == manager.token()

        async def main() -> None:
            async with httpx.AsyncClient(auth=auth) as client:
                server.control(reset_stats=True)
                response = await client.get(vms)
                assert response.status_code == 200 and "vm-42" in response.text
                assert "alice" in await manager.session_info_async()
                server.control(revoke_all=True, reset_stats=True)
                response = await client.get(vms)
                assert response.status_code == 200 and "vm-42" in response.text
                assert len(response.history) == 1
                stats = server.stats()
                assert stats["session_logins"] == 1 and stats["session_requests"] == 2

        asyncio.run(main())
        server.control(reset_stats=True)
        manager.revoke()
        assert server.stats()["session_logouts"] == 1


def test_a_401_without_the_configured_expiry_text_is_not_retried(server: Any) -> None:
    with Manager.from_config(vsphere(server)) as manager:
        info = manager.token_info()
        # Core's verdict: the vSphere rules want UNAUTHENTICATED in a 401's body.
        assert manager.needs_response_body(401)
        assert not manager.needs_response_body(200)
        assert not manager.judge_response(info.generation, 401, {}, b'{"error_type": "NO_PERMISSION"}')
        assert manager.token_info().generation == info.generation
        # The test server's /session/resource answers an ended session with 401
        # INVALID_SESSION: not this profile's expiry, so neither adapter retries it.
        server.control(revoke_all=True, reset_stats=True)
        other = server.url + "/session/resource"
        response = requests.get(other, auth=TokenleaseAuth(manager))
        assert response.status_code == 401 and "INVALID_SESSION" in response.text
        assert response.history == []
        with httpx.Client(auth=TokenleaseHttpxAuth(manager)) as client:
            response = client.get(other)
            assert response.status_code == 401 and response.history == []
        assert server.stats()["session_logins"] == 0
        assert manager.token_info().generation == info.generation
        # The same body with the configured text is a rejection: that generation is gone.
        assert manager.judge_response(info.generation, 401, [], b'{"error_type":"UNAUTHENTICATED"}')
        assert manager.token_info().generation == info.generation + 1
        # A late verdict on the old generation never discards the new session.
        assert manager.judge_response(info.generation, 401, [], b"UNAUTHENTICATED")
        assert manager.token_info().generation == info.generation + 1


def test_bearer_rejections_are_judged_by_core_too(server: Any) -> None:
    with Manager.from_config(server.config()) as manager:
        info = manager.token_info()
        header = manager.request_header(info)
        assert header is not None
        assert (header[0].lower(), header[1]) == ("authorization", f"Bearer {info.value}")
        assert manager.authorize_body(info, b"\xff binary") is None
        scope = {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}
        assert not manager.judge_response(info.generation, 401, scope)
        assert manager.token_info().generation == info.generation
        invalid = [("WWW-Authenticate", 'Bearer error="invalid_token"')]
        assert manager.judge_response(info.generation, 401, invalid)
        assert manager.token_info().generation == info.generation + 1
        with pytest.raises(tokenlease.ConfigurationError):
            manager.session_info()  # no session.info in an OAuth2 configuration


def test_requests_takes_the_session_off_a_redirect_to_another_origin(server: Any) -> None:
    seen: List[Optional[str]] = []

    class Redirector(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("vmware-api-session-id"))
            self.send_response(307)
            self.send_header("Location", server.url + "/api/vcenter/vm")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    thread = threading.Thread(target=redirector.serve_forever, daemon=True)
    thread.start()
    try:
        with Manager.from_config(vsphere(server)) as manager:
            info = manager.token_info()
            url = f"http://127.0.0.1:{redirector.server_address[1]}/vms"
            response = requests.get(url, auth=TokenleaseAuth(manager))
            # The redirector (the request's own origin) got the session; the other origin
            # did not, and its 401 is not taken as a verdict on the session.
            assert seen == [info.value]
            assert response.status_code == 401
            assert [old.status_code for old in response.history] == [307]
            assert "vmware-api-session-id" not in response.request.headers
            assert manager.token_info().generation == info.generation
            stats = server.stats()
            assert stats["session_logins"] == 1 and stats["session_rejections"] == 1
    finally:
        redirector.shutdown()
        redirector.server_close()


def test_requests_judges_a_rejection_on_a_redirect_hop_without_looping(server: Any) -> None:
    # /start redirects (same origin) to /end, which always says the session ended: the hop's
    # rejection is judged (that session is discarded) but not retried, so there is no loop.
    class Here(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/start":
                self.send_response(307)
                self.send_header("Location", "/end")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b'{"error_type": "UNAUTHENTICATED"}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    here = ThreadingHTTPServer(("127.0.0.1", 0), Here)
    threading.Thread(target=here.serve_forever, daemon=True).start()
    try:
        with Manager.from_config(vsphere(server)) as manager:
            info = manager.token_info()
            url = f"http://127.0.0.1:{here.server_address[1]}/start"
            response = requests.get(url, auth=TokenleaseAuth(manager))
            assert response.status_code == 401
            assert [old.status_code for old in response.history] == [307]
            assert response.request.headers["vmware-api-session-id"] == info.value
            assert manager.status().state == "empty"  # the rejected session was discarded
            assert server.stats()["session_logins"] == 1
    finally:
        here.shutdown()
        here.server_close()


def test_httpx_does_not_judge_a_response_from_another_origin(server: Any) -> None:
    # follow_redirects=True to another origin whose 401 carries the expiry text: not a
    # verdict on the session (it was another server's answer), so nothing is discarded.
    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b'{"error_type": "UNAUTHENTICATED"}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://127.0.0.1:{elsewhere.server_address[1]}/end"

    class Redirector(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(307)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    for running in (elsewhere, redirector):
        threading.Thread(target=running.serve_forever, daemon=True).start()
    try:
        with Manager.from_config(vsphere(server)) as manager:
            info = manager.token_info()
            auth = TokenleaseHttpxAuth(manager)
            with httpx.Client(auth=auth, follow_redirects=True) as client:
                response = client.get(f"http://127.0.0.1:{redirector.server_address[1]}/start")
            assert response.status_code == 401 and len(response.history) == 1
            assert manager.status().state == "fresh"
            assert manager.token_info().generation == info.generation
    finally:
        for running in (elsewhere, redirector):
            running.shutdown()
            running.server_close()


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_requests_judges_a_64k_prefix_and_leaves_the_whole_body_to_the_app(
    server: Any, chunked: bool, stream: bool
) -> None:
    # A 401 whose expiry text comes after the first 64 KiB: core never sees it (not a
    # rejection), and the application still reads every byte.
    body = b"x" * (200 * 1024) + b'{"error_type": "UNAUTHENTICATED"}'

    class Big(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(401)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for at in range(0, len(body), 10000):
                    piece = body[at : at + 10000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    big = ThreadingHTTPServer(("127.0.0.1", 0), Big)
    threading.Thread(target=big.serve_forever, daemon=True).start()
    try:
        with Manager.from_config(vsphere(server)) as manager:
            info = manager.token_info()
            url = f"http://127.0.0.1:{big.server_address[1]}/big"
            with requests.get(url, auth=TokenleaseAuth(manager), stream=stream) as response:
                assert response.status_code == 401 and response.history == []
                if stream:
                    assert b"".join(response.iter_content(7000)) == body
                else:
                    assert response.content == body
            assert manager.token_info().generation == info.generation
    finally:
        big.shutdown()
        big.server_close()


# ---- Zuora SOAP: XML login, the session in the SOAP body, 500 INVALID_SESSION ----


def test_zuora_soap_through_requests(server: Any) -> None:
    with Manager.from_config(zuora(server)) as manager:
        info = manager.token_info()
        endpoint = info.attributes["server_url"]
        assert endpoint.endswith("/apps/services/a/91.0"), endpoint
        assert info.attributes == {"server_url": endpoint}
        assert "server_url" in repr(info) and info.value not in repr(info)
        assert info.id_token is None
        # The session travels in the body only: no header; the placeholder is replaced.
        assert manager.request_header(info) is None
        rendered = manager.authorize_body(info, QUERY)
        assert rendered is not None and b"{{session}}" not in rendered
        assert f"<api:session>{info.value}</api:session>".encode() in rendered
        assert manager.authorize_body(info, QUERY.encode()) == rendered

        auth = TokenleaseAuth(manager)
        response = requests.post(endpoint, data=QUERY, headers=SOAP_HEADERS, auth=auth)
        assert response.status_code == 200, response.text
        assert "queryResponse" in response.text
        assert response.request.body == rendered
        assert response.request.headers["Content-Length"] == str(len(rendered))

        # The session ends: a 500 INVALID_SESSION fault, one login, the body rendered
        # again with the new session, one retry.
        server.control(revoke_all=True, reset_stats=True)
        response = requests.post(endpoint, data=QUERY, headers=SOAP_HEADERS, auth=auth)
        assert response.status_code == 200, response.text
        assert "queryResponse" in response.text
        assert [old.status_code for old in response.history] == [500]
        assert "INVALID_SESSION" in response.history[0].text
        assert info.value.encode() in response.history[0].request.body
        new = manager.token_info()
        assert new.generation == info.generation + 1
        assert f"<api:session>{new.value}</api:session>".encode() in response.request.body
        stats = server.stats()
        assert stats["session_logins"] == 1 and stats["session_rejections"] == 1

        # A streamed body cannot carry the session: refused before anything is sent.
        with pytest.raises(tokenlease.UsageError):
            requests.post(endpoint, data=iter([QUERY.encode()]), headers=SOAP_HEADERS, auth=auth)

        # Logout: the SOAP logout call with the session in its header.
        manager.revoke()
        assert server.stats()["session_logouts"] == 1


def test_zuora_soap_through_httpx_sync_and_async(server: Any) -> None:
    with Manager.from_config(zuora(server)) as manager:
        endpoint = manager.token_info().attributes["server_url"]
        auth = TokenleaseHttpxAuth(manager)
        with httpx.Client(auth=auth) as client:
            response = client.post(endpoint, content=QUERY, headers=SOAP_HEADERS)
            assert response.status_code == 200 and "queryResponse" in response.text
            old = manager.token_info()
            assert old.value.encode() in response.request.content
            server.control(revoke_all=True, reset_stats=True)
            response = client.post(endpoint, content=QUERY, headers=SOAP_HEADERS)
            assert response.status_code == 200 and "queryResponse" in response.text
            assert [r.status_code for r in response.history] == [500]
            new = manager.token_info()
            assert new.generation == old.generation + 1
            assert f"<api:session>{new.value}</api:session>".encode() in response.request.content
            assert response.request.headers["Content-Length"] == str(len(response.request.content))
            assert server.stats()["session_logins"] == 1

        async def main() -> None:
            async with httpx.AsyncClient(auth=auth) as client:
                server.control(revoke_all=True, reset_stats=True)
                response = await client.post(endpoint, content=QUERY, headers=SOAP_HEADERS)
                assert response.status_code == 200 and "queryResponse" in response.text
                assert len(response.history) == 1
                stats = server.stats()
                assert stats["session_logins"] == 1 and stats["session_rejections"] == 1

        asyncio.run(main())


def test_zuora_wrong_password_is_invalid_credentials(server: Any) -> None:
    password = "<wrong & bad>"
    with Manager.from_config(zuora(server, password=password)) as manager:
        with pytest.raises(tokenlease.InvalidCredentialsError) as raised:
            manager.token()
        assert not isinstance(raised.value, tokenlease.TransientError)
        assert password not in str(raised.value) and password not in repr(raised.value)
        # Through an adapter: the same error, nothing sent to the API.
        with pytest.raises(tokenlease.InvalidCredentialsError):
            requests.post(server.url + "/apps/services/a/91.0", data=QUERY, auth=TokenleaseAuth(manager))
        assert manager.status().last_error_kind == "invalid_credentials"
    assert server.stats()["session_logins"] == 0


# ---- a sliding session: uses keep it alive, keep-alives when idle, the server's clock ----


def test_a_sliding_session_is_kept_alive_by_use_and_by_keep_alives(
    server: Any, session_idle_4s: None
) -> None:
    config = {
        "source": {
            "type": "session_login",
            "credentials": {"username": "alice", "password": "wonderland"},
            "session": {
                "login": {
                    "url": server.url + "/session/login",
                    "json": {"username": "{{username}}", "password": "{{password}}"},
                },
                "token": {"json_pointer": "/session/id"},
                "expires_in": {"json_pointer": "/session/expires_in"},
                "sliding": True,
                "send": {"header": "vmware-api-session-id"},
                "keep_alive": {
                    "method": "POST",
                    "url": server.url + "/session/keepalive",
                    "authenticated": True,
                },
                "expired": {"statuses": [401], "body_contains": ["INVALID_SESSION"]},
            },
        },
        "policy": {"jitter_fraction": 0.0},
    }
    resource = server.url + "/session/resource"
    with Manager.from_config(config) as manager, requests.Session() as session:
        session.auth = TokenleaseAuth(manager)
        # In use for 5 s (longer than the 4 s idle timeout): every accepted response is a
        # use core records, so the session never looks idle and no keep-alive is needed.
        started = time.monotonic()
        while time.monotonic() - started < 5:
            response = session.get(resource)
            assert response.status_code == 200 and response.history == []
            time.sleep(0.4)
        stats = server.stats()
        assert stats["session_logins"] == 1
        assert stats["session_keepalives"] == 0, stats
        assert manager.status().counters["keep_alives"] == 0

        # Idle for 4.5 s: core keeps the session alive with keep-alive requests (2 s before
        # the idle timeout), so the next call needs no new login.
        time.sleep(4.5)
        stats = server.stats()
        assert stats["session_keepalives"] >= 1, stats
        assert stats["session_logins"] == 1
        response = session.get(resource)
        assert response.status_code == 200 and response.history == []
        generation = manager.token_info().generation

        # The server's clock jumps 10 minutes: its sessions idled out. One 401
        # INVALID_SESSION, one new login, one retry.
        server.control(advance_s=600)
        response = session.get(resource)
        assert response.status_code == 200
        assert [old.status_code for old in response.history] == [401]
        assert server.stats()["session_logins"] == 2
        assert manager.token_info().generation == generation + 1


# ---- TokenInfo: the ID token is a secret, attributes are not ----


def test_token_info_carries_the_id_token_without_showing_it() -> None:
    class NoSource:
        def fetch(self) -> FetchedToken:
            raise tokenlease.LoginRequiredError("log in first")

    with Manager(NoSource()) as manager:
        info = manager.login(
            FetchedToken(value="access-value-1", expires_in=600, id_token="id-token-value-1")
        )
        assert isinstance(info, TokenInfo)
        assert info.id_token == "id-token-value-1"
        assert info.attributes == {}
        assert manager.token_info().id_token == "id-token-value-1"
        for shown in (repr(info), str(info)):
            assert "id-token-value-1" not in shown and "access-value-1" not in shown
        hash(info)  # still hashable (attributes are left out of the hash)
        assert "id-token-value-1" not in repr(FetchedToken(value="v", id_token="id-token-value-1"))

        async def main() -> TokenInfo:
            return await manager.token_info_async()

        assert asyncio.run(main()).id_token == "id-token-value-1"


def test_argument_checks() -> None:
    class Source:
        def fetch(self) -> FetchedToken:
            return FetchedToken(value="arg-check-token", expires_in=600)

    with Manager(Source()) as manager:
        info = manager.token_info()
        with pytest.raises(TypeError):
            manager.request_header("arg-check-token")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            manager.authorize_body(info, 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            manager.judge_response(info.generation, 401, [("only-a-name",)])  # type: ignore[list-item]
        with pytest.raises(OverflowError):
            manager.judge_response(info.generation, 70000)
        # Only the first 256 headers are read (an endless iterable ends there).
        def endless() -> Iterator[tuple]:
            while True:
                yield ("X-Filler", "1")

        assert not manager.judge_response(info.generation, 200, endless(), b"")
        # A body prefix beyond 64 KiB is cut, not refused.
        assert not manager.judge_response(info.generation, 200, None, b"x" * (1 << 20))
        assert tokenlease._native.MAX_JUDGED_BODY_BYTES == 64 * 1024
