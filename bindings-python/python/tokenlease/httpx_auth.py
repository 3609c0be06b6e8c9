"""``httpx`` adapter: an ``httpx.Auth`` with sync and async flows.

Attaches the manager's token; on a response core classifies as a token rejection
(401 Bearer ``invalid_token``) it invalidates exactly that token's generation and resends
the request once with the token core provides next. The request body is read first
(``requires_request_body``), so it can always be replayed.
"""

from __future__ import annotations

from typing import AsyncGenerator, Generator

import httpx

from ._manager import Manager, is_token_rejected

__all__ = ["TokenleaseHttpxAuth"]


class TokenleaseHttpxAuth(httpx.Auth):
    """``httpx.Client(auth=TokenleaseHttpxAuth(manager))`` (or ``httpx.AsyncClient``)."""

    requires_request_body = True

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()  # so the body can be resent
        info = self.manager.token_info()
        request.headers["Authorization"] = info.authorization()
        response = yield request
        if is_token_rejected(response.status_code, response.headers.get("WWW-Authenticate")):
            self.manager.invalidate(info.generation)
            request.headers["Authorization"] = self.manager.token_info().authorization()
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()  # so the body can be resent
        info = await self.manager.token_info_async()
        request.headers["Authorization"] = info.authorization()
        response = yield request
        if is_token_rejected(response.status_code, response.headers.get("WWW-Authenticate")):
            self.manager.invalidate(info.generation)
            info = await self.manager.token_info_async()
            request.headers["Authorization"] = info.authorization()
            yield request

    def __repr__(self) -> str:
        return f"TokenleaseHttpxAuth({self.manager!r})"
