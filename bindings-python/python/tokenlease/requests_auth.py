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


def _replayable(body: Any) -> bool:
    return body is None or isinstance(body, (bytes, str))


class _Sent:
    """Where the token went on a request: the header (name, value) and/or the rendered
    body, so a response can be told apart from one to a request that did not carry it."""

    def __init__(self, header: Optional[Tuple[str, str]], body: Optional[bytes]) -> None:
        self.header = header
        self.body = body

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
    return _Sent(header, rendered)


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


def _keep_token_home(
    response: requests.Response, template: requests.PreparedRequest, sent: _Sent
) -> None:
    """Before requests follows a redirect to another origin, takes the token off the request
    it copies for the next hop: the header core named (requests itself strips only
    ``Authorization`` and ``Cookie``) and a rendered body (kept by 307 and 308)."""
    target = urljoin(response.url, response.headers.get("location", ""))
    if _origin(target) == _origin(template.url):
        return
    request = response.request
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
            if response.is_redirect:
                _keep_token_home(response, template, sent)
            rejected = _judge(manager, response, info.generation)
            if not rejected or response.request is not request:
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
        retry = template.copy()
        retry.hooks = default_hooks()  # the retry is not retried again
        _authorize(manager, retry, template, info)
        _discard(response)
        new_response: requests.Response = response.connection.send(retry, **kwargs)
        # Judged too: its use is recorded; a second rejection discards that token (no retry).
        _judge(manager, new_response, info.generation)
        new_response.history.append(response)
        new_response.request = retry
        return new_response

    def __repr__(self) -> str:
        return f"TokenleaseAuth({self.manager!r})"
