"""`secrets push|pull|diff` between the local store and a team store under [remote]."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.broker.conftest import ROOT_TOKEN, Bao, StartBao, one_line_error
from tests.conftest import RunCli

LOCAL = {"SAME": "same-value-1111", "CHANGED": "local-changed-2222", "LOCAL_ONLY": "local-3333"}
REMOTE = {"SAME": "same-value-1111", "CHANGED": "remote-changed-4444", "TEAM_ONLY": "team-5555"}
EVERY_VALUE = [*LOCAL.values(), *REMOTE.values()]


@pytest.fixture
def team(home: Paths, start_bao: StartBao, tmp_path: Path) -> Bao:
    bao = start_bao()
    token_file = tmp_path / "team-token"
    token_file.write_text(ROOT_TOKEN)
    with home.config_file.open("a") as config:
        config.write(f'\n[remote]\naddress = "{bao.address}"\ntoken_file = "{token_file}"\n')
    vault = FileVault(home)
    for name, value in LOCAL.items():
        vault.set("development", name, value)
    for name, value in REMOTE.items():
        bao.write(f"blindkey/development/{name}", value)
    return bao


def shown(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    for value in EVERY_VALUE:
        assert value not in result.stdout and value not in result.stderr
    return result


def shown_differing(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`secrets diff` found differences: exit 1 as diff(1), no error line."""
    assert result.returncode == 1 and result.stderr == "", result.stderr
    for value in EVERY_VALUE:
        assert value not in result.stdout
    return result


def test_diff_names_sides_and_differences_without_values(team: Bao, run_cli: RunCli) -> None:
    result = shown_differing(run_cli("secrets", "diff", "--json"))
    assert json.loads(result.stdout) == [
        {
            "env": "development",
            "only_in_local": ["LOCAL_ONLY"],
            "only_in_remote": ["TEAM_ONLY"],
            "differ": ["CHANGED"],
        }
    ]
    human = shown_differing(run_cli("secrets", "diff", "--dry-run")).stdout
    assert "- LOCAL_ONLY" in human and "+ TEAM_ONLY" in human and "~ CHANGED" in human
    assert "SAME" not in human


def test_push_dry_run_then_push(team: Bao, home: Paths, run_cli: RunCli) -> None:
    dry = json.loads(shown(run_cli("secrets", "push", "--dry-run", "--json")).stdout)
    assert dry == [
        {
            "env": "development",
            "created": ["LOCAL_ONLY"],
            "updated": ["CHANGED"],
            "unchanged": 1,
            "only_in_target": ["TEAM_ONLY"],
            "dry_run": True,
        }
    ]
    assert team.read("blindkey/development/CHANGED") == REMOTE["CHANGED"]
    assert team.read("blindkey/development/LOCAL_ONLY") is None

    human = shown(run_cli("secrets", "push")).stdout
    assert "1 new, 1 changed, 1 unchanged" in human
    assert team.read("blindkey/development/CHANGED") == LOCAL["CHANGED"]
    assert team.read("blindkey/development/LOCAL_ONLY") == LOCAL["LOCAL_ONLY"]
    assert team.read("blindkey/development/TEAM_ONLY") == REMOTE["TEAM_ONLY"], "left alone"
    assert FileVault(home).load()["development"] == LOCAL
    # TEAM_ONLY is still only there: the sides differ, exit 1.
    after = json.loads(shown_differing(run_cli("secrets", "diff", "--json")).stdout)[0]
    assert after["differ"] == [] and after["only_in_local"] == []


def test_pull_dry_run_then_pull(team: Bao, home: Paths, run_cli: RunCli) -> None:
    dry = json.loads(shown(run_cli("secrets", "pull", "--dry-run", "--json")).stdout)
    assert dry[0]["created"] == ["TEAM_ONLY"] and dry[0]["updated"] == ["CHANGED"]
    assert FileVault(home).load()["development"] == LOCAL

    shown(run_cli("secrets", "pull"))
    assert FileVault(home).load()["development"] == {**LOCAL, **REMOTE}
    assert team.read("blindkey/development/LOCAL_ONLY") is None, "pull never writes remotely"


def test_other_environments_and_production_needs_yes(
    team: Bao, home: Paths, run_cli: RunCli
) -> None:
    FileVault(home).set("production", "PROD_KEY", "prod-value-6666")
    assert json.loads(shown(run_cli("secrets", "push", "--env", "staging", "--json")).stdout) == [
        {
            "env": "staging",
            "created": [],
            "updated": [],
            "unchanged": 0,
            "only_in_target": [],
            "dry_run": False,
        }
    ]
    line = one_line_error(run_cli("secrets", "push", "--env", "production"))
    assert "confirm with --yes" in line
    assert team.read("blindkey/production/PROD_KEY") is None
    shown(run_cli("secrets", "push", "--env", "production", "--dry-run"))
    shown(run_cli("secrets", "push", "--all", "--yes"))
    assert team.read("blindkey/production/PROD_KEY") == "prod-value-6666"
    assert team.read("blindkey/development/LOCAL_ONLY") == LOCAL["LOCAL_ONLY"]


def test_without_remote_or_with_half_an_env_pair(home: Paths, run_cli: RunCli) -> None:
    line = one_line_error(run_cli("secrets", "push"))
    assert "no team store: add [remote]" in line
    one_line_error(run_cli("secrets", "diff"))
    result = run_cli("secrets", "diff", "--from", "development")
    assert result.returncode == 2
    assert "give both --from ENV and --to ENV" in result.stderr


def test_unreachable_remote_is_one_line(team: Bao, run_cli: RunCli) -> None:
    team.stop()
    for action in ("push", "pull", "diff"):
        line = one_line_error(run_cli("secrets", action))
        assert "is unreachable" in line
