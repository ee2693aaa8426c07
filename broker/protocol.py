"""Length-prefixed orjson frames; a request carries an `id`, its answer the same one.

Frames with id 0 travel from the broker to the proxy unasked (invalidations). Every reader
of the socket, whatever it reads with, decodes with FrameDecoder, so a frame is refused for
the same reasons everywhere.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson

from blindkey.config.errors import BlindkeyError

MAX_FRAME = 8 * 2**20
PUSH_ID = 0
# How long a change made by the CLI waits for every proxy to acknowledge its invalidation:
# long enough for a proxy on a loaded machine, short enough for a person at a prompt.
ACK_TIMEOUT = 2.0
Message = dict[str, Any]


class ProtocolError(BlindkeyError):
    pass


class BrokerUnavailable(BlindkeyError):
    """The broker process cannot answer (not running, restarting, or its socket is gone)."""


class BrokerDenied(BlindkeyError):
    """The broker refused: `code` is one of the error codes of the proxy's error table."""

    def __init__(
        self, code: str, message: str, *, detail: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        # The rule that refused (`secrets.NAME.paths`), and for a rate when to try again.
        self.detail = detail
        self.retry_after = retry_after


def encode(message: Message) -> bytes:
    body = orjson.dumps(message)
    return len(body).to_bytes(4, "big") + body


_size_at = struct.Struct(">I").unpack_from


class FrameDecoder:
    """Messages from a byte stream cut anywhere: feed it what each read brought.

    After a ProtocolError the stream is out of step and the decoder with it: hang up.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        # The start of a frame whose end has not arrived yet.
        self._held = bytearray()

    @property
    def wanted(self) -> int:
        """How many more bytes the next frame needs at least (what to read next)."""
        held = len(self._held)
        if held < 4:
            return 4 - held
        size: int = _size_at(self._held)[0]
        return 4 + size - held

    def feed(self, data: bytes) -> list[Message]:
        held = self._held
        # Most reads bring whole frames: those are parsed in place, never copied into `held`.
        chunk: bytes | bytearray = data
        if held:
            held += data
            chunk = held
        messages: list[Message] = []
        start, end = 0, len(chunk)
        while end - start >= 4:
            (size,) = _size_at(chunk, start)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
            stop = start + 4 + size
            if stop > end:
                break
            try:
                message = orjson.loads(chunk[start + 4 : stop])
            except orjson.JSONDecodeError as exc:
                raise ProtocolError(f"frame is not JSON: {exc}") from exc
            if type(message) is not dict:
                raise ProtocolError("frame is not an object")
            messages.append(message)
            start = stop
        if chunk is held:
            del held[:start]
        elif start < end:
            held += chunk[start:]
        return messages


async def read_frame(reader: asyncio.StreamReader) -> Message | None:
    """The next frame, or None at a clean end of stream.

    Reads exactly one frame and nothing past it, so the stream can be read on by others.
    """
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("truncated frame header") from exc
        return None
    decoder = FrameDecoder()
    # An oversize length is refused here, before its body is waited for.
    decoder.feed(header)
    try:
        body = await reader.readexactly(decoder.wanted)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("truncated frame") from exc
    (message,) = decoder.feed(body)
    return message
