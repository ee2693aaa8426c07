"""Fixtures shared by every test package: an isolated home and the CLI as a user runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

from broker.vault import ensure_key
from config.home import init_config
from config.paths import Paths, resolve_paths

ROOT = Path(__file__).resolve().parent.parent
RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A fresh, initialised BLINDKEY_HOME used by in-process code and spawned CLIs alike."""
    root = tmp_path / "home"
    monkeypatch.setenv("BLINDKEY_HOME", str(root))
    paths = resolve_paths()
    init_config(paths)
    ensure_key(paths)
    return paths


@pytest.fixture
def run_cli(home: Paths) -> RunCli:
    """Run `blindkey ARGS...` in a subprocess, as a user would; never raises on failure."""

    def run(
        *args: str, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir)}
        return subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def upstream_port() -> Iterator[int]:
    """The misbehaving loopback upstream of tests/upstream.py, in a process of its own."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("PORT "), line
        yield int(line.split()[1])
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """In-process servers run on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}
