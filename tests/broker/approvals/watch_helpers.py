"""A watcher of the broker's approvals events, as `approvals watch` and `ui` are: the
`approvals.watch` op on a connection of its own, every frame kept raw to look for values."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from blindkey.broker.link import socket_path
from blindkey.broker.protocol import PUSH_ID, encode, read_frame
from blindkey.config.paths import Paths


class EventWatch:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames: list[bytes] = []  # every frame received, as sent
        self.snapshot: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, paths: Paths) -> EventWatch:
        reader, writer = await asyncio.open_unix_connection(socket_path(paths))
        watch = cls(reader, writer)
        writer.write(encode({"id": 7, "op": "approvals.watch"}))
        reply = await watch._frame()
        assert reply.get("watching") is True, reply
        watch.snapshot = reply["pending"]
        return watch

    async def _frame(self) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(read_frame(self.reader), 10)
            assert frame is not None, "the broker hung up on the watcher"
            self.frames.append(orjson.dumps(frame))
            if frame.get("id") != PUSH_ID:
                assert frame.get("id") == 7, frame
                return frame

    async def next(self, kind: str | None = None) -> dict[str, Any]:
        """The next event (of `kind`, passing over others)."""
        while True:
            event: dict[str, Any] = (await self._frame())["event"]
            if kind is None or event["event"] == kind:
                return event

    def close(self) -> None:
        self.writer.close()


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
