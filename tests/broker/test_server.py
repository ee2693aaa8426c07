"""BrokerServer and BrokerClient over real Unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from blindkey.broker import client as client_module
from blindkey.broker.agents import AgentStore
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import (
    MAX_FRAME,
    BrokerDenied,
    BrokerUnavailable,
    Message,
    encode,
    read_frame,
)
from blindkey.broker.server import BrokerServer
from blindkey.broker.vault import FileVault
from blindkey.config.atomic import write_atomic
from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG
from tests.broker.conftest import ROOT, Brokers, until

POLICIES = """
[secrets.GH]
hosts = ["api.github.com"]

[secrets.CTRL]
tier = "controlled"
"""


@dataclass
class Broker:
    paths: Paths
    server: BrokerServer
    socket: Path
    token: str


@pytest.fixture
def seeded(home: Paths) -> tuple[Paths, str]:
    write_atomic(home.config_file, (DEFAULT_CONFIG + POLICIES).encode())
    vault = FileVault(home)

    def fill(data: dict[str, dict[str, str]]) -> None:
        data["development"] = {f"S{i}": f"value-{i}-{'z' * (i % 7)}" for i in range(200)}
        data["development"]["GH"] = "ghp_server_value"
        data["development"]["CTRL"] = "controlled_value"

    vault.update(fill)
    token = AgentStore(home.agents_file, home.lock_file).add("claude")
    return home, token


@pytest.fixture
async def broker(seeded: tuple[Paths, str], brokers: Brokers) -> Broker:
    paths, token = seeded
    server = await brokers.start(paths)
    return Broker(paths, server, server.socket_path, token)


@pytest.fixture
def client(broker: Broker, brokers: Brokers) -> BrokerClient:
    return brokers.client(broker.server)


@contextlib.asynccontextmanager
async def raw_connection(
    path: Path,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_socket_is_0600_in_a_0700_directory(broker: Broker) -> None:
    mode = broker.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(broker.socket.parent.stat().st_mode) == 0o700


async def test_socket_is_0600_under_a_permissive_umask(
    seeded: tuple[Paths, str], brokers: Brokers
) -> None:
    directory = brokers.sock_dir / "sub"
    old = os.umask(0)
    try:
        # the socket's own directory does not exist yet: start() creates it
        await brokers.start(seeded[0], path=directory / "b.sock")
        restored = os.umask(0)
    finally:
        os.umask(old)
    assert restored == 0, "start() must restore the caller's umask"
    assert stat.S_IMODE((directory / "b.sock").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_a_stale_socket_file_is_replaced(seeded: tuple[Paths, str], brokers: Brokers) -> None:
    path = brokers.socket
    path.write_text("left over by a crashed broker")
    server = await brokers.start(seeded[0])
    assert (await brokers.client(server).call("ping"))["pid"] == os.getpid()
    await brokers.stop(server)
    assert not path.exists(), "close() removes the socket file"


async def test_ping(broker: Broker, client: BrokerClient) -> None:
    reply = await client.call("ping")
    assert reply["pid"] == os.getpid()
    assert reply["backend"] == "file"
    assert reply["env"] == "development"
    assert reply["generation"] == broker.server.state.generation == 1
    assert reply["error_state"] is None
    assert client.connected


async def test_resolve_releases_and_denies(broker: Broker, client: BrokerClient) -> None:
    reply = await client.call("resolve", token=broker.token, names=["GH"], host="api.github.com")
    assert reply["values"] == {"GH": "ghp_server_value"}
    assert reply["agent"] == "claude"
    assert reply["env"] == "development"
    assert "denied" not in reply

    reply = await client.call("resolve", token=broker.token, names=["GH"], host="api.stripe.com")
    assert reply["values"] == {}
    assert reply["denied"]["error"] == "secret_denied"
    assert "ghp_server_value" not in str(reply)

    reply = await client.call("resolve", token=broker.token, names=["CTRL"], host="x.io")
    assert reply["denied"]["error"] == "approval_required"
    assert reply["values"] == {}

    with pytest.raises(BrokerDenied) as info:
        await client.call("resolve", token="bk_nope", names=["GH"], host="api.github.com")
    assert info.value.code == "unauthenticated"


async def test_redaction_set(broker: Broker, client: BrokerClient) -> None:
    reply = await client.call("redaction_set")
    assert reply["values"]["GH"] == "ghp_server_value"
    assert reply["values"]["CTRL"] == "controlled_value"
    assert len(reply["values"]) == 202
    assert reply["generation"] == 1


async def test_200_pipelined_resolves_match_their_ids(broker: Broker, client: BrokerClient) -> None:
    async def one(i: int) -> Message:
        return await client.call("resolve", token=broker.token, names=[f"S{i}"], host="x.io")

    order = list(range(200))
    replies = await asyncio.gather(*(one(i) for i in order[::-1]))

    for i, reply in zip(order[::-1], replies, strict=True):
        assert reply["values"] == {f"S{i}": f"value-{i}-{'z' * (i % 7)}"}
        assert reply["id"] >= 1
    assert len({r["id"] for r in replies}) == 200
    assert len(broker.server.clients) == 1, "all calls share one connection"
    assert client._pending == {}


async def test_client_matches_replies_by_id_not_by_order(sock_dir: Path) -> None:
    """A server that answers a batch in reverse order: each caller still gets its own reply."""
    batch = 50

    async def reverse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = [await read_frame(reader) for _ in range(batch)]
        for request in reversed(requests):
            assert request is not None
            writer.write(encode({"id": request["id"], "n": request["n"]}))
        await writer.drain()
        await read_frame(reader)
        writer.close()

    path = sock_dir / "rev.sock"
    server = await asyncio.start_unix_server(reverse, path=str(path))
    client = BrokerClient(path)
    try:
        replies = await asyncio.gather(*(client.call("echo", n=i) for i in range(batch)))
        assert [r["n"] for r in replies] == list(range(batch))
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "no_such_op"},
        {"op": None},
        {},
        {"op": ["ping"]},  # not even a key of the table of operations
        {"op": {"ping": 1}},
        {"op": "resolve", "names": "GH", "host": "api.github.com"},
        {"op": "resolve", "names": [1], "host": "api.github.com"},
        {"op": "resolve", "names": ["GH"], "host": None},
        {"op": "resolve", "names": ["GH"], "host": "api.github.com", "token": 5},
    ],
)
async def test_unknown_op_or_malformed_request_is_bad_request(
    broker: Broker, client: BrokerClient, request_: dict[str, object]
) -> None:
    op = request_.pop("op", None)
    with pytest.raises(BrokerDenied) as info:
        await client.call(op, **request_)  # type: ignore[arg-type]
    assert info.value.code == "bad_request"
    # the connection stays usable
    assert (await client.call("ping"))["pid"] == os.getpid()


async def test_raw_client_speaks_the_frame_protocol(broker: Broker) -> None:
    async with raw_connection(broker.socket) as (reader, writer):
        writer.write(encode({"id": 41, "op": "ping"}) + encode({"id": "str-id", "op": "nope"}))
        first = await asyncio.wait_for(read_frame(reader), 1)
        second = await asyncio.wait_for(read_frame(reader), 1)
    assert first is not None
    assert first["id"] == 41
    assert second == {"id": "str-id", "error": "bad_request", "message": "unknown op 'nope'"}


GARBAGE = {
    "not json": b"\x00\x00\x00\x05hello",
    "json list": b"\x00\x00\x00\x02[]",
    "oversize header": (MAX_FRAME + 1).to_bytes(4, "big"),
    "huge header": b"\xff\xff\xff\xff",
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_frame_drops_only_that_client(
    broker: Broker, client: BrokerClient, garbage: bytes
) -> None:
    assert (await client.call("ping"))["pid"] == os.getpid()
    async with raw_connection(broker.socket) as (reader, writer):
        writer.write(garbage)
        # The broker hangs up on it: EOF (or a reset), never a reply.
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 1) == b""
    assert (await client.call("ping"))["pid"] == os.getpid()
    reply = await client.call("resolve", token=broker.token, names=["S1"], host="x.io")
    assert reply["values"] == {"S1": "value-1-z"}
    assert len(broker.server.clients) == 1


async def test_peer_uid_not_allowed_is_refused(seeded: tuple[Paths, str], brokers: Brokers) -> None:
    server = await brokers.start(seeded[0], uids=frozenset({os.getuid() + 1}))
    client = brokers.client(server)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await client.call("ping")
    assert time.monotonic() - started < 2, "refused promptly, not by timeout"
    assert not client.connected

    async with raw_connection(server.socket_path) as (reader, writer):
        writer.write(encode({"id": 1, "op": "redaction_set"}))
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 1) == b""
    assert server.clients == set()


async def test_peer_uid_allowed_by_an_extra_uid_set(
    seeded: tuple[Paths, str], brokers: Brokers
) -> None:
    server = await brokers.start(seeded[0], uids=frozenset({os.getuid() + 1, os.getuid()}))
    assert (await brokers.client(server).call("ping"))["pid"] == os.getpid()


@contextlib.asynccontextmanager
async def watching(server: BrokerServer) -> AsyncIterator[None]:
    task = asyncio.create_task(server.watch(), name="test-broker-watch")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _pushed_client(
    broker: Broker, brokers: Brokers
) -> tuple[BrokerClient, asyncio.Queue[Message]]:
    pushes: asyncio.Queue[Message] = asyncio.Queue()
    client = brokers.client(broker.server, on_push=pushes.put_nowait)
    await client.call("ping")  # connected, and known to the server
    return client, pushes


async def test_vault_change_pushes_invalidate_within_a_second(
    broker: Broker, brokers: Brokers
) -> None:
    client, pushes = await _pushed_client(broker, brokers)
    async with watching(broker.server):
        await asyncio.sleep(0.3)
        assert pushes.empty(), "no push while nothing changes"

        FileVault(broker.paths).set("development", "GH", "ghp_rotated_value")
        started = time.monotonic()
        push = await asyncio.wait_for(pushes.get(), 1.0)
        assert time.monotonic() - started < 1.0
        assert push == {"id": 0, "event": "invalidate", "generation": 2, "ack": push["ack"],
                        "config_sha256": push["config_sha256"]}  # fmt: skip
        assert isinstance(push["ack"], int)

        reply = await client.call(
            "resolve", token=broker.token, names=["GH"], host="api.github.com"
        )
        assert reply["values"] == {"GH": "ghp_rotated_value"}
        assert reply["generation"] == 2


@pytest.mark.parametrize("change", ["revoke", "config"])
async def test_agent_and_config_changes_push_invalidate(
    broker: Broker, brokers: Brokers, change: str
) -> None:
    client, pushes = await _pushed_client(broker, brokers)
    _, other_pushes = await _pushed_client(broker, brokers)
    async with watching(broker.server):
        if change == "revoke":
            AgentStore(broker.paths.agents_file, broker.paths.lock_file).revoke("claude")
        else:
            write_atomic(
                broker.paths.config_file,
                (DEFAULT_CONFIG + POLICIES.replace('"api.github.com"', '"x.io"')).encode(),
            )
        for queue in (pushes, other_pushes):
            push = await asyncio.wait_for(queue.get(), 1.0)
            assert push["event"] == "invalidate"
    if change == "revoke":
        with pytest.raises(BrokerDenied) as info:
            await client.call("resolve", token=broker.token, names=["GH"], host="x.io")
        assert info.value.code == "unauthenticated"
    else:
        reply = await client.call("resolve", token=broker.token, names=["GH"], host="x.io")
        assert reply["values"] == {"GH": "ghp_server_value"}


async def test_broken_config_is_reported_by_ping_and_not_pushed(
    broker: Broker, brokers: Brokers
) -> None:
    client, pushes = await _pushed_client(broker, brokers)
    async with watching(broker.server):
        broker.paths.config_file.write_text("[proxy\n")
        await asyncio.sleep(0.5)
    assert pushes.empty()
    reply = await client.call("ping")
    assert reply["generation"] == 1
    assert "invalid TOML" in reply["error_state"]
    resolved = await client.call("resolve", token=broker.token, names=["GH"], host="api.github.com")
    assert resolved["values"] == {"GH": "ghp_server_value"}


async def test_connect_to_a_missing_socket_is_unavailable(sock_dir: Path) -> None:
    client = BrokerClient(sock_dir / "nobody-here.sock")
    with pytest.raises(BrokerUnavailable, match="cannot connect"):
        await client.call("ping")
    assert not client.connected
    await client.close()


async def test_server_closed_mid_call_raises_unavailable(
    broker: Broker, brokers: Brokers, client: BrokerClient
) -> None:
    await client.call("ping")
    calls = [
        asyncio.create_task(client.call("redaction_set"), name=f"call-{i}") for i in range(300)
    ]
    await asyncio.sleep(0)  # the calls are written; the server has not answered them all
    await brokers.stop(broker.server)
    started = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=2)
    assert time.monotonic() - started < 2, "pending calls fail at once, not by timeout"
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures, "closing the server mid-call must fail the calls still pending"
    assert all(isinstance(f, BrokerUnavailable) for f in failures), failures
    for result in results:
        if not isinstance(result, BaseException):
            assert len(result["values"]) == 202
    assert not client.connected
    with pytest.raises(BrokerUnavailable):
        await client.call("ping")


async def test_broker_process_killed_mid_call_raises_unavailable(
    seeded: tuple[Paths, str], sock_dir: Path
) -> None:
    """A real `blindkey broker serve`, frozen with a call in flight, then killed."""
    paths, token = seeded
    path = sock_dir / "b.sock"
    env = {**os.environ, "BLINDKEY_HOME": str(paths.config_dir)}
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "blindkey.cli", "broker", "serve", "--socket", str(path)],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = BrokerClient(path)
    try:
        await until(path.exists, 5)
        reply = await client.call("resolve", token=token, names=["GH"], host="api.github.com")
        assert reply["values"] == {"GH": "ghp_server_value"}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        os.kill(proc.pid, signal.SIGSTOP)
        call = asyncio.create_task(client.call("ping"), name="call-in-flight")
        await asyncio.sleep(0.2)
        assert not call.done(), "a frozen broker cannot have answered"
        os.kill(proc.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(call, 2)
        assert time.monotonic() - started < 1
    finally:
        await client.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.wait_for(proc.wait(), 5)


async def test_client_reconnects_to_a_restarted_broker(
    seeded: tuple[Paths, str], brokers: Brokers
) -> None:
    server = await brokers.start(seeded[0])
    client = brokers.client(server)
    assert (await client.call("ping"))["generation"] == 1
    await brokers.stop(server)
    await until(lambda: not client.connected, 1)
    with pytest.raises(BrokerUnavailable):
        await client.call("ping")

    await brokers.start(seeded[0])
    assert (await client.call("ping"))["pid"] == os.getpid()


async def _silent_server(
    path: Path, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> asyncio.Server:
    return await asyncio.start_unix_server(handler, path=str(path))


async def test_a_broker_that_never_answers_times_out(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "CALL_TIMEOUT", 0.2)
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await read_frame(reader) is not None:
            pass

    path = sock_dir / "mute.sock"
    server = await _silent_server(path, mute)
    client = BrokerClient(path)
    try:
        with pytest.raises(BrokerUnavailable, match="in time"):
            await client.call("ping")
        assert client._pending == {}
        # a late answer to the abandoned id is ignored, and the connection still works
        held[0].write(encode({"id": 1, "pid": 1}))
        await asyncio.sleep(0.05)
        assert client.connected
    finally:
        await client.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_garbage_from_the_broker_fails_pending_calls(sock_dir: Path) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        writer.write(b"\x00\x00\x00\x03abc")
        await writer.drain()
        await reader.read()
        writer.close()

    path = sock_dir / "bad.sock"
    server = await _silent_server(path, garbage)
    client = BrokerClient(path)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await client.call("ping")
        assert time.monotonic() - started < 1
        assert not client.connected
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
