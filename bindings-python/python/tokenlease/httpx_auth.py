"""``httpx`` adapter: an ``httpx.Auth`` with sync and async flows that carries the manager's
token and retries once when core says the server rejected it.

Every decision is core's, from the manager's configuration; this adapter only carries
headers and bytes:

- ``Manager.request_header``: the header that carries the token (``Authorization: Bearer …``,
  a session's own header such as ``vmware-api-session-id``, or ``Cookie: NAME=…``, added to
  the cookies the request already has);
- ``Manager.authorize_body``: for a configuration that carries the token in request bodies
  (``"send": {"body": "{{session}}"}``, a SOAP ``SessionHeader``), the body that is sent
  instead, the placeholder replaced by the XML-escaped token;
- ``Manager.judge_response`` on every response, the retry's too: an accepted one records a
  sliding session's use; a rejection (a Bearer 401 ``invalid_token``, a session's
  ``expired`` rules such as 500 with ``INVALID_SESSION``) has made the manager discard
  exactly that token, and the flow yields the request once more with the token core
  provides next (its body rendered again). The request body is read first, so it can
  always be replayed.

DPoP (RFC 9449, ``"dpop": true``): a token bound to the manager's key (``token_type``
``DPoP``) goes with ``Authorization: DPoP …`` and, on every request, a new proof in the
``DPoP`` header (``Manager.dpop_proof``, for the request's method and URL). A ``DPoP-Nonce``
a response brings is kept for the next proofs (``Manager.dpop_resend``); when it
comes with a 401, the request is sent once more with a proof that carries it, before the
response is judged.

Reading response bodies: only when ``Manager.needs_response_body(status)`` says the status
may be a rejection (e.g. a 401, or a 500 for a SOAP profile); such a response is read
(``response.read()``, so the application can still read it) and its first
``MAX_JUDGED_BODY_BYTES`` (64 KiB) are judged. Successful responses are never read here.

Redirects: httpx follows them (``follow_redirects=True``) with the request's headers,
stripping only ``Authorization`` on another origin; with a session header or a DPoP proof
(which httpx keeps too, and which names the first URL), leave ``follow_redirects`` off
(httpx's default) for URLs that may redirect. A final response from another origin than the
request's is not judged.
"""

from __future__ import annotations

from typing import AsyncGenerator, Generator, Optional, Tuple

import httpx

from ._manager import Manager, TokenInfo
from ._native import MAX_JUDGED_BODY_BYTES

__all__ = ["TokenleaseHttpxAuth"]


def _authorized(
    manager: Manager,
    request: httpx.Request,
    content: bytes,
    cookie: Optional[str],
    info: TokenInfo,
) -> Tuple[httpx.Request, bool]:
    """``request`` carrying the token of ``info`` where core says: the same request with
    the header set, or a new one with the rendered body (``content`` and ``cookie`` are the
    body and ``Cookie`` header the application's request came with); and whether a DPoP
    proof goes with it (a DPoP-bound token)."""
    rendered = manager.authorize_body(info, content) if content else None
    if rendered is not None:
        headers = request.headers.copy()
        headers.pop("Content-Length", None)
        headers.pop("Transfer-Encoding", None)
        request = httpx.Request(
            request.method,
            request.url,
            headers=headers,
            content=rendered,
            extensions=request.extensions,
        )
    header = manager.request_header(info)
    if header is not None:
        name, value = header
        if name.lower() == "cookie" and cookie:
            value = f"{cookie}; {value}"
        request.headers[name] = value
    proof = manager.dpop_proof(info, request.method, str(request.url))
    if proof is not None:
        request.headers["DPoP"] = proof
    return request, proof is not None


def _origin(url: httpx.URL) -> Tuple[str, str, Optional[int]]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def _new_dpop_nonce(
    manager: Manager, response: httpx.Response, proof: bool, sent: httpx.URL, info: TokenInfo
) -> bool:
    """Core's word on a response to a request that carried a proof (``proof``) to ``sent``:
    it keeps the response's ``DPoP-Nonce``; ``True`` when the request is worth sending once
    more with a new proof (never for a response from another origin)."""
    if not proof:
        return False
    resend = manager.dpop_resend(
        info.token_type,
        str(response.request.url),
        response.status_code,
        response.headers.multi_items(),
    )
    return resend and _origin(response.request.url) == _origin(sent)


def _judge(
    manager: Manager, response: httpx.Response, info: TokenInfo, read: bool, sent: httpx.URL
) -> bool:
    """Core's verdict on ``response`` to a request sent to ``sent`` (``read``: its body was
    read for judging). A response from another origin (redirected there) is not judged."""
    if _origin(response.request.url) != _origin(sent):
        return False
    prefix = response.content[:MAX_JUDGED_BODY_BYTES] if read else b""
    return manager.judge_response(
        info.generation, response.status_code, response.headers.multi_items(), prefix
    )


class TokenleaseHttpxAuth(httpx.Auth):
    """``httpx.Client(auth=TokenleaseHttpxAuth(manager))`` (or ``httpx.AsyncClient``)."""

    requires_request_body = True

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        manager = self.manager
        content = request.read()  # so the body can be rendered and resent
        cookie = request.headers.get("Cookie")
        for _attempt in range(2):  # a rejection is retried once; a second one is not
            info = manager.token_info()
            authorized, proof = _authorized(manager, request, content, cookie, info)
            response = yield authorized
            if _new_dpop_nonce(manager, response, proof, request.url, info):
                authorized, proof = _authorized(manager, request, content, cookie, info)
                response = yield authorized
                _new_dpop_nonce(manager, response, proof, request.url, info)  # kept; not resent
            read = manager.needs_response_body(response.status_code)
            if read:
                response.read()
            if not _judge(manager, response, info, read, request.url):
                return

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        manager = self.manager
        content = await request.aread()  # so the body can be rendered and resent
        cookie = request.headers.get("Cookie")
        for _attempt in range(2):  # a rejection is retried once; a second one is not
            info = await manager.token_info_async()
            authorized, proof = _authorized(manager, request, content, cookie, info)
            response = yield authorized
            if _new_dpop_nonce(manager, response, proof, request.url, info):
                authorized, proof = _authorized(manager, request, content, cookie, info)
                response = yield authorized
                _new_dpop_nonce(manager, response, proof, request.url, info)  # kept; not resent
            read = manager.needs_response_body(response.status_code)
            if read:
                await response.aread()
            if not _judge(manager, response, info, read, request.url):
                return

    def __repr__(self) -> str:
        return f"TokenleaseHttpxAuth({self.manager!r})"
