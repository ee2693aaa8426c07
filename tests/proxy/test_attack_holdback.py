"""The stream hold-back as an oracle (issue 23, item 1).

An agent that shapes the end of a streamed chunk (its own server on an allowlisted port)
ends it with a guess at a value it may not use, and watches what the proxy passes on
before the next chunk, after a pause, and when the upstream breaks off. Whatever is held,
and for how long, must be the same for a true prefix of the value and for any other bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import SECRET, open_env
from tests.proxy.upstream.test_pool import RawServer

FILLER = b"f" * 4096
TRUE_PREFIX = SECRET.encode()[:24]  # GITHUB_TOKEN: restricted, another agent's, another host
NOT_A_PREFIX = b"~" * len(TRUE_PREFIX)
LAST = b" and the end"


class Round:
    """One guess: what the hostile upstream ends its first chunk with, and the test's
    signal for its next step (end the stream, or break off)."""

    def __init__(self, guess: bytes) -> None:
        self.guess = guess
        self.next_step = asyncio.Event()


def hostile_upstream(rounds: list[Round], cut: bool) -> RawServer:
    """Streams FILLER + guess as one chunk, waits for the test, then ends or breaks off."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        now = rounds.pop(0)
        first = FILLER + now.guess
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        await writer.drain()
        await now.next_step.wait()
        if cut:
            writer.transport.abort()
            return
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(LAST), LAST))
        await writer.drain()

    return RawServer(handler)


async def frames(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The proxy's chunks as it wrote them, one per release, until the end or a cut."""
    await reader.readuntil(b"\r\n\r\n")
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        yield data[:-2]


async def play(port: int, upstream_port: int, token: str, now: Round, paused: bool) -> list[bytes]:
    """One round of the oracle: what the agent got before the upstream's next step (the
    entries before the marker), then after it. With `paused`, the test waits for the whole
    first chunk (sent by a flush after the pause) before letting the upstream go on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            "GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"X-AS-Agent-Token: {token}\r\n"
            f"X-AS-Target-URL: http://127.0.0.1:{upstream_port}/\r\n"
            "X-AS-Inject-Bearer: STRIPE_KEY\r\n\r\n"
        ).encode()
    )
    got: list[bytes] = []
    async for frame in frames(reader):
        got.append(frame)
        if not now.next_step.is_set() and (
            not paused or len(b"".join(got)) >= len(FILLER + now.guess)
        ):
            got.append(b"<next step>")
            now.next_step.set()
    writer.close()
    return got


async def oracle(home: Paths, cut: bool, paused: bool) -> tuple[list[bytes], list[bytes]]:
    """The agent's view of a true prefix, then of bytes that begin no value."""
    rounds = [Round(TRUE_PREFIX), Round(NOT_A_PREFIX)]
    views = []
    async with hostile_upstream(list(rounds), cut) as upstream:

        def configure(document: Any) -> None:
            hosts = toml_table(document, "allowlist")["hosts"]
            toml_table(document, "allowlist")["hosts"] = string_array(
                [*hosts, f"http://127.0.0.1:{upstream.port}"]
            )
            secret = toml_table(document, "secrets", "GITHUB_TOKEN")
            secret["tier"] = "restricted"
            secret["hosts"] = string_array(["api.github.com"])
            secret["agents"] = string_array(["someone-else"])

        async with open_env(home, configure=configure) as env:
            for now in rounds:
                got = await play(env.server.port, upstream.port, env.token, now, paused)
                views.append([frame.replace(now.guess, b"<guess>") for frame in got])
    return views[0], views[1]


@pytest.mark.parametrize("cut", [False, True], ids=["next-chunk", "cut"])
@pytest.mark.parametrize("paused", [False, True], ids=["no-pause", "pause"])
async def test_a_true_prefix_and_other_bytes_are_passed_on_alike(
    home: Paths, monkeypatch: pytest.MonkeyPatch, cut: bool, paused: bool
) -> None:
    # Without a pause no flush may fire: what arrives is what the next-chunk rule releases.
    monkeypatch.setattr("blindkey.proxy.request.relay.FLUSH_DELAY", 0.01 if paused else 3600)
    matching, other = await asyncio.wait_for(oracle(home, cut, paused), 30)
    assert matching == other
    before = b"".join(matching[: matching.index(b"<next step>")])
    # Something was held, and it was the end of what the upstream sent.
    assert before == (FILLER + b"<guess>")[: len(before)]
    assert len(before) == len(FILLER + b"<guess>") if paused else len(before) < len(FILLER)
