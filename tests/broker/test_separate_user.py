"""The hardened deployment: the broker runs as its own user and owns the vault; the proxy's
user may open the broker's socket, the agent's user may neither open it nor read a file.

Three real users, created here and removed afterwards (the tests run as root): bk-broker,
bk-proxy (in bk-broker's group, listed in [broker] allowed_uids) and bk-agent. They run
blindkey installed from its wheel into a venv under /tmp (tests/staging.py), never the
checkout, which may sit where they cannot go.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.staging import Installed, clean_env
from tests.users import system_users

# The first test to need the installed wheel builds it (about 30 s).
pytestmark = pytest.mark.timeout(300)
BROKER, PROXY, AGENT = "bk-broker", "bk-proxy", "bk-agent"
VALUE = "ghp_separateUserValue0123456789XYZ"


@dataclass
class Deployment:
    base: Path
    broker_home: Path
    proxy_home: Path
    socket: Path
    python: list[str]
    token: str

    def run(self, user: str, *args: str, home: Path | None = None, stdin: str = "",
            check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(
            args,
            user=user,
            group=user,
            extra_groups=[BROKER] if user == PROXY else [],
            env=self.env(home),
            cwd=self.base,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def env(self, home: Path | None) -> dict[str, str]:
        env = clean_env(HOME=str(self.base), PYTHONDONTWRITEBYTECODE="1")
        if home is not None:
            env["BLINDKEY_HOME"] = str(home)
        return env

    def blindkey(self, user: str, home: Path, *args: str, stdin: str = "") -> str:
        result = self.run(user, *self.python, "-m", "blindkey.cli", *args, home=home, stdin=stdin,
                          check=False)  # fmt: skip
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout


@pytest.fixture
def deployment(installed: Installed) -> Iterator[Deployment]:
    assert os.geteuid() == 0, "this test creates users and runs as them: run it as root"
    base = Path(tempfile.mkdtemp(prefix="bk-users-", dir="/tmp"))
    try:
        with system_users((BROKER, ()), (PROXY, (BROKER,)), (AGENT, ())):
            yield _deploy(base, [installed.python])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _deploy(base: Path, python: list[str]) -> Deployment:
    base.chmod(0o755)
    broker_home, proxy_home, run = base / "broker-home", base / "proxy-home", base / "run"
    for directory, owner in ((broker_home, BROKER), (proxy_home, PROXY), (run, BROKER)):
        directory.mkdir(mode=0o700)
        shutil.chown(directory, owner, owner)
    run.chmod(0o750)  # the broker's group (the proxy's user) may reach the socket
    socket_path = run / "broker.sock"
    deploy = Deployment(base, broker_home, proxy_home, socket_path, python, "")
    deploy.blindkey(BROKER, broker_home, "init")
    _configure(broker_home / "config.toml", socket_path, [pwd.getpwnam(PROXY).pw_uid])
    deploy.blindkey(BROKER, broker_home, "secrets", "set", "GH", stdin=VALUE)
    added = deploy.blindkey(BROKER, broker_home, "agent", "add", "agent", "--json")
    deploy.token = json.loads(added)["token"]
    return deploy


def _configure(config: Path, socket_path: Path, allowed_uids: list[int]) -> None:
    text = config.read_text()
    text = text.replace('socket = ""', f'socket = "{socket_path}"')
    text = text.replace("allowed_uids = []", f"allowed_uids = {allowed_uids}")
    config.write_text(text)


@contextlib.contextmanager
def serving_broker(deployment: Deployment) -> Iterator[subprocess.Popen[bytes]]:
    """`blindkey broker serve` as bk-broker, as its service unit would run it, until its
    socket is there; stopped on the way out."""
    process = subprocess.Popen(
        [*deployment.python, "-m", "blindkey.cli", "broker", "serve"],
        user=BROKER,
        group=BROKER,
        extra_groups=[],
        env=deployment.env(deployment.broker_home),
        cwd=deployment.base,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not deployment.socket.exists():
            assert process.poll() is None, "the broker exited"
            assert time.monotonic() < deadline, "no broker socket"
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def broker_service(deployment: Deployment) -> Iterator[subprocess.Popen[bytes]]:
    with serving_broker(deployment) as process:
        yield process


CONNECT = """
import socket, sys
socket.socket(socket.AF_UNIX).connect(sys.argv[1])
"""
AS_PROXY = """
import asyncio, hashlib, sys
from pathlib import Path
from blindkey.broker.client import BrokerClient

async def main():
    client = BrokerClient(Path(sys.argv[1]))
    reply = await client.call("resolve", token=sys.argv[2], names=["GH"], host="x.io")
    await client.close()
    print(hashlib.sha256(reply["values"]["GH"].encode()).hexdigest())

asyncio.run(main())
"""


def test_agent_user_can_neither_open_the_socket_nor_read_the_vault(
    deployment: Deployment, broker_service: subprocess.Popen[bytes]
) -> None:
    sock = deployment.socket.stat()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o660
    assert pwd.getpwuid(sock.st_uid).pw_name == BROKER
    assert grp.getgrgid(sock.st_gid).gr_name == BROKER
    home = deployment.broker_home
    for name in ("vault.bin", "vault.key", "agents.json", "config.toml"):
        assert (home / name).exists()
        assert pwd.getpwuid((home / name).stat().st_uid).pw_name == BROKER

    for target in ("vault.bin", "vault.key", "agents.json"):
        read = deployment.run(AGENT, "cat", str(home / target), check=False)
        assert read.returncode != 0 and "Permission denied" in read.stderr
    listed = deployment.run(AGENT, "ls", str(home), check=False)
    assert listed.returncode != 0 and "Permission denied" in listed.stderr
    opened = deployment.run(AGENT, *deployment.python, "-c", CONNECT, str(deployment.socket),
                            check=False)  # fmt: skip
    assert opened.returncode != 0 and "PermissionError" in opened.stderr, opened.stderr
    # the proxy's user gets through the directory and the socket, but not into the vault
    read = deployment.run(PROXY, "cat", str(home / "vault.bin"), check=False)
    assert read.returncode != 0 and "Permission denied" in read.stderr

    asked = deployment.run(PROXY, *deployment.python, "-c", AS_PROXY, str(deployment.socket),
                           deployment.token, check=False)  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == hashlib.sha256(VALUE.encode()).hexdigest()
    # Root passes every file permission; the peer uid check still turns it away.
    refused = subprocess.run(
        [*deployment.python, "-c", AS_PROXY, str(deployment.socket), deployment.token],
        capture_output=True,
        text=True,
        cwd=deployment.base,
        env=deployment.env(None),
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0 and "BrokerUnavailable" in refused.stderr
    assert VALUE not in refused.stderr + asked.stderr


def test_proxy_as_its_own_user_injects_from_the_broker_of_another(
    deployment: Deployment, broker_service: subprocess.Popen[bytes], upstream_port: int
) -> None:
    """Needs proxy/server.py to pick ExternalBroker when [broker] socket is set."""
    proxy_home = deployment.proxy_home
    deployment.blindkey(PROXY, proxy_home, "init")
    _configure(proxy_home / "config.toml", deployment.socket, [])
    upstream = f"http://127.0.0.1:{upstream_port}"
    deployment.blindkey(PROXY, proxy_home, "allowlist", "add", upstream)
    deployment.blindkey(PROXY, proxy_home, "proxy", "start", "--port", "0")
    try:
        status = json.loads(deployment.blindkey(PROXY, proxy_home, "proxy", "status", "--json"))
        assert status["broker"] == "running"
        assert status["broker_pid"] == broker_service.pid
        called = deployment.run(
            AGENT, "curl", "-sS", "-D", "-", f"http://127.0.0.1:{status['port']}/proxy",
            "-H", f"X-AS-Agent-Token: {deployment.token}",
            "-H", f"X-AS-Target-URL: {upstream}/echo",
            "-H", "X-AS-Inject-Bearer: GH",
            check=False,
        )  # fmt: skip
        assert called.returncode == 0, called.stderr
        assert " 200 " in called.stdout.splitlines()[0], called.stdout
        expected = hashlib.sha256(f"Bearer {VALUE}".encode()).hexdigest()
        assert f"X-Echo-Authorization-Sha256: {expected}".lower() in called.stdout.lower()
        assert VALUE not in called.stdout
    finally:
        deployment.blindkey(PROXY, proxy_home, "proxy", "stop")
    for file in proxy_home.rglob("*"):
        if file.is_file():
            assert VALUE.encode() not in file.read_bytes(), file
