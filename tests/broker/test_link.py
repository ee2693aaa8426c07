"""broker/link.py, the CLI's one client of the broker, on real sockets: a broker in this
process (its event loop answers while the link blocks in a thread), and bare listening
sockets for what no broker does on cue (stay silent, push without answering, speak
something that is not frames, have its queue of connections full)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blindkey.broker.link import (
    BROKE_OFF,
    BrokeOff,
    Link,
    NoAnswer,
    NotPermitted,
    NotRunning,
    ask,
    connect,
    socket_path,
)
from blindkey.broker.notify import notify_broker
from blindkey.broker.protocol import BrokerDenied, FrameDecoder, Message, encode
from blindkey.config.paths import Paths
from tests.broker.conftest import Brokers, point_at

SHORT = 0.3  # the timeout of the tests that wait for one to pass


@pytest.fixture
def listener(sock_dir: Path) -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: what a hung broker looks like from outside."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_dir / "b.sock"))
    server.listen(8)
    yield server
    server.close()


def where(server: socket.socket) -> Path:
    return Path(server.getsockname())


@contextlib.contextmanager
def serving(server: socket.socket, script: Callable[[socket.socket], None]) -> Iterator[None]:
    """`script` speaks to the first connection, in a thread, until it returns."""

    def run() -> None:
        connection, _ = server.accept()
        with connection:
            script(connection)

    thread = threading.Thread(target=run, name="scripted-peer", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=10)


def read_request(connection: socket.socket) -> Message:
    frames = FrameDecoder()
    while True:
        received = frames.feed(connection.recv(65536))
        if received:
            return received[0]


# --- a real broker ------------------------------------------------------------------------


async def test_requests_on_one_link_get_their_own_replies(home: Paths, brokers: Brokers) -> None:
    point_at(home, brokers.socket)
    await brokers.start(home)

    def two_pings() -> tuple[Message, Message]:
        with connect(home) as link:
            return link.ask("ping"), link.call("ping")

    first, second = await asyncio.to_thread(two_pings)
    assert (first["id"], second["id"]) == (1, 2)
    assert first["pid"] == second["pid"] == os.getpid() and first["serving"] is True


async def test_its_own_broker_unless_config_names_another(home: Paths, brokers: Brokers) -> None:
    await brokers.start(home, path=home.broker_socket)
    assert socket_path(home) == home.broker_socket
    assert (await asyncio.to_thread(ask, home, "ping"))["pid"] == os.getpid()

    point_at(home, brokers.socket)
    assert socket_path(home) == brokers.socket
    # A config.toml that cannot be read (an agent's user may not): the broker's default place.
    home.config_file.write_text("[broker\n")
    assert socket_path(home) == home.broker_socket


async def test_a_refusal_is_the_brokers_word(home: Paths, brokers: Brokers) -> None:
    point_at(home, brokers.socket)
    await brokers.start(home)

    def refused() -> tuple[Message, BrokerDenied]:
        with connect(home) as link:
            raw = link.ask("no_such_op")
            with pytest.raises(BrokerDenied) as denied:
                link.call("no_such_op")
            # The connection serves on after a refusal.
            assert link.call("ping")["id"] == 3
        return raw, denied.value

    raw, denied = await asyncio.to_thread(refused)
    assert raw["error"] == "bad_request"
    assert denied.code == "bad_request" and str(denied) == "unknown op 'no_such_op'"


async def test_a_broker_that_turns_this_uid_away_breaks_off(home: Paths, brokers: Brokers) -> None:
    point_at(home, brokers.socket)
    await brokers.start(home, uids=frozenset({os.getuid() + 1}))
    with pytest.raises(BrokeOff) as info:
        await asyncio.to_thread(ask, home, "ping")
    # Closed before or after the request reached it: either way, no answer came.
    assert str(info.value).startswith(BROKE_OFF), info.value


# --- no broker, or not one this user may reach --------------------------------------------


def test_nothing_listening_is_not_running(sock_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_dir / "stale.sock"))  # a broker that died: its file, no listener
    stale.close()
    for path, reason in (
        (sock_dir / "none.sock", "No such file or directory"),
        (sock_dir / "stale.sock", "Connection refused"),
    ):
        with pytest.raises(NotRunning) as info:
            Link(path)
        assert str(info.value) == (
            f"the secret broker is not running ({reason}); start it with `blindkey proxy start`"
        )


@contextlib.contextmanager
def closed_to_this_process(path: Path) -> Iterator[None]:
    """The socket as another user's: root passes every file permission, so this process
    becomes `nobody` for the block; any other user finds the socket's mode at 0."""
    if os.geteuid() != 0:
        os.chmod(path, 0)
        try:
            yield
        finally:
            os.chmod(path, 0o600)
        return
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        nobody = 65534
    # The directory lets it through (as a broker's 0750 one does its group); the socket not.
    os.chmod(path.parent, 0o755)  # noqa: S103
    os.chmod(path, 0o600)
    os.seteuid(nobody)
    try:
        yield
    finally:
        os.seteuid(0)


def test_another_users_socket_is_not_permitted(listener: socket.socket) -> None:
    path = where(listener)
    with closed_to_this_process(path), pytest.raises(NotPermitted) as info:
        Link(path)
    assert str(info.value) == (
        f"this user may not open the broker's socket {path} (Permission denied): it belongs "
        "to the broker's user"
    )


# --- a broker that does not answer as it should -------------------------------------------


def test_a_silent_broker_is_no_answer_within_the_timeout(listener: socket.socket) -> None:
    started = time.monotonic()
    with Link(where(listener), timeout=SHORT) as link, pytest.raises(NoAnswer) as info:
        link.ask("ping")
    assert SHORT <= time.monotonic() - started < SHORT + 2
    assert str(info.value) == f"the broker did not answer within {SHORT:g}s"


def test_pushes_neither_answer_nor_extend_the_wait(listener: socket.socket) -> None:
    stop = threading.Event()

    def pushes_forever(connection: socket.socket) -> None:
        read_request(connection)
        while not stop.wait(SHORT / 6):
            connection.sendall(encode({"id": 0, "event": "invalidate"}))

    with serving(listener, pushes_forever):
        started = time.monotonic()
        try:
            with Link(where(listener), timeout=SHORT) as link, pytest.raises(NoAnswer):
                link.ask("ping")
        finally:
            stop.set()
    assert time.monotonic() - started < SHORT + 2


def test_a_push_before_the_answer_is_passed_over(listener: socket.socket) -> None:
    def push_then_answer(connection: socket.socket) -> None:
        request = read_request(connection)
        connection.sendall(
            encode({"id": 0, "event": "invalidate"}) + encode({"id": request["id"], "pid": 7})
        )

    with serving(listener, push_then_answer), Link(where(listener)) as link:
        assert link.ask("ping") == {"id": 1, "pid": 7}


@pytest.mark.parametrize(
    ("wire", "detail"),
    [
        (b"\x00\x00\x00\x03abc", "frame is not JSON"),
        (b"\xff\xff\xff\xff", "exceeds"),
        (b"\x00\x00\x00\x02[]", "frame is not an object"),
        (b'\x00\x00\x00\x10{"id"', "the broker closed the connection"),
    ],
)
def test_something_that_is_no_broker_breaks_off(
    listener: socket.socket, wire: bytes, detail: str
) -> None:
    def speaks(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(wire)

    with serving(listener, speaks), Link(where(listener)) as link, pytest.raises(BrokeOff) as info:
        link.ask("ping")
    assert str(info.value).startswith(f"{BROKE_OFF} (") and detail in str(info.value)


def test_a_broker_with_a_full_queue_is_busy_not_absent(home: Paths, sock_dir: Path) -> None:
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(sock_dir / "busy.sock"))
    busy.listen(0)
    held: list[socket.socket] = []
    try:
        while len(held) < 64:
            waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            waiting.setblocking(False)
            held.append(waiting)
            try:
                waiting.connect(str(sock_dir / "busy.sock"))
            except BlockingIOError:
                break
        with pytest.raises(NoAnswer) as info:
            Link(sock_dir / "busy.sock", timeout=SHORT)
        assert str(info.value).startswith("the broker takes no more connections now (")
        # A change made while the broker is busy is not in force: the command must say so
        # (taken for "no broker runs", it was reported in force).
        point_at(home, sock_dir / "busy.sock")
        problem = notify_broker(home, None, [("development", "GH")])
        assert problem is not None and "check `blindkey proxy status`" in problem, problem
    finally:
        for waiting in held:
            waiting.close()
        busy.close()
