"""One connection to an upstream, and what the proxy writes on it: the request's head and
body. llhttp (through httptools) parses what comes back into the response in progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, cast

import httptools

from blindkey.proxy.upstream.errors import UnsendableRequest, UpstreamProtocolError

if TYPE_CHECKING:
    from blindkey.proxy.upstream.response import UpstreamResponse

# Status line and headers together; aiohttp's client stops at 8 KiB per line.
MAX_HEAD = 64 * 2**10
_FORBIDDEN_IN_TARGET = frozenset(chr(c) for c in range(0x21)) | {"\x7f"}


class UpstreamConnection(asyncio.Protocol):
    """One TCP (or TLS) connection; llhttp feeds the response in progress."""

    def __init__(
        self,
        key: tuple[str, str, int],
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[UpstreamConnection], None],
        reuse: Callable[[UpstreamConnection], None],
    ) -> None:
        # The pool is known only by what it does for a connection (forget it when lost, take
        # it back when its answer is complete), so this module does not import the pool.
        self.key = key
        self.loop = loop
        self.on_lost = on_lost
        self.reuse = reuse
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self.peer: str | None = None  # ip:port dialled, worked out by the first call on it
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response.complete:
            # Nothing was asked: a server that talks out of turn is not reused.
            self.abort()
            return
        response.received += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            response.fail(response.violation or UpstreamProtocolError("sent a malformed answer"))
            self.abort()
            return
        if not response.headers_done and response.received > MAX_HEAD:
            response.fail(UpstreamProtocolError(f"sent more than {MAX_HEAD} bytes of headers"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("upstream closed the connection"))
        if self.response is not None:
            self.response.connection_lost()

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("upstream closed the connection")
        if self._drain is not None:
            await asyncio.shield(self._drain)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        if self.response is not None:
            self.response.add_reason(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.add_header(name, value)

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.headers_complete(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response.message_complete(self.parser.should_keep_alive())


def request_head(
    method: str,
    path_query: str,
    host_header: str,
    headers: Iterable[tuple[str, str]],
    framing: str,
) -> bytes:
    lines = [f"{method} {path_query} HTTP/1.1", f"Host: {host_header}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if framing:
        lines.append(framing)
    text = "\r\n".join(lines) + "\r\n\r\n"
    # A CR or LF inside a name or value would start a header of its own: refuse.
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
        raise UnsendableRequest("a header name or value contains a line break")
    if not method or not _FORBIDDEN_IN_TARGET.isdisjoint(method + path_query):
        raise UnsendableRequest("the method or path contains a forbidden character")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        # The error's text would quote the character and its position: say nothing of it.
        raise UnsendableRequest("a header name or value has characters HTTP cannot carry") from None


async def send_body(
    connection: UpstreamConnection,
    response: UpstreamResponse,
    body: AsyncIterable[bytes],
    chunked: bool,
) -> None:
    transport = connection.transport
    assert transport is not None
    try:
        async for chunk in body:
            if response.complete or connection.closed:
                return  # answered (or gone) before the body was all sent
            if chunk:
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                await connection.drain()
        if chunked and not connection.closed:
            transport.write(b"0\r\n\r\n")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the agent's side failed while we relayed its body
        response.fail(UpstreamProtocolError(f"request body failed: {type(exc).__name__}"))
        connection.abort()
