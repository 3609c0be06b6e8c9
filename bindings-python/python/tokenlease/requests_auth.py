"""``requests`` adapter: an ``AuthBase`` that carries the manager's token and retries once
when core says the server rejected it.

Every decision is core's, from the manager's configuration; this adapter only carries
headers and bytes:

- ``Manager.request_header``: the header that carries the token (``Authorization: Bearer …``,
  a session's own header such as ``vmware-api-session-id``, or ``Cookie: NAME=…``, added to
  the cookies the request already has);
- ``Manager.authorize_body``: for a configuration that carries the token in request bodies
  (``"send": {"body": "{{session}}"}``, a SOAP ``SessionHeader``), the body that is sent
  instead, the placeholder replaced by the XML-escaped token. Such a body must be ``bytes``
  or ``str`` (a streamed body cannot carry the token: ``UsageError``);
- ``Manager.judge_response`` on every response, the retry's too: an accepted one records a
  sliding session's use; a rejection (a Bearer 401 ``invalid_token``, a session's
  ``expired`` rules such as 500 with ``INVALID_SESSION``) has made the manager discard
  exactly that token. The request is then sent once more with the token core provides next
  (its body rendered again), if its body can be replayed (``bytes``, ``str`` or none); the
  rejected response is in ``response.history``.

DPoP (RFC 9449, ``"dpop": true``): a token bound to the manager's key (``token_type``
``DPoP``) goes with ``Authorization: DPoP …`` and, on every request, a new proof in the
``DPoP`` header (``Manager.dpop_proof``, for the request's method and URL). A ``DPoP-Nonce``
a response brings is kept for the next proofs (``Manager.dpop_resend``); when it
comes with a 401, the request (if replayable) is sent once more with a proof that carries
it, before the response is judged. A redirect to another origin loses the proof with the
token; a redirect to the same origin gets a proof for the new URL and method.

Reading response bodies: only when ``Manager.needs_response_body(status)`` says the status
may be a rejection, and then at most ``MAX_JUDGED_BODY_BYTES`` (64 KiB), read from
``response.raw`` (decoded). That prefix is put back in front of the rest of the body, so the
application still reads the whole body, streamed (``stream=True``) or not; a rejected
response that was retried keeps only that prefix as its ``content``.

Redirects: before requests follows one to another origin, the token is taken off the
request (the header, and a rendered body, which 307 and 308 keep). Only responses to
requests that carried the token are judged, and a rejection on a redirect hop is not
retried (the hop's request is requests' copy, not the application's).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import requests
from requests.auth import AuthBase
from requests.hooks import default_hooks

from ._errors import UsageError
from ._manager import Manager, TokenInfo
from ._native import MAX_JUDGED_BODY_BYTES

__all__ = ["TokenleaseAuth"]

_DPOP = "DPoP"


def _replayable(body: Any) -> bool:
    return body is None or isinstance(body, (bytes, str))


class _Sent:
    """Where the token went on a request: the header (name, value) and/or the rendered
    body, so a response can be told apart from one to a request that did not carry it;
    and whether a DPoP proof went with it."""

    def __init__(
        self, header: Optional[Tuple[str, str]], body: Optional[bytes], proof: bool
    ) -> None:
        self.header = header
        self.body = body
        self.proof = proof

    def carried_by(self, request: requests.PreparedRequest) -> bool:
        if self.header is not None:
            name, value = self.header
            if request.headers.get(name) == value:
                return True
        return self.body is not None and request.body is self.body


def _authorize(
    manager: Manager,
    request: requests.PreparedRequest,
    template: requests.PreparedRequest,
    info: TokenInfo,
) -> _Sent:
    """Puts the token of ``info`` where core says, on ``request`` (a copy of ``template``,
    which is left as the application prepared it)."""
    header = manager.request_header(info)
    if header is not None:
        name, value = header
        existing = template.headers.get(name)
        if name.lower() == "cookie" and isinstance(existing, str) and existing:
            value = f"{existing}; {value}"
        request.headers[name] = value
        header = (name, value)
    # A DPoP-bound token: a new proof for this request (None for other tokens).
    proof = manager.dpop_proof(info, request.method or "GET", request.url or "")
    if proof is not None:
        request.headers[_DPOP] = proof
    body = template.body
    rendered = None
    if isinstance(body, (bytes, str)):
        rendered = manager.authorize_body(info, body)
        if rendered is not None:
            request.body = rendered
            request.prepare_content_length(rendered)
    elif body is not None and manager.authorize_body(info, b"") is not None:
        raise UsageError(
            "this manager's configuration carries the token in the request body; "
            "a streamed body cannot carry it: pass the body as bytes or str"
        )
    return _Sent(header, rendered, proof is not None)


class _PrefixedRaw:
    """A response's ``raw`` stream with the prefix read for judging put back in front.

    The prefix is decoded (``decode_content=True``), as requests reads bodies; the rest is
    read through ``raw.read`` (never ``raw.stream``, whose chunked reader cannot resume
    after a ``read``)."""

    def __init__(self, prefix: bytes, raw: Any) -> None:
        self._prefix = prefix
        self._raw = raw

    def read(self, amt: Optional[int] = None, *args: Any, **kwargs: Any) -> bytes:
        if not self._prefix:
            data: bytes = self._raw.read(amt, *args, **kwargs)
            return data
        if amt is None:
            rest: bytes = self._raw.read(None, *args, **kwargs)
            data, self._prefix = self._prefix + rest, b""
            return data
        data, self._prefix = self._prefix[:amt], self._prefix[amt:]
        return data

    def stream(self, amt: int = 2**16, decode_content: Optional[bool] = None) -> Iterator[bytes]:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            yield data
        while True:
            chunk: bytes = self._raw.read(amt, decode_content=decode_content)
            if not chunk:
                return
            yield chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _body_prefix(response: requests.Response) -> bytes:
    """At most ``MAX_JUDGED_BODY_BYTES`` of the body, without taking them from the app."""
    if getattr(response, "_content_consumed", False):
        content = response.content or b""
        return content[:MAX_JUDGED_BODY_BYTES]
    raw = response.raw
    if raw is None:
        return b""
    try:
        try:
            prefix = raw.read(MAX_JUDGED_BODY_BYTES, decode_content=True)
        except TypeError:  # a raw stream that is not urllib3's
            prefix = raw.read(MAX_JUDGED_BODY_BYTES)
    except Exception:
        # The body cannot be read here; the application meets the same error when it reads.
        return b""
    prefix = bytes(prefix or b"")
    response.raw = _PrefixedRaw(prefix, raw)
    return prefix


def _origin(url: Optional[str]) -> Tuple[str, str, Optional[int]]:
    parts = urlsplit(url or "")
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def _redirect_method(response: requests.Response) -> str:
    """The method requests uses for the next hop (as ``Session.rebuild_method``)."""
    method = str(response.request.method or "GET")
    status = response.status_code
    if status in (302, 303) and method != "HEAD":
        return "GET"
    if status == 301 and method == "POST":
        return "GET"
    return method


def _keep_token_home(
    manager: Manager,
    response: requests.Response,
    template: requests.PreparedRequest,
    sent: _Sent,
    info: TokenInfo,
) -> None:
    """Before requests follows a redirect, fixes the request it copies for the next hop: to
    another origin, takes the token off (the header core named, as requests itself strips
    only ``Authorization`` and ``Cookie``; a rendered body, kept by 307 and 308; a DPoP
    proof); to the same origin, gives a DPoP-bound token a proof for the hop's URL and
    method."""
    target = urljoin(response.url, response.headers.get("location", ""))
    request = response.request
    if _origin(target) == _origin(template.url):
        if sent.proof:
            proof = manager.dpop_proof(info, _redirect_method(response), target)
            if proof is not None:
                request.headers[_DPOP] = proof
        return
    if sent.proof:
        request.headers.pop(_DPOP, None)
    if sent.header is not None:
        request.headers.pop(sent.header[0], None)
    if sent.body is not None and request.body is sent.body:
        request.body = template.body
        request.prepare_content_length(template.body)


def _judge(manager: Manager, response: requests.Response, generation: int) -> bool:
    """Core's verdict on ``response``: ``True`` when it rejected the token of
    ``generation`` (which the manager has then discarded)."""
    status = response.status_code
    prefix = _body_prefix(response) if manager.needs_response_body(status) else b""
    return manager.judge_response(generation, status, list(response.headers.items()), prefix)


def _new_dpop_nonce(manager: Manager, response: requests.Response, info: TokenInfo) -> bool:
    """Core's word on a response to a request that carried a proof: it keeps the response's
    ``DPoP-Nonce``; ``True`` when the request is worth sending once more with a new proof."""
    return manager.dpop_resend(
        info.token_type,
        response.url or response.request.url or "",
        response.status_code,
        list(response.headers.items()),
    )


def _discard(response: requests.Response) -> None:
    """Releases a rejected response; its ``content`` is what was read for judging."""
    prefix = b""
    if isinstance(response.raw, _PrefixedRaw):
        prefix = response.raw._prefix
    response.close()
    if not getattr(response, "_content_consumed", False):
        response._content = prefix
        response._content_consumed = True


class TokenleaseAuth(AuthBase):
    """``requests.get(url, auth=TokenleaseAuth(manager))``, or ``session.auth = ...``."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        manager = self.manager
        template = request.copy()
        info = manager.token_info()
        sent = _authorize(manager, request, template, info)

        def on_response(response: requests.Response, **kwargs: Any) -> requests.Response:
            # Also called for each redirect hop (requests copies the hooks): only responses
            # to requests that carried the token are judged, and only the request this call
            # authorized is sent again (a hop is not).
            if not sent.carried_by(response.request):
                return response
            own = response.request is request
            if response.is_redirect:
                _keep_token_home(manager, response, template, sent, info)
            if sent.proof and _new_dpop_nonce(manager, response, info) and own:
                response = self._send_again(response, template, info, False, **kwargs)
            rejected = _judge(manager, response, info.generation)
            if not rejected or not own:
                return response
            return self._retry(response, template, **kwargs)

        request.register_hook("response", on_response)
        return request

    def _retry(
        self, response: requests.Response, template: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        """Sends the application's request once more with the token core provides now (the
        manager discarded the rejected one), if its body can be replayed."""
        if not _replayable(template.body):
            return response
        manager = self.manager
        info = manager.token_info()
        new_response = self._send_again(response, template, info, True, **kwargs)
        # Judged too: its use is recorded; a second rejection discards that token (no retry).
        _judge(manager, new_response, info.generation)
        return new_response

    def _send_again(
        self,
        response: requests.Response,
        template: requests.PreparedRequest,
        info: TokenInfo,
        follow_nonce: bool,
        **kwargs: Any,
    ) -> requests.Response:
        """Sends the application's request (``template``) once more, with the token of
        ``info`` and, for a DPoP-bound token, a new proof, in place of ``response``, if the
        body can be replayed. ``follow_nonce``: a 401 that brings a new DPoP nonce is sent
        once more again (only once)."""
        if not _replayable(template.body):
            return response
        manager = self.manager
        retry = template.copy()
        retry.hooks = default_hooks()  # the retry is not retried again
        sent = _authorize(manager, retry, template, info)
        _discard(response)
        new_response: requests.Response = response.connection.send(retry, **kwargs)
        new_response.history = [*response.history, response]
        new_response.request = retry
        if sent.proof and _new_dpop_nonce(manager, new_response, info) and follow_nonce:
            return self._send_again(new_response, template, info, False, **kwargs)
        return new_response

    def __repr__(self) -> str:
        return f"TokenleaseAuth({self.manager!r})"
