"""The proxy's side of the broker socket: one connection, pipelined calls, pushed events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path

from broker.protocol import (
    PUSH_ID,
    BrokerDenied,
    BrokerUnavailable,
    Message,
    ProtocolError,
    encode,
    read_frame,
)

CALL_TIMEOUT = 5.0


class BrokerClient:
    def __init__(self, socket_path: Path, on_push: Callable[[Message], None] | None = None) -> None:
        self.socket_path = socket_path
        self.on_push = on_push
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self.connection_epoch = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        async with self._connecting:
            if self.connected:
                return
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
            except OSError as exc:
                raise BrokerUnavailable(f"cannot connect to the broker: {exc.strerror}") from exc
            self._writer = writer
            # Pushes sent while we were away are lost: callers that cache must start over.
            self.connection_epoch += 1
            self._reader_task = asyncio.create_task(
                self._read_loop(reader), name="broker-client-read"
            )

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_frame(reader)
                if message is None:
                    break
                request_id = message.get("id")
                if request_id == PUSH_ID:
                    if self.on_push is not None:
                        self.on_push(message)
                    continue
                future = (
                    self._pending.pop(request_id, None) if isinstance(request_id, int) else None
                )
                if future is not None and not future.done():
                    future.set_result(message)
        except (ProtocolError, ConnectionError, ValueError):
            pass
        finally:
            self._drop()

    def _drop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("the broker closed the connection"))

    async def call(self, op: str, **params: object) -> Message:
        if not self.connected:
            await self.connect()
        writer = self._writer
        if writer is None:
            raise BrokerUnavailable("the broker is not connected")
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            writer.write(encode({"id": request_id, "op": op, **params}))
        except (ConnectionError, RuntimeError) as exc:
            self._pending.pop(request_id, None)
            self._drop()
            raise BrokerUnavailable("the broker connection failed") from exc
        try:
            reply = await asyncio.wait_for(future, timeout=CALL_TIMEOUT)
        except TimeoutError as exc:
            self._pending.pop(request_id, None)
            raise BrokerUnavailable("the broker did not answer in time") from exc
        error = reply.get("error")
        if error is not None:
            raise BrokerDenied(str(error), str(reply.get("message", error)))
        return reply

    async def close(self) -> None:
        task, self._reader_task = self._reader_task, None
        self._drop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
