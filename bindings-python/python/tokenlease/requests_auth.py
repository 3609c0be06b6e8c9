"""``requests`` adapter: an ``AuthBase`` that attaches the manager's token.

On a response that core classifies as a token rejection (401 with a Bearer
``invalid_token`` challenge), it invalidates exactly the token that request carried
(generation-guarded, so a late 401 never discards a newer token), gets the token core
provides next and resends the request once, if its body can be replayed.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.auth import AuthBase

from ._manager import Manager, is_token_rejected

__all__ = ["TokenleaseAuth"]


def _replayable(request: requests.PreparedRequest) -> bool:
    body = request.body
    return body is None or isinstance(body, (bytes, str))


class TokenleaseAuth(AuthBase):
    """``requests.get(url, auth=TokenleaseAuth(manager))``."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        info = self.manager.token_info()
        request.headers["Authorization"] = info.authorization()
        generation = info.generation

        def on_response(response: requests.Response, **kwargs: Any) -> requests.Response:
            return self._handle_response(response, generation, **kwargs)

        request.register_hook("response", on_response)
        return request

    def _handle_response(
        self, response: requests.Response, generation: int, **kwargs: Any
    ) -> requests.Response:
        if not is_token_rejected(response.status_code, response.headers.get("WWW-Authenticate")):
            return response
        request = response.request
        if not _replayable(request):
            return response
        self.manager.invalidate(generation)
        retry = request.copy()
        retry.hooks = {"response": []}  # one retry only: the copy carries no retry hook
        retry.headers["Authorization"] = self.manager.token_info().authorization()
        response.content  # noqa: B018  (drain so the connection can be reused)
        response.close()
        connection = response.connection
        new_response: requests.Response = connection.send(retry, **kwargs)
        new_response.history.append(response)
        new_response.request = retry
        return new_response

    def __repr__(self) -> str:
        return f"TokenleaseAuth({self.manager!r})"
