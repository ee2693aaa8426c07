"""A vault, agents or approvals file that stops decrypting under a running proxy shows in
`proxy status` (text and --json) with the file and what to do, while `secrets` commands
fail on it. A real detached proxy and its broker; the files damaged for real."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from blindkey.broker.approvals.store import approvals_file
from blindkey.config.paths import Paths
from tests.approvals_helpers import enrol
from tests.conftest import RunCli


def _flip(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01
    path.write_bytes(bytes(blob))


def _status_until(run_cli: RunCli, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        done = run_cli("proxy", "status", "--json")
        assert done.returncode == 0, done.stderr
        info: dict[str, Any] = json.loads(done.stdout)
        if info.get(key):
            return info
        assert time.monotonic() < deadline, f"proxy status never showed {key}: {info}"
        time.sleep(0.1)


@pytest.mark.parametrize("which", ["vault", "agents"])
def test_a_file_that_stopped_decrypting_shows_in_status(
    home: Paths, run_cli: RunCli, which: str
) -> None:
    assert run_cli("secrets", "set", "K", input="abcdefghijklmnop1234\n").returncode == 0
    assert run_cli("agent", "add", "tester").returncode == 0
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    try:
        damaged = home.vault_file if which == "vault" else home.agents_file
        _flip(damaged)
        info = _status_until(run_cli, "load_error")
        assert str(damaged) in info["load_error"]
        assert "restore that file" in info["load_error_hint"]
        text = run_cli("proxy", "status").stdout
        assert str(damaged) in text and "restore that file" in text
    finally:
        assert run_cli("proxy", "stop").returncode == 0


def test_an_unreadable_approvals_file_shows_in_status(home: Paths, run_cli: RunCli) -> None:
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    try:
        enrol()
        _flip(approvals_file(home))
        info = _status_until(run_cli, "approvals_error")
        assert str(approvals_file(home)) in info["approvals_error"]
        assert "Restore it from a backup" in info["approvals_error"]
        assert info["healthy"] is False
        text = run_cli("proxy", "status").stdout
        assert "approvals file unreadable" in text
    finally:
        assert run_cli("proxy", "stop").returncode == 0
