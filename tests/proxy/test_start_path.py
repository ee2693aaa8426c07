"""`proxy start`'s path, read from the processes' own import reports (PYTHONPROFILEIMPORTTIME):
the command builds the proxy group's tree alone and launches the daemon before it reads
config.toml; the daemon serves before it loads proxy mode's CA or audit shipping's sinks.
Errors read as they did: a refused --host (exit 2) and a bad config.toml (exit 1) in the
daemon's words, nothing left running, no broker left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from blindkey.config.paths import Paths
from blindkey.proxy.lifecycle import READY_FD
from tests.conftest import ROOT
from tests.imported import REPORT, imported, loaded, modules
from tests.proxy.test_start_ready import PATIENCE, word


def blindkey(home: Paths, *args: str, report: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir), **(REPORT if report else {})}
    return subprocess.run(
        [sys.executable, "-m", "blindkey.cli", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip


def brokers_of(home: Paths) -> list[int]:
    """Live processes serving this home's broker socket."""
    socket = str(home.broker_socket).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"blindkey.broker" in command and socket in command:
                found.append(int(entry.name))
    return found


def test_start_loads_the_proxy_group_alone_and_reads_no_config(home: Paths) -> None:
    started = blindkey(home, "proxy", "start", "--port", "0", report=True)
    try:
        assert started.returncode == 0, started.stderr
        names = set(modules(started.stderr))
        assert "blindkey.proxy.detach" in names
        # The other groups' modules (importlib loads the groups themselves, unreported;
        # what they import at their top is), the settings, the event loop and http.client
        # are not the command's: the daemon loads what it needs itself.
        unloaded = {"blindkey.cli.approvals", "blindkey.broker.serve", "blindkey.config.model"}
        assert names.isdisjoint(unloaded | {"asyncio", "http.client"})
        assert blindkey(home, "proxy", "status").returncode == 0
    finally:
        blindkey(home, "proxy", "stop")


def test_a_refused_host_is_a_usage_error_in_the_same_words(home: Paths) -> None:
    refused = blindkey(home, "proxy", "start", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("blindkey: --host 0.0.0.0 is not a loopback address")
    assert blindkey(home, "proxy", "status").returncode == 3
    assert brokers_of(home) == []


@pytest.mark.parametrize(
    ("text", "said"), [("[proxy\nport = 1", "invalid TOML"), ("[proxy]\nprot = 1\n", "prot")]
)
def test_a_bad_config_fails_the_start_in_its_words_and_leaves_no_broker(
    home: Paths, text: str, said: str
) -> None:
    # Valid TOML naming no broker socket: the daemon launched its broker before the
    # settings refused the file, and ends it.
    home.config_file.write_text(text)
    failed = blindkey(home, "proxy", "start", "--port", "0")
    assert failed.returncode == 1
    (line,) = failed.stderr.splitlines()
    assert line.startswith(f"blindkey: {home.config_file}") and said in line
    assert blindkey(home, "proxy", "status").returncode == 3
    assert brokers_of(home) == []


def test_the_daemon_serves_before_loading_proxy_mode_and_shipping(
    home: Paths, tmp_path: Path
) -> None:
    """What every process of the start (the daemon and its broker) had loaded once the
    daemon said it serves: not cryptography's X.509 (proxy mode's CA, at the first
    CONNECT) nor a shipping sink ([audit.ship] is not configured: nothing ships)."""
    report = tmp_path / "imports.txt"
    ready, ready_w = os.pipe()
    env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir), READY_FD: str(ready_w), **REPORT}
    with report.open("wb") as errors:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "blindkey.proxy", "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
            pass_fds=(ready_w,), env=env, cwd=ROOT,
        )  # fmt: skip
    os.close(ready_w)
    try:
        assert word(ready) == b"1"
        names = imported(report)
    finally:
        os.close(ready)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=PATIENCE)
    assert "blindkey.proxy.server" in names
    assert loaded(names, "cryptography.x509") == []
    assert "blindkey.proxy.tls.ca" not in names
    sinks = {"otlp", "journald", "child", "shared"}
    assert names.isdisjoint({f"blindkey.audit.ship.{sink}" for sink in sinks})
