"""Static typing: the package, its stubs and an example pass mypy --strict; stubtest is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

pytest.importorskip("mypy")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_mypy_strict_on_the_package_and_an_example():
    result = _run("mypy", "--strict", "--no-incremental", "--cache-dir", "/dev/null", "-p", "tokenlease")
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run("mypy", "--strict", "--no-incremental", "--cache-dir", "/dev/null", "examples/typed_example.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubtest():
    result = _run("mypy.stubtest", "tokenlease", "--ignore-missing-stub")
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_runs(server):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "typed_example.py"), server.token_url],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
