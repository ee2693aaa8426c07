"""`blindkey environment list|switch|copy`, and what the broker serves after a switch."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import tomllib

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.broker.conftest import ROOT, Brokers, acli, one_line_error, point_at
from tests.conftest import RunCli


@pytest.fixture
def filled(home: Paths) -> Paths:
    vault = FileVault(home)
    vault.set("development", "GH", "dev-gh-value")
    vault.set("development", "STRIPE", "dev-stripe-value")
    vault.set("staging", "GH", "staging-gh-value")
    return home


def active(home: Paths) -> str:
    return str(tomllib.loads(home.config_file.read_text())["environments"]["active"])


def on_terminal(home: Paths, *args: str, answer: str) -> tuple[int, str]:
    """Run the CLI with a terminal on stdin and stderr; answer its question."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "blindkey.cli", *args],
        stdin=terminal,
        stderr=terminal,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "BLINDKEY_HOME": str(home.config_dir)},
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 20
    while b"[y/N]" not in seen:
        assert time.monotonic() < deadline, seen
        if select.select([controller], [], [], 0.1)[0]:
            seen += os.read(controller, 1024)
    os.write(controller, answer.encode() + b"\n")
    assert process.stdout is not None
    out = process.stdout.read().decode()
    process.wait(timeout=20)
    process.stdout.close()
    while select.select([controller], [], [], 0.05)[0]:
        try:
            chunk = os.read(controller, 1024)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    return process.returncode, out + seen.decode(errors="replace")


def test_list_counts_the_secrets_of_each_environment(filled: Paths, run_cli: RunCli) -> None:
    result = run_cli("environment", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"name": "development", "active": True, "secrets": 2},
        {"name": "staging", "active": False, "secrets": 1},
        {"name": "production", "active": False, "secrets": 0},
    ]
    human = run_cli("environment", "list").stdout.splitlines()
    assert human[1].split() == ["*", "development", "2"]
    assert "dev-gh-value" not in result.stdout


def test_switch_changes_where_values_go_and_come_from(filled: Paths, run_cli: RunCli) -> None:
    assert run_cli("environment", "switch", "staging").returncode == 0
    assert active(filled) == "staging"
    assert run_cli("secrets", "set", "NEW", input="new-staging-value").returncode == 0
    assert FileVault(filled).load()["staging"]["NEW"] == "new-staging-value"
    rows = json.loads(run_cli("environment", "list", "--json").stdout)
    assert [r["name"] for r in rows if r["active"]] == ["staging"]
    assert "already the active" in run_cli("environment", "switch", "staging").stdout
    line = one_line_error(run_cli("environment", "switch", "nowhere"))
    assert "unknown environment 'nowhere'" in line


def test_switching_to_production_needs_confirmation(filled: Paths, run_cli: RunCli) -> None:
    line = one_line_error(run_cli("environment", "switch", "production"))
    assert "switch the active environment to production: confirm with --yes" in line
    assert active(filled) == "development"

    code, output = on_terminal(filled, "environment", "switch", "production", answer="n")
    assert code == 1 and "not confirmed" in output
    assert active(filled) == "development"

    code, output = on_terminal(filled, "environment", "switch", "production", answer="y")
    assert code == 0, output
    assert active(filled) == "production"
    assert run_cli("environment", "switch", "development").returncode == 0
    assert run_cli("environment", "switch", "production", "--yes").returncode == 0
    assert active(filled) == "production"


def test_copy_between_environments(filled: Paths, run_cli: RunCli) -> None:
    result = run_cli("environment", "copy", "development", "staging")
    assert result.returncode == 0, result.stderr
    assert "copied 2 secrets from development to staging (1 replaced, 1 new)" in result.stdout
    assert FileVault(filled).load()["staging"] == {
        "GH": "dev-gh-value",
        "STRIPE": "dev-stripe-value",
    }
    diff = run_cli("secrets", "diff", "--from", "development", "--to", "staging", "--json")
    assert diff.returncode == 0 and json.loads(diff.stdout)["differ"] == []
    assert "holds no secrets" in one_line_error(
        run_cli("environment", "copy", "production", "staging")
    )
    assert "onto itself" in one_line_error(run_cli("environment", "copy", "staging", "staging"))


def test_copying_into_production_needs_confirmation(filled: Paths, run_cli: RunCli) -> None:
    line = one_line_error(run_cli("environment", "copy", "staging", "production"))
    assert "into production: confirm with --yes" in line
    code, _ = on_terminal(filled, "environment", "copy", "staging", "production", answer="no")
    assert code == 1
    assert "production" not in FileVault(filled).load()

    code, output = on_terminal(filled, "environment", "copy", "staging", "production", answer="y")
    assert code == 0, output
    assert FileVault(filled).load()["production"] == {"GH": "staging-gh-value"}
    assert run_cli("environment", "copy", "development", "production", "--yes").returncode == 0
    assert len(FileVault(filled).load()["production"]) == 2


async def test_a_running_broker_serves_the_new_environment_when_switch_returns(
    filled: Paths, brokers: Brokers
) -> None:
    token = AgentStore(filled.agents_file, filled.lock_file).add("claude")
    point_at(filled, brokers.socket)
    client = brokers.client(await brokers.start(filled))
    reply = await client.call("resolve", token=token, names=["GH"], host="x.io")
    assert (reply["env"], reply["values"]) == ("development", {"GH": "dev-gh-value"})
    assert (await acli(filled.config_dir, "environment", "switch", "staging")).returncode == 0
    # no file watcher runs here: the switch itself told the broker
    reply = await client.call("resolve", token=token, names=["GH"], host="x.io")
    assert (reply["env"], reply["values"]) == ("staging", {"GH": "staging-gh-value"})
    reply = await client.call("resolve", token=token, names=["STRIPE"], host="x.io")
    assert reply["denied"]["error"] == "unknown_secret"
    assert "in environment staging" in reply["denied"]["message"]
    assert (await client.call("redaction_set"))["values"] == {"GH": "staging-gh-value"}
