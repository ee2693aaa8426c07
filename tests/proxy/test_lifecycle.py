"""`proxy start|stop|status|reload` driven as a user would, against a detached daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from blindkey.config.paths import Paths
from tests.conftest import RunCli


def status_json(run_cli: RunCli) -> dict[str, Any]:
    result = run_cli("proxy", "status", "--json")
    return dict(json.loads(result.stdout))


@pytest.fixture
def started(run_cli: RunCli, home: Paths) -> Iterator[int]:
    result = run_cli("proxy", "start", "--port", "0")
    assert result.returncode == 0, result.stderr
    port = int(status_json(run_cli)["port"])
    yield port
    run_cli("proxy", "stop")


def test_start_returns_once_healthy(run_cli: RunCli, home: Paths) -> None:
    began = time.monotonic()
    result = run_cli("proxy", "start", "--port", "0")
    elapsed = time.monotonic() - began
    try:
        assert result.returncode == 0, result.stderr
        assert "running on http://127.0.0.1:" in result.stdout
        port = int(status_json(run_cli)["port"])
        # Health must answer the moment start has returned, without a retry.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            assert json.loads(response.read()) == {"status": "ok"}
            assert response.headers["X-Blindkey-Request-Id"]
        assert elapsed < 10
    finally:
        run_cli("proxy", "stop")


def test_status_fields_then_not_running(run_cli: RunCli, started: int) -> None:
    info = status_json(run_cli)
    assert info["running"] is True
    for key in ("pid", "port", "uptime_s", "broker", "backend"):
        assert info[key] is not None, key
    assert info["broker"] == "running" and info["backend"] == "file" and info["port"] == started
    assert run_cli("proxy", "status").returncode == 0
    assert run_cli("proxy", "stop").returncode == 0
    result = run_cli("proxy", "status")
    assert result.returncode == 3
    assert "not running" in result.stdout
    assert json.loads(run_cli("proxy", "status", "--json").stdout) == {"running": False}


def test_second_start_is_refused(run_cli: RunCli, started: int) -> None:
    result = run_cli("proxy", "start", "--port", "0")
    assert result.returncode == 1
    assert result.stderr.startswith("blindkey: the proxy is already running")
    assert "Traceback" not in result.stderr


def test_foreground_second_start_is_refused(run_cli: RunCli, started: int) -> None:
    result = run_cli("proxy", "start", "--foreground", "--port", "0")
    assert result.returncode == 1
    assert "already running" in result.stderr


def test_busy_port_is_a_clear_error(run_cli: RunCli, home: Paths) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("proxy", "start", "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli("proxy", "status").returncode == 3


def test_reload_refuses_a_bad_config_and_keeps_serving(
    run_cli: RunCli, home: Paths, started: int
) -> None:
    good = home.config_file.read_text()
    home.config_file.write_text(good.replace("[proxy]\n", "[proxy]\nprot = 1\n"))
    result = run_cli("proxy", "reload")
    assert result.returncode == 1
    assert "config refused" in result.stderr and "prot" in result.stderr
    info = status_json(run_cli)
    assert "prot" in str(info["config_error"])
    with urllib.request.urlopen(f"http://127.0.0.1:{started}/health", timeout=2) as response:
        assert response.status == 200
    home.config_file.write_text(good)
    assert run_cli("proxy", "reload").returncode == 0
    assert status_json(run_cli)["config_error"] is None


def test_sighup_rereads_config(run_cli: RunCli, home: Paths, started: int) -> None:
    pid = int(status_json(run_cli)["pid"])
    home.config_file.write_text(
        home.config_file.read_text().replace("[proxy]\n", "[proxy]\nbogus = 1\n")
    )
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 3
    while "bogus" not in str(status_json(run_cli)["config_error"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stop_drains_an_in_flight_request(run_cli: RunCli, home: Paths, upstream_port: int) -> None:
    assert run_cli("allowlist", "add", f"http://127.0.0.1:{upstream_port}").returncode == 0
    assert run_cli("secrets", "set", "TOKEN_A", input="value-of-token-a-123\n").returncode == 0
    token = json.loads(run_cli("agent", "add", "drainer", "--json").stdout)["token"]
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    port = status_json(run_cli)["port"]
    outcome: dict[str, object] = {}

    def call() -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/proxy",
            headers={
                "X-AS-Agent-Token": token,
                "X-AS-Inject-Bearer": "TOKEN_A",
                "X-AS-Target-URL": f"http://127.0.0.1:{upstream_port}/slow?s=1.5",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            outcome["status"] = response.status
            outcome["body"] = response.read()

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)
    stopped = run_cli("proxy", "stop")
    caller.join(timeout=15)
    assert stopped.returncode == 0, stopped.stderr
    assert outcome == {"status": 200, "body": b"slow done"}
    records = [
        json.loads(line) for line in (home.audit_dir / "audit.jsonl").read_text().splitlines()
    ]
    # The last of the agent's: the /health polls of `proxy start` (no agent) are counted
    # into a summary written at shutdown, after it.
    calls = [r for r in records if r.get("agent") == "drainer"]
    assert calls[-1]["status"] == 200 and calls[-1]["secrets"] == ["TOKEN_A"]
    assert not home.pid_file.exists()
    assert (
        subprocess.run(
            ["pgrep", "-f", f"broker serve --socket {home.broker_socket}"],
            check=False,
            capture_output=True,
        ).returncode
        == 1
    )


def test_stop_drains_then_cuts_a_long_stream_and_exits_0(
    run_cli: RunCli, home: Paths, upstream_port: int
) -> None:
    """The drain is [limits] drain_timeout; what is still streaming then is cut, recorded,
    and `proxy stop` succeeds (it used to wait 20 s and fail while the proxy waited 2x10 s)."""
    config = home.config_file.read_text()
    home.config_file.write_text(config.replace('drain_timeout = "10s"', 'drain_timeout = "1s"'))
    upstream = f"http://127.0.0.1:{upstream_port}"
    assert run_cli("allowlist", "add", upstream).returncode == 0
    assert run_cli("secrets", "set", "GH", input="ghp_drainTestValue0123456789").returncode == 0
    token = json.loads(run_cli("agent", "add", "streamer", "--json").stdout)["token"]
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    port = status_json(run_cli)["port"]
    stream = socket.create_connection(("127.0.0.1", int(port)))
    stream.sendall(
        f"GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nX-AS-Agent-Token: {token}\r\n"
        f"X-AS-Target-URL: {upstream}/drip?n=300\r\nX-AS-Inject-Bearer: GH\r\n\r\n".encode()
    )
    assert stream.recv(1024).startswith(b"HTTP/1.1 200")  # 300 dots 0.1 s apart: 30 s
    began = time.monotonic()
    stopped = run_cli("proxy", "stop")
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stderr
    assert 0.9 < took < 8, took
    stream.settimeout(5)
    while stream.recv(65536):  # the agent sees its stream end: cut, not left hanging
        pass
    stream.close()
    records = [
        json.loads(line) for line in (home.audit_dir / "audit.jsonl").read_text().splitlines()
    ]
    requests = [r for r in records if r.get("event", "request") == "request"]
    assert any(r["url"].endswith("/drip?n=300") for r in requests)


@pytest.mark.parametrize("damaged", ["vault.bin", "vault.key", "agents.json"])
def test_start_fails_with_the_reason_when_the_broker_cannot_open_its_files(
    run_cli: RunCli, home: Paths, damaged: str
) -> None:
    """Health means serving: a proxy whose every call would be 503 is not started."""
    assert run_cli("secrets", "set", "GH", input="ghp_healthTestValue0123456789").returncode == 0
    assert run_cli("agent", "add", "someone").returncode == 0
    (home.state_dir / damaged).write_bytes(b"not what blindkey wrote\n")
    started = run_cli("proxy", "start", "--port", "0")
    try:
        assert started.returncode == 1, started.stdout
        assert "cannot serve" in started.stderr and "Traceback" not in started.stderr
        assert run_cli("proxy", "status").returncode == 3  # nothing left running
    finally:
        run_cli("proxy", "stop")
