"""`blindkey doctor`: each check is made to warn or fail for real, and says what to do."""

from __future__ import annotations

import os
import shutil
from typing import Any

import orjson
import pytest

from blindkey.broker.approvals.store import approvals_file
from blindkey.cli.doctor import Finding, diagnose
from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.paths import Paths
from tests.conftest import RunCli


def finding(paths: Paths, check: str) -> Finding:
    found = [f for f in diagnose(paths) if f.check == check]
    assert len(found) == 1, found
    return found[0]


def policy(paths: Paths, name: str, **keys: Any) -> None:
    def change(document: Any) -> None:
        section = toml_table(document, "secrets", name)
        for key, value in keys.items():
            section[key] = string_array(value) if isinstance(value, list) else value

    edit_config(paths.config_file, paths.lock_file, change)


def test_a_fresh_home_passes_with_the_single_user_warning(home: Paths, run_cli: RunCli) -> None:
    done = run_cli("doctor", "--json")
    assert done.returncode == 0, done.stderr
    rows = orjson.loads(done.stdout)
    assert all(set(row) == {"check", "status", "detail"} for row in rows)
    statuses = {row["check"]: row["status"] for row in rows}
    assert statuses["deployment"] == "warn" and statuses["file modes"] == "ok"
    deployment = next(row for row in rows if row["check"] == "deployment")
    assert "can read the vault key" in deployment["detail"]
    assert "run --isolate" in deployment["detail"] and "--system" in deployment["detail"]
    text = run_cli("doctor").stdout
    assert text.splitlines()[1].startswith("warn  deployment: single-user")


def test_a_broker_of_another_user_is_the_separate_deployment(home: Paths) -> None:
    socket = home.state_dir / "elsewhere.sock"
    socket.write_bytes(b"")
    os.chown(socket, 65534, 65534)  # nobody's (the tests run as root)

    def point(document: Any) -> None:
        toml_table(document, "broker")["socket"] = str(socket)

    edit_config(home.config_file, home.lock_file, point)
    assert finding(home, "deployment") == Finding(
        "deployment", "ok", "separate broker user: the vault is not this user's"
    )


def test_an_open_file_mode_fails(home: Paths, run_cli: RunCli) -> None:
    home.vault_key.chmod(0o644)
    found = finding(home, "file modes")
    assert found.status == "fail" and f"chmod 600 {home.vault_key}" in found.detail
    assert run_cli("doctor").returncode == 1


def test_a_proxy_that_is_not_running_warns_and_a_healthy_one_passes(
    home: Paths, run_cli: RunCli
) -> None:
    assert finding(home, "proxy").status == "warn"
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    try:
        found = finding(home, "proxy")
        assert found.status == "ok" and "healthy" in found.detail
    finally:
        assert run_cli("proxy", "stop").returncode == 0


def test_a_store_that_cannot_be_read_fails(home: Paths, run_cli: RunCli) -> None:
    assert run_cli("secrets", "set", "K", input="abcdefghijklmnop1234\n").returncode == 0
    home.vault_file.write_bytes(os.urandom(200))
    found = finding(home, "secret store")
    assert found.status == "fail" and found.detail.startswith("file: ")


@pytest.mark.parametrize(
    ("program", "status"),
    [
        ("/home/ann/.local/bin/blindkey", "warn"),
        ("/tmp/venv/bin/blindkey", "warn"),
        ("/usr/local/bin/blindkey", "ok"),
    ],
)
def test_where_a_service_would_run_from(
    home: Paths, monkeypatch: pytest.MonkeyPatch, program: str, status: str
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: program)
    found = finding(home, "service program")
    assert found.status == status and program in found.detail


def test_approvers(home: Paths, run_cli: RunCli) -> None:
    assert finding(home, "approvers").status == "warn"  # none, and nothing gated
    policy(home, "STRIPE_KEY", tier="restricted", hosts=["api.stripe.com"])
    found = finding(home, "approvers")
    assert found.status == "fail" and "STRIPE_KEY" in found.detail
    assert run_cli("totp", "enroll").returncode == 0  # pending until confirmed
    pending = [f for f in diagnose(home) if f.check == "approvers"]
    assert any(f.status == "warn" and "totp confirm" in f.detail for f in pending)


def test_loose_policies_warn(home: Paths) -> None:
    assert {finding(home, c).status for c in ("secret bindings", "release channels")} == {"ok"}
    policy(home, "GITHUB_TOKEN", tier="open", release=["proxy", "env"])
    assert "GITHUB_TOKEN" in finding(home, "secret bindings").detail
    assert "GITHUB_TOKEN" in finding(home, "release channels").detail
    assert finding(home, "release channels").status == "warn"

    def anonymous(document: Any) -> None:
        toml_table(document, "proxy")["require_agent_token"] = False

    assert finding(home, "agent tokens").status == "ok"
    edit_config(home.config_file, home.lock_file, anonymous)
    assert finding(home, "agent tokens").status == "warn"


def test_an_unreadable_config_is_one_failure(home: Paths, run_cli: RunCli) -> None:
    home.config_file.write_text("[proxy\n")
    done = run_cli("doctor", "--json")
    assert done.returncode == 1
    (row,) = orjson.loads(done.stdout)
    assert row["check"] == "config" and row["status"] == "fail"


def test_an_approvals_file_that_does_not_decrypt_fails(home: Paths, run_cli: RunCli) -> None:
    assert run_cli("totp", "enroll").returncode == 0
    assert finding(home, "approvals store").status == "ok"
    stored = approvals_file(home)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 1
    stored.write_bytes(bytes(data))
    assert finding(home, "approvals store").status == "fail"
