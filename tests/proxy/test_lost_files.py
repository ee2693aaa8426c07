"""A file of the home lost under a running proxy: the commands that do not need it keep
working, so a human can still see and stop the proxy, and the ones that do say what to do."""

from __future__ import annotations

from blindkey.config.paths import Paths
from tests.conftest import RunCli


def test_a_lost_vault_key_leaves_status_logs_and_stop_working(home: Paths, run_cli: RunCli) -> None:
    """Issue: with vault.key gone, `proxy status`, `proxy stop` and `proxy logs` exited 1
    while the proxy kept injecting from its cache: the CLI could not stop it."""
    assert run_cli("secrets", "set", "K", input="abcdefghijklmnop1234\n").returncode == 0
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    try:
        home.vault_key.unlink()
        status = run_cli("proxy", "status")
        assert status.returncode == 0, status.stderr
        assert run_cli("proxy", "logs", "--last", "1").returncode == 0
        listed = run_cli("secrets", "list")
        assert listed.returncode == 1
        assert "restore the key from your backup" in listed.stderr
        assert not home.vault_key.exists()  # no new key was made over the vault
    finally:
        stopped = run_cli("proxy", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert run_cli("proxy", "status").returncode == 3
