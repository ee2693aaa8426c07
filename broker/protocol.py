"""Length-prefixed orjson frames; a request carries an `id`, its answer the same one.

Frames with id 0 travel from the broker to the proxy unasked (invalidations).
"""

from __future__ import annotations

import asyncio
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

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode(message: Message) -> bytes:
    body = orjson.dumps(message)
    return len(body).to_bytes(4, "big") + body


async def read_frame(reader: asyncio.StreamReader) -> Message | None:
    """The next frame, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("truncated frame header") from exc
        return None
    size = int.from_bytes(header, "big")
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("truncated frame") from exc
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("frame is not an object")
    return message
