"""`proxy status` shows what the operator of an unattended service needs: the secret
store's last error as the broker reports it, and the audit's state."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
import tomlkit

from blindkey.config.edit import edit_config, toml_table
from blindkey.config.paths import Paths
from tests.conftest import RunCli


def test_status_shows_an_unreachable_store_and_the_audit(
    home: Paths, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAO_TOKEN", "test-token")
    # A port held but not listening: every connection to it is refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{closed.getsockname()[1]}"

        def openbao(document: tomlkit.TOMLDocument) -> None:
            backend = toml_table(document, "backend")
            backend["kind"] = "openbao"
            backend["address"] = address

        edit_config(home.config_file, home.lock_file, openbao)
        started = run_cli("proxy", "start", "--port", "0")
        assert started.returncode == 0, started.stderr
        try:
            text = run_cli("proxy", "status")
            assert text.returncode == 0
            assert f"secret store: OpenBao at {address} is unreachable" in text.stdout
            assert "audit: ok," in text.stdout
            info = json.loads(run_cli("proxy", "status", "--json").stdout)
            assert "unreachable" in info["backend_error"]
            assert info["audit"]["state"] == "ok" and info["audit"]["error"] is None
        finally:
            assert run_cli("proxy", "stop").returncode == 0


def test_a_healthy_store_shows_no_error(home: Paths, run_cli: RunCli) -> None:
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    try:
        text = run_cli("proxy", "status")
        assert "secret store:" not in text.stdout
        assert json.loads(run_cli("proxy", "status", "--json").stdout)["backend_error"] is None
    finally:
        assert run_cli("proxy", "stop").returncode == 0


def test_status_names_the_deployment_and_counts_records_as_they_are_written(
    home: Paths, run_cli: RunCli
) -> None:
    """Issue: the record count stopped moving (125 while the audit was at 137): the status
    file is rewritten on changes of state, not per record. Now the count is read at once."""
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    try:
        first = json.loads(run_cli("proxy", "status", "--json").stdout)
        assert first["deployment"] == "single-user"
        port = first["port"]
        for _ in range(3):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read()
        later = json.loads(run_cli("proxy", "status", "--json").stdout)
        assert later["audit"]["seq"] >= first["audit"]["seq"] + 3
        assert "deployment: single-user" in run_cli("proxy", "status").stdout
    finally:
        assert run_cli("proxy", "stop").returncode == 0
