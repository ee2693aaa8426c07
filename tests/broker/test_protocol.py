"""Length-prefixed orjson frames: the decoder every reader uses, and frames read from real
sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindkey.broker.protocol import MAX_FRAME, FrameDecoder, ProtocolError, encode, read_frame

Pair = tuple[asyncio.StreamReader, socket.socket]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A StreamReader on one end of a socketpair; the test writes raw bytes to the other."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    theirs.setblocking(False)
    yield reader, theirs
    theirs.close()
    writer.close()
    await writer.wait_closed()


def test_encode_is_a_big_endian_length_then_orjson() -> None:
    frame = encode({"id": 7, "op": "ping"})
    body = orjson.dumps({"id": 7, "op": "ping"})
    assert frame == len(body).to_bytes(4, "big") + body
    assert frame[:4] == b"\x00\x00\x00\x14"  # 20 bytes: {"id":7,"op":"ping"}


async def test_round_trip_over_a_socketpair(pair: Pair) -> None:
    reader, peer = pair
    messages = [
        {"id": 1, "op": "ping"},
        {"id": 2, "op": "resolve", "names": ["A", "B"], "host": "api.github.com", "token": None},
        {"id": 0, "event": "invalidate", "generation": 3},
        {},
        {"id": 3, "values": {"A": "ünï\u2028code \U0001f511", "B": "x" * 70_000}},
    ]
    peer.sendall(b"".join(encode(m) for m in messages))
    peer.shutdown(socket.SHUT_WR)
    for message in messages:
        assert await read_frame(reader) == message
    assert await read_frame(reader) is None
    assert await read_frame(reader) is None


async def test_a_frame_split_into_single_bytes_is_reassembled(pair: Pair) -> None:
    reader, peer = pair
    frame = encode({"id": 9, "values": {"K": "v" * 100}})

    async def dribble() -> None:
        for byte in frame:
            peer.send(bytes([byte]))
            await asyncio.sleep(0)

    task = asyncio.create_task(dribble(), name="dribble")
    assert await asyncio.wait_for(read_frame(reader), 2) == {"id": 9, "values": {"K": "v" * 100}}
    await task


async def test_round_trip_over_an_asyncio_unix_server() -> None:
    directory = tempfile.mkdtemp(dir="/tmp")
    path = f"{directory}/p.sock"
    received: list[dict[str, Any]] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (message := await read_frame(reader)) is not None:
            received.append(message)
            writer.write(encode({"echo": message}))
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(echo, path=path)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(encode({"id": 1, "a": [1, 2.5, None, True]}) + encode({"id": 2}))
        assert await read_frame(reader) == {"echo": {"id": 1, "a": [1, 2.5, None, True]}}
        assert await read_frame(reader) == {"echo": {"id": 2}}
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(directory)
    assert received == [{"id": 1, "a": [1, 2.5, None, True]}, {"id": 2}]


@pytest.mark.parametrize("partial", [b"\x00", b"\x00\x00", b"\x00\x00\x00"])
async def test_truncated_header_is_a_protocol_error(pair: Pair, partial: bytes) -> None:
    reader, peer = pair
    peer.sendall(partial)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="header"):
        await read_frame(reader)


@pytest.mark.parametrize("keep", [0, 1, 10])
async def test_truncated_body_is_a_protocol_error(pair: Pair, keep: int) -> None:
    reader, peer = pair
    frame = encode({"id": 1, "op": "ping", "pad": "x" * 20})
    peer.sendall(frame[: 4 + keep])
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="truncated"):
        await read_frame(reader)


@pytest.mark.parametrize("size", [MAX_FRAME + 1, 2**31, 2**32 - 1])
async def test_oversize_length_is_refused_without_reading_the_body(pair: Pair, size: int) -> None:
    reader, peer = pair
    # Only the header is sent and the stream stays open: waiting for the body would hang.
    peer.sendall(size.to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="exceeds"):
        await asyncio.wait_for(read_frame(reader), 1)


async def test_a_frame_of_exactly_max_frame_is_accepted(pair: Pair) -> None:
    reader, peer = pair
    overhead = len(orjson.dumps({"p": ""}))
    message = {"p": "x" * (MAX_FRAME - overhead)}
    frame = encode(message)
    assert len(frame) == 4 + MAX_FRAME

    loop = asyncio.get_running_loop()
    sending = loop.create_task(loop.sock_sendall(peer, frame), name="send-max-frame")
    assert await asyncio.wait_for(read_frame(reader), 5) == message
    await sending


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
async def test_a_frame_that_is_not_an_object_is_a_protocol_error(pair: Pair, body: bytes) -> None:
    reader, peer = pair
    peer.sendall(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError, match="not an object"):
        await read_frame(reader)


@pytest.mark.parametrize("body", [b"", b"{", b"hello", b"\xff\xfe{}", b'{"a": 1}}'])
async def test_a_frame_that_is_not_json_is_a_protocol_error(pair: Pair, body: bytes) -> None:
    reader, peer = pair
    peer.sendall(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError):
        await read_frame(reader)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=10,
)
MESSAGES = st.dictionaries(st.text(max_size=20), JSON, max_size=6)


async def _through_socket(messages: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        with theirs:
            theirs.sendall(b"".join(encode(m) for m in messages))
            theirs.shutdown(socket.SHUT_WR)
            return [await read_frame(reader) for _ in range(len(messages) + 1)]
    finally:
        writer.close()
        await writer.wait_closed()


def test_any_json_object_round_trips() -> None:
    # One loop for every example: a loop per example would dominate the run time.
    loop = asyncio.new_event_loop()
    try:

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(MESSAGES, min_size=1, max_size=3))
        def round_trip(messages: list[dict[str, Any]]) -> None:
            for message in messages:
                frame = encode(message)
                assert int.from_bytes(frame[:4], "big") == len(frame) - 4
                assert orjson.loads(frame[4:]) == message
            assert loop.run_until_complete(_through_socket(messages)) == [*messages, None]

        round_trip()
    finally:
        loop.close()


# --- FrameDecoder: what the broker, its client, the CLI and the supervisor all decode with --


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _decode(pieces: list[bytes]) -> tuple[list[dict[str, Any]], FrameDecoder]:
    decoder = FrameDecoder()
    messages = []
    for piece in pieces:
        messages += decoder.feed(piece)
    return messages, decoder


@settings(deadline=None)
@given(st.lists(MESSAGES, max_size=6), st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_a_stream_decodes_to_the_same_messages(
    messages: list[dict[str, Any]], cuts: list[int]
) -> None:
    stream = b"".join(encode(m) for m in messages)
    decoded, decoder = _decode(_cut(stream, cuts))
    assert decoded == messages
    assert decoder.wanted == 4, "nothing is held after the last whole frame"


@given(MESSAGES, st.integers(min_value=0), st.integers(min_value=1))
def test_wanted_is_what_the_next_frame_still_lacks(
    message: dict[str, Any], cut: int, extra: int
) -> None:
    frame = encode(message)
    cut %= len(frame)  # a proper prefix
    decoder = FrameDecoder()
    assert decoder.feed(frame[:cut]) == []
    if cut < 4:
        assert decoder.wanted == 4 - cut
    else:
        assert decoder.wanted == len(frame) - cut
    assert decoder.feed(frame[cut:]) == [message]


def test_an_oversize_length_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode({"id": 1}) + b"\x00\x80") == [{"id": 1}]
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(b"\x00\x01")  # 0x00800001 bytes: more than MAX_FRAME


def test_a_frame_of_exactly_max_frame_is_decoded() -> None:
    overhead = len(orjson.dumps({"p": ""}))
    message = {"p": "x" * (MAX_FRAME - overhead)}
    frame = encode(message)
    assert _decode([frame[:5], frame[5:-1], frame[-1:]])[0] == [message]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b'{"a": 1}}', "not JSON"),
        (b"[1, 2]", "not an object"),
        (b"null", "not an object"),
        (b'"text"', "not an object"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_garbage_is_only_ever_a_protocol_error(pieces: list[bytes]) -> None:
    decoder = FrameDecoder()
    with contextlib.suppress(ProtocolError):
        for piece in pieces:
            assert all(isinstance(m, dict) for m in decoder.feed(piece))


@settings(deadline=None)
@given(
    st.lists(MESSAGES, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_a_damaged_stream_decodes_or_is_a_protocol_error(
    messages: list[dict[str, Any]], damage: list[tuple[int, int]], cuts: list[int]
) -> None:
    """Bytes of a real stream changed: lengths that lie, bodies that break mid-string."""
    stream = bytearray(b"".join(encode(m) for m in messages))
    for where, byte in damage:
        stream[where % len(stream)] = byte
    with contextlib.suppress(ProtocolError):
        decoded, _ = _decode(_cut(bytes(stream), cuts))
        assert all(isinstance(m, dict) for m in decoded)
