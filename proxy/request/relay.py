"""Relay: the upstream's answer back to the agent, with every value redacted from what the
agent receives: the status line's reason phrase, header names and values, and the body,
whole or streamed. A stream's last bytes are held back whatever they are (see FLUSH_DELAY)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import web
from multidict import CIMultiDict

from blindkey.audit.record import AuditRecord
from blindkey.proxy.errors import REQUEST_ID_HEADER, ProxyError
from blindkey.proxy.request.parse import HOP_BY_HOP
from blindkey.proxy.request.usage import Meter
from blindkey.proxy.upstream import UpstreamError, UpstreamResponse
from blindkey.proxy.upstream.decoding import undecodable
from blindkey.redact.redactor import FLUSH_DELAY, Redactor, RedactStream

log = logging.getLogger("blindkey.proxy")
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "content-encoding"}
# Answers up to this size with a known length are read whole and sent with a length.
SMALL_BODY = 2**16
# Streamed chunks this big that hold escapes are redacted off the event loop.
OFFLOAD = 2**14


async def relay(
    request: web.BaseRequest,
    upstream: UpstreamResponse,
    redactor: Redactor,
    record: AuditRecord,
    where: str,
    meter: Meter | None = None,
) -> web.StreamResponse:
    """Write `upstream`'s answer to the agent. Raises UpstreamError while nothing is sent.
    `meter` reads the answer as the upstream sent it, decoded but before redaction (an LLM
    answer's usage: proxy/request/usage.py redacts the one text it keeps, the model name)."""
    refused = undecodable(upstream.codings)
    if refused is not None:
        raise ProxyError(
            "upstream_error",
            f"{where} answered with content encoding {refused[:32]!r}, which blindkey cannot scan",
        )
    size = upstream.content_length
    if size is not None and size <= SMALL_BODY and not upstream.codings:
        # Most API answers are small: one read, one redaction, one write with a length.
        answer = await upstream.read()
        reason, headers_back, clean = _head(upstream, redactor, record, answer)
        record.status = upstream.status
        clean_body, count = (answer, 0) if clean else redactor.redact(answer)
        record.redactions += count
        record.bytes_out = len(clean_body)
        if meter is not None and b'"usage"' in answer:  # a whole answer without it has none
            meter.feed(answer)
        return web.Response(
            status=upstream.status,
            reason=reason,
            body=clean_body,
            headers=headers_back,
        )
    reason, headers_back, _ = _head(upstream, redactor, record)
    record.status = upstream.status
    response = web.StreamResponse(status=upstream.status, reason=reason, headers=headers_back)
    await response.prepare(request)
    stream = redactor.stream()
    # Until the last byte is passed on, the answer counts as cut: shutdown, an agent gone
    # or an upstream reset leave the record saying so, with the bytes and redactions so far.
    record.cut()
    chunks = upstream.iter_chunks()
    if meter is not None:
        chunks = _Metered(chunks, meter)
    try:
        async with contextlib.aclosing(_redacted(chunks, stream, record.request_id)) as outputs:
            async for out in outputs:
                record.bytes_out += len(out)
                await response.write(out)
    except UpstreamError as exc:
        # Headers are gone; all we can do is cut the stream so the agent sees a failure.
        log.warning("%s: upstream failed mid-stream (%s)", record.request_id, exc)
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        record.redactions += stream.count
    record.complete, record.reason = True, None
    # The end of the stream is written by aiohttp once the handler returns: after the
    # edge has written the record, so no agent holds a whole answer without its record.
    return response


class _Metered:
    """The upstream's chunks, each shown to the meter as it passes (nothing is kept back)."""

    def __init__(self, chunks: AsyncIterator[bytes], meter: Meter) -> None:
        self.chunks = chunks
        self.meter = meter

    def __aiter__(self) -> _Metered:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self.chunks)
        self.meter.feed(chunk)
        return chunk


def _head(
    upstream: UpstreamResponse, redactor: Redactor, record: AuditRecord, body: bytes = b""
) -> tuple[str, CIMultiDict[str], bool]:
    """The reason phrase and the headers the agent gets, and whether `body` (a small answer
    read whole) holds no value either: found in the same scan as the head."""
    kept = [(name, value) for name, value in upstream.headers if name.lower() not in _NOT_RETURNED]
    # Everything the agent receives passes the redactor: the status line's reason phrase,
    # header names and values (one scan over all of them when nothing matches). A name
    # holding a value cannot be rewritten into a valid name, so that header is dropped.
    texts = [upstream.reason, *(name for name, _ in kept), *(value for _, value in kept)]
    count = 0
    if _nothing_in(redactor, texts, body):
        clean = True
    else:
        clean = False
        texts, count = redactor.redact_texts(texts)
    if count:
        record.redactions += count
        names, values = texts[1 : 1 + len(kept)], texts[1 + len(kept) :]
        kept = [
            (clean_name, clean_value)
            for (name, _), clean_name, clean_value in zip(kept, names, values, strict=True)
            if clean_name == name
        ]
    headers_back = CIMultiDict(kept)
    headers_back[REQUEST_ID_HEADER] = record.request_id
    return texts[0], headers_back, clean


def _nothing_in(redactor: Redactor, texts: list[str], body: bytes = b"") -> bool:
    """True when no value is in any of `texts` (an answer's head) nor in `body`, found in
    one scan.

    Each text, and the body, is a substring of them all joined, and so is each one's view
    (a view decodes escapes, which a space cannot begin or end): no match in the whole is
    none in a part. Joined by a space rather than redact_texts' line break, which makes the
    line-break view scan the head a second time although no header holds a line break. A
    match the joint makes (a value spanning two parts) only costs the scan of each part on
    its own.
    """
    joined = " ".join(texts)
    if not joined.isascii():
        return False
    data = joined.encode()
    if body:
        data = b"%b %b" % (data, body)
    _, count = redactor.redact(data)
    return count == 0


async def _redacted(
    chunks: AsyncIterator[bytes], stream: RedactStream, request_id: str
) -> AsyncGenerator[bytes, None]:
    """`chunks` through `stream`, flushing the held tail FLUSH_DELAY after it began to be
    held (read here at each call, so a test can change it).

    The next chunk is read by a task that a pause never cancels: cancelling a read midway
    would leave the upstream connection in an unknown state.
    """
    delay = FLUSH_DELAY
    loop = asyncio.get_running_loop()
    reader = chunks.__aiter__()
    pending: asyncio.Task[bytes] | None = None
    # When the held bytes go out if no flush came first: FLUSH_DELAY after the oldest of
    # them was held, so no byte waits longer, however fast or slow the stream runs.
    deadline: float | None = None
    try:
        while True:
            try:
                if deadline is not None:
                    pending = asyncio.ensure_future(anext(reader))
                    pending.set_name(f"relay-read-{request_id}")
                    wait = max(0.0, deadline - loop.time())
                    done, _ = await asyncio.wait((pending,), timeout=wait)
                    if not done:
                        deadline = None
                        if flushed := stream.flush():
                            yield flushed
                    chunk = await pending
                    pending = None
                else:
                    chunk = await anext(reader)
            except StopAsyncIteration:
                break
            # An escape-dense chunk costs the views a Python call per escape (a few MiB/s):
            # it is redacted on a worker thread, so the loop answers other calls meanwhile.
            if len(chunk) >= OFFLOAD and (b"%" in chunk or b"\\" in chunk):
                out = await asyncio.to_thread(stream.feed, chunk)
            else:
                out = stream.feed(chunk)
            if not stream.tail:
                deadline = None
            elif deadline is None:
                deadline = loop.time() + delay
            if out:
                yield out
        tail = stream.finish()
        if tail:
            yield tail
    finally:
        if pending is not None:
            pending.cancel()
