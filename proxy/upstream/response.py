"""The answer to one upstream request: status and headers first, then the body as it
arrives, with every content coding undone (decoding.py) and flow control towards the agent."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blindkey.proxy.upstream.decoding import Decoder, codings, undecodable
from blindkey.proxy.upstream.errors import (
    StaleConnection,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from blindkey.proxy.upstream.connection import UpstreamConnection

MAX_HEADERS = 256
# Reading pauses once this much of a body waits for the agent to take it.
HIGH_WATER = 2**18


@dataclass(frozen=True)
class UpstreamLimits:
    connect_timeout: float
    read_timeout: float  # longest wait for the next bytes
    total_timeout: float  # the whole exchange, body included
    max_field: int  # one header line


class UpstreamResponse:
    """The answer to one request: status and headers first, then the body as it arrives."""

    def __init__(
        self, connection: UpstreamConnection, method: str, limits: UpstreamLimits, deadline: float
    ) -> None:
        self.connection = connection
        self.loop = connection.loop
        self.head_only = method == "HEAD"
        self.limits = limits
        self.deadline = deadline
        self.status = 0
        self.reason_bytes = b""
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        # The first Content-Type (the usage meter's) and whether any Content-Range came (a
        # part, refused unless asked for), found in the pass that finds the framing.
        self.content_type: str | None = None
        self.content_range = False
        # Every coding to undo, in the order applied: Content-Encoding's, then the transfer
        # codings other than chunked (RFC 9112 §6.1), which llhttp passes on undecoded.
        self.codings: list[str] = []
        self.chunked = False
        self.received = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.violation: UpstreamError | None = None
        self.error: BaseException | None = None
        self.body_writer: asyncio.Task[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def reason(self) -> str:
        return self.reason_bytes.decode("latin-1")

    # -- fed by the connection -------------------------------------------------------------
    def _out_of_turn(self) -> None:
        if self.complete:
            # Bytes after a complete answer, before the next request: never reused.
            self.violation = UpstreamProtocolError("sent more than one answer")
            raise self.violation

    def add_reason(self, text: bytes) -> None:
        self._out_of_turn()
        self.reason_bytes += text

    def add_header(self, name: bytes, value: bytes) -> None:
        self._out_of_turn()
        if len(name) + len(value) > self.limits.max_field or len(self.headers) >= MAX_HEADERS:
            self.violation = UpstreamProtocolError(
                f"sent a header over {self.limits.max_field} bytes or over {MAX_HEADERS} headers"
            )
            raise self.violation
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def headers_complete(self, status: int) -> None:
        self._out_of_turn()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.headers.clear()
            self.reason_bytes = b""
            return
        self.status = status
        encodings, transfer = [], []
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "content-length" and value.strip().isdigit():
                self.content_length = int(value)
            elif lowered == "content-encoding":
                encodings.append(value)
            elif lowered == "transfer-encoding":
                transfer.append(value)
            elif lowered == "content-type":
                if self.content_type is None:
                    self.content_type = value
            elif lowered == "content-range":
                self.content_range = True
        self.codings = codings(encodings) if encodings else []
        if transfer:
            self.codings.extend(self._transfer_codings(transfer))
        self.headers_done = True
        if self.head_only:
            # llhttp cannot be told the answer has no body; this connection is not reused.
            self.complete = True
        self._wake()

    def _transfer_codings(self, lines: list[str]) -> list[str]:
        """The transfer codings to undo. llhttp takes chunked off only when it is the last
        one; any other (`gzip, chunked`, or `gzip` alone, which ends with the connection)
        reaches the body undecoded, so it is decoded as a content coding is, or refused."""
        applied = codings(lines)
        if applied and applied[-1] == "chunked":
            self.chunked = True
            applied.pop()
        refused = "chunked" if "chunked" in applied else undecodable(applied)
        if refused is not None:
            # Raised inside llhttp's callback: the answer fails and its connection is closed.
            self.violation = UpstreamProtocolError(
                f"answered with transfer coding {refused[:32]!r}, which blindkey cannot "
                "decode and scan"
            )
            raise self.violation
        return applied

    def feed(self, data: bytes) -> None:
        if self.complete:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            transport = self.connection.transport
            if transport is not None:
                transport.pause_reading()
        self._wake()

    def message_complete(self, keep_alive: bool) -> None:
        if not self.headers_done:
            return  # the end of an interim answer
        if not self.complete:
            self.complete = True
            self.keep_alive = keep_alive and not self.head_only
        self._wake()

    def connection_lost(self) -> None:
        if self.complete:
            return
        if self.headers_done and self.content_length is None and not self.chunked:
            # No length and not chunked: the body is whatever came before the close.
            self.complete = True
        elif self.received == 0:
            self.fail(StaleConnection())
        else:
            self.fail(UpstreamProtocolError("closed the connection before the answer was complete"))
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the handler ---------------------------------------------------------------
    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        remaining = self.deadline - self.loop.time()
        if remaining <= 0:
            raise UpstreamTimeout("did not answer in time")
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(min(self.limits.read_timeout, remaining), _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    async def wait_headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    def _take(self) -> bytes:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            transport = self.connection.transport
            if transport is not None:
                transport.resume_reading()
        return data

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                yield self._take()
            elif self.complete:
                return
            else:
                await self._wait()

    async def read(self) -> bytes:
        """The whole body, as sent (used for small answers without a content encoding)."""
        while not self.complete:
            await self._wait()
        return self._take() if self._chunks else b""

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, every coding undone, at most 64 KiB per decoded step.

        The handler refuses an answer whose codings `undecodable` names before reading it.
        """
        if not self.codings:
            async for chunk in self._raw_chunks():
                yield chunk
            return
        decoder = Decoder(self.codings)  # raises DecodingError, an UpstreamProtocolError
        async for chunk in self._raw_chunks():
            for out in decoder.feed(chunk):
                yield out
        for out in decoder.finish():
            yield out

    def release(self) -> None:
        """Give the connection back to the pool when it can carry another request."""
        connection = self.connection
        connection.response = None
        writer = self.body_writer
        reusable = (
            self.complete
            and self.keep_alive
            and self.error is None
            and not self._chunks
            and (writer is None or writer.done())
        )
        if writer is not None and not writer.done():
            writer.cancel()  # answered before the agent's body was all relayed
        if reusable:
            connection.reuse(connection)
        else:
            connection.abort()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("did not answer in time"))
