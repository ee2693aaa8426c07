"""Fixtures shared by every test package: an isolated home and the CLI as a user runs it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvloop

from blindkey.broker.vault import ensure_key
from blindkey.config.home import init_config
from blindkey.config.paths import Paths, resolve_paths
from tests.staging import Installed, install

if TYPE_CHECKING:
    from tests.proxy.conftest import Env

ROOT = Path(__file__).resolve().parent.parent
RunCli = Callable[..., subprocess.CompletedProcess[str]]

# What the caller's shell says about blindkey must not reach a test, nor any process a test
# starts with os.environ: a user's own home, agent token or XDG directories would otherwise
# be read (or written) by tests that meant their own.
CALLER_ONLY = (
    "BLINDKEY_HOME",
    "BLINDKEY_AGENT_TOKEN",
    "BLINDKEY_BROKER_SUPERVISED",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
    "XDG_RUNTIME_DIR",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    # A developer's desktop session: brokers under test would notify it ([notify] desktop).
    "DBUS_SESSION_BUS_ADDRESS",
)
for _name in CALLER_ONLY:
    os.environ.pop(_name, None)


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
            [sys.executable, "-m", "blindkey.cli", *args],
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


@pytest.fixture(scope="session")
def installed() -> Iterator[Installed]:
    """blindkey from its wheel in a fresh venv under /tmp that every user may read."""
    base = Path(tempfile.mkdtemp(prefix="blindkey-wheel-", dir="/tmp"))
    try:
        yield install(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """In-process servers run on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def env(home: Paths) -> AsyncIterator[Env]:
    """A running proxy with its broker and a test upstream (tests/proxy/conftest.py): used by
    the tests of every package that drives the proxy (proxy, cli, service, redact)."""
    from tests.proxy.conftest import open_env

    async with open_env(home) as running:
        yield running
