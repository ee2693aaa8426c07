"""A WebSocket upgrade inside an intercepted tunnel (proxy mode).

The upgrade request is a request like any other: its placeholders are found (a foreign one
refused), the egress check, the broker's decision, the swap in its headers, path and query,
and its record. Only then is the upstream dialled (through the vetting resolver, with the
upstream TLS context, as the pool dials) and, once it has agreed, the client's upgrade
answered and frames relayed both ways until either side closes.

Frames from the upstream are redacted message by message (a value the upstream echoes back
is `[REDACTED:NAME]`); a value split across two messages is not found. Frames from the
client go as they are: placeholders in them are not swapped (only the upgrade carries
keys).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from blindkey.audit.record import AuditRecord
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.parse import ProxySpec, Target
from blindkey.proxy.request.pipeline import authorise, egress_check, injected
from blindkey.proxy.request.send import upstream_errors
from blindkey.redact.redactor import Redactor

if TYPE_CHECKING:
    from blindkey.proxy.runtime import ProxyRuntime

# The handshake's own headers: the client library makes its own for the upstream side.
_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "accept-encoding"}
)  # fmt: skip
MAX_MESSAGE = 4 * 2**20


def is_websocket(request: web.BaseRequest) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


async def websocket(
    runtime: ProxyRuntime,
    request: web.BaseRequest,
    spec: ProxySpec,
    raw_headers: list[tuple[str, str]],
    record: AuditRecord,
) -> web.StreamResponse:
    target = spec.target
    record.secrets, record.styles = spec.secret_names, spec.styles
    await egress_check(runtime, spec, record)
    grant = await authorise(runtime, request, spec, record)
    outgoing = await injected(runtime, request, spec, raw_headers, grant, record, ranged=False)
    headers = CIMultiDict((n, v) for n, v in outgoing.headers if n.lower() not in _HANDSHAKE)
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    protocols = [p.strip() for p in offered.split(",") if p.strip()]
    pool = runtime.upstream
    assert pool is not None
    connector = aiohttp.TCPConnector(resolver=pool.resolver, ssl=pool.ssl_context)
    url = f"{target.scheme}://{target.host_header}{outgoing.path_query}"
    timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, trace_configs=[_no_redirects()]
    ) as session:
        with upstream_errors(target, grant.redactor), _refused_upgrade(target):
            upstream = await session.ws_connect(
                url, headers=headers, protocols=protocols, timeout=timeout,
                max_msg_size=MAX_MESSAGE, autoping=True,
            )  # fmt: skip
        async with upstream:
            chosen = (upstream.protocol,) if upstream.protocol else ()
            client = web.WebSocketResponse(protocols=chosen, max_msg_size=MAX_MESSAGE)
            await client.prepare(request)
            record.status = 101
            await _relay(client, upstream, grant.redactor, record)
    return client


class RedirectRefused(Exception):
    """The upstream answered the upgrade with a redirect."""


def _no_redirects() -> aiohttp.TraceConfig:
    """aiohttp's ws_connect follows redirects and has no switch for it: stopped here, as
    the upstream client never follows one (the values in the upgrade would go with it)."""

    async def refuse(*_: object) -> None:
        raise RedirectRefused

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(refuse)
    return trace


@contextlib.contextmanager
def _refused_upgrade(target: Target) -> Iterator[None]:
    try:
        yield
    except RedirectRefused:
        raise ProxyError(
            "upstream_error",
            f"{target.host_header} answered the WebSocket upgrade with a redirect, which "
            "blindkey does not follow",
        ) from None
    except aiohttp.WSServerHandshakeError as exc:
        raise ProxyError(
            "upstream_error",
            f"{target.host_header} refused the WebSocket upgrade ({exc.status})",
        ) from None


async def _relay(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    redactor: Redactor,
    record: AuditRecord,
) -> None:
    """Both directions until one ends; then the other is closed too."""
    up = asyncio.create_task(_pump(client, upstream, None, record), name="websocket-up")
    down = asyncio.create_task(_pump(upstream, client, redactor, record), name="websocket-down")
    try:
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await upstream.close()
        await client.close()


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    redactor: Redactor | None,
    record: AuditRecord,
) -> None:
    async for message in source:
        if message.type == WSMsgType.TEXT:
            text = str(message.data)
            if redactor is not None:
                text, found = redactor.redact_text(text)
                record.redactions += found
            await sink.send_str(text)
        elif message.type == WSMsgType.BINARY:
            data = bytes(message.data)
            if redactor is not None:
                data, found = redactor.redact(data)
                record.redactions += found
            await sink.send_bytes(data)
        else:  # close and errors end the relay
            break
