"""A small typed program using tokenlease; checked with `mypy --strict` in the tests."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Dict, List

import tokenlease
from tokenlease import FetchedToken, Manager, TokenInfo


class StaticSource:
    def fetch(self) -> FetchedToken:
        return FetchedToken(value="example-token", expires_in=600)


class MemoryStore:
    def __init__(self) -> None:
        self.records: Dict[str, str] = {}

    def load(self, key: str) -> str | None:
        return self.records.get(key)

    def save(self, key: str, record: str) -> None:
        self.records[key] = record

    def delete(self, key: str) -> None:
        self.records.pop(key, None)


def main(token_url: str) -> int:
    events: List[Dict[str, Any]] = []
    with Manager(StaticSource(), store=MemoryStore(), listener=events.append) as manager:
        info: TokenInfo = manager.token_info()
        value: str = manager.token()
        assert value == info.value
        status = manager.status()
        print(status.state, status.generation, info.expires_at.isoformat())

    config: Dict[str, Any] = {
        "source": {
            "type": "oauth2_client_credentials",
            "token_url": token_url,
            "client_id": "demo-client",
            "client_secret": "demo-secret",
        }
    }

    async def use_async() -> str:
        async with Manager.from_config(config) as manager:
            return await manager.token_async()

    try:
        asyncio.run(use_async())
    except tokenlease.TokenleaseError as err:
        print(f"failed: kind={err.kind} code={err.code}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
