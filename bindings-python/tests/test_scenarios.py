"""The shared scenarios of tests/scenarios (see the README there), run from Python: each
story against a fresh test token server whose clock moves in step with the manager's
``tokenlease.testing.ManualClock``; every API call goes through ``requests`` with
``TokenleaseAuth``, so core decides the header, the SOAP body placement and the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import requests

from conftest import REPO, Server, spawn_server
from tokenlease import Manager
from tokenlease.requests_auth import TokenleaseAuth
from tokenlease.testing import ManualClock

SCENARIOS = REPO / "tests" / "scenarios"
FILES = sorted(SCENARIOS.glob("*.scenario"))


def test_every_shared_scenario_is_here() -> None:
    assert len(FILES) >= 5, FILES


class Story:
    """One scenario being told: the server, the clock, the manager once built."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.clock = ManualClock()
        self.config = ""
        self.manager: Optional[Manager] = None
        self.http = requests.Session()

    def built(self) -> Manager:
        if self.manager is None:
            text = self.config.replace("{{server}}", self.server.url)
            self.manager = Manager.from_config(text, clock=self.clock)
            self.http.auth = TokenleaseAuth(self.manager)
        return self.manager

    def stat(self, name: str) -> int:
        value: Any = self.server.stats()
        for part in name.split("."):
            value = value.get(part, 0) if isinstance(value, dict) else 0
        return int(value)

    def step(self, step: str, rest: str) -> None:
        if step == "config":
            self.config = (REPO / rest).read_text()
        elif step == "replace":
            old, new = rest.split(" => ", 1)
            assert old in self.config, "not in the configuration"
            self.config = self.config.replace(old, new)
        elif step == "control":
            self.server.control(**json.loads(rest))
        elif step == "call":
            words: List[str] = rest.split(" ")
            manager = self.built()
            target = words[1]
            if target.startswith("@"):
                url = manager.token_info().attributes[target[1:]]
            else:
                url = self.server.url + target
            body = (SCENARIOS / words[3]).read_text() if len(words) > 3 else None
            response = self.http.request(words[0], url, data=body, timeout=30)
            assert str(response.status_code) == words[2], response.text[:500]
        elif step == "advance":
            manager = self.built()
            for _ in range(int(rest)):
                self.server.control(advance_s=60)
                self.clock.advance(60, settle=manager)
        elif step == "server-stat":
            name, expected = rest.split(" ")
            assert self.stat(name) == int(expected), self.server.stats()
        elif step == "manager-counter":
            name, expected = rest.split(" ")
            counters: Dict[str, int] = self.built().status().counters
            assert counters[name] == int(expected), counters
        elif step == "info-contains":
            info = self.built().session_info()
            assert rest in info, info
        elif step == "revoke":
            self.built().revoke()
        else:
            raise AssertionError(f"unknown step {step}")

    def close(self) -> None:
        self.http.close()
        if self.manager is not None:
            self.manager.close()


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_shared_scenario(path: Path) -> None:
    with spawn_server(max_lifetime_s=300) as server:
        story = Story(server)
        try:
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip() or line.startswith("#"):
                    continue
                step, _, rest = line.partition(" ")
                try:
                    story.step(step, rest)
                except AssertionError as failure:
                    raise AssertionError(f"{path.name}:{number}: {line}: {failure}") from None
        finally:
            story.close()


def test_the_manual_clock_moves_only_when_told_and_checks_its_arguments() -> None:
    clock = ManualClock(wall=1_800_000_000.0)
    assert clock.wall() == pytest.approx(1_800_000_000.0)
    clock.advance(90.5)
    assert clock.wall() == pytest.approx(1_800_000_090.5)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            clock.advance(bad)
        with pytest.raises(ValueError):
            ManualClock(wall=bad)
    assert clock.wall() == pytest.approx(1_800_000_090.5)
    assert "ManualClock" in repr(clock)
