"""requests and httpx adapters: attach the token; one retry after a token rejection."""

from __future__ import annotations

import asyncio

import pytest

from tokenlease import Manager, is_token_rejected


def test_core_classifies_rejections():
    assert is_token_rejected(401, 'Bearer error="invalid_token"')
    assert is_token_rejected(401, "Bearer")
    assert is_token_rejected(401, None)
    assert not is_token_rejected(401, 'Bearer error="insufficient_scope"')
    assert not is_token_rejected(403, 'Bearer error="invalid_token"')
    assert not is_token_rejected(200)


def test_requests_adapter_retries_once_after_rejection(server):
    requests = pytest.importorskip("requests")
    from tokenlease.requests_auth import TokenleaseAuth

    with Manager.from_config(server.config()) as manager:
        auth = TokenleaseAuth(manager)
        with requests.Session() as session:
            assert session.get(server.resource_url, auth=auth).status_code == 200
            old = manager.token_info()
            server.control(revoke_all=True, reset_stats=True)
            response = session.post(server.resource_url, data=b"payload", auth=auth)
            assert response.status_code == 200
            assert len(response.history) == 1 and response.history[0].status_code == 401
            assert manager.token_info().generation == old.generation + 1
            stats = server.stats()
            assert stats["token_requests"] == 1
            assert stats["resource_rejections"] == 1
            # A non-replayable body is not retried.
            server.control(revoke_all=True, reset_stats=True)
            response = session.post(server.resource_url, data=iter([b"a", b"b"]), auth=auth)
            assert response.status_code == 401
            assert server.stats()["token_requests"] == 0


def test_httpx_adapter_sync_and_async(server):
    httpx = pytest.importorskip("httpx")
    from tokenlease.httpx_auth import TokenleaseHttpxAuth

    with Manager.from_config(server.config()) as manager:
        auth = TokenleaseHttpxAuth(manager)
        with httpx.Client(auth=auth) as client:
            assert client.get(server.resource_url).status_code == 200
            server.control(revoke_all=True, reset_stats=True)
            response = client.post(server.resource_url, content=b"payload")
            assert response.status_code == 200
            assert len(response.history) == 1
            assert server.stats()["token_requests"] == 1

        async def main() -> None:
            async with httpx.AsyncClient(auth=auth) as client:
                assert (await client.get(server.resource_url)).status_code == 200
                server.control(revoke_all=True, reset_stats=True)
                response = await client.get(server.resource_url)
                assert response.status_code == 200
                assert server.stats()["token_requests"] == 1

        asyncio.run(main())
