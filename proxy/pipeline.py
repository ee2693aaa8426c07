"""`/proxy`: parse, authenticate, check, inject, forward, stream back redacted, audit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from blindkey.audit.record import AuditRecord
from blindkey.broker.protocol import BrokerDenied
from blindkey.proxy.egress import BlockedAddressError
from blindkey.proxy.errors import REQUEST_ID_HEADER, ProxyError, error_response
from blindkey.proxy.inject import inject_body, inject_headers, inject_query
from blindkey.proxy.parse import PREFIX, ProxySpec, parse_spec
from blindkey.proxy.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamResolveError,
    UpstreamTimeout,
)
from blindkey.proxy.upstream.decoding import DECODABLE, undecodable

if TYPE_CHECKING:
    from blindkey.proxy.redact import Redactor
    from blindkey.proxy.runtime import Grant, ProxyRuntime

log = logging.getLogger("blindkey.proxy")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
# Expect: the proxy itself answered 100-continue to the agent.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "origin", "expect"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "content-encoding"}
CHUNK = 2**16
# Answers up to this size with a known length are read whole and sent with a length.
SMALL_BODY = 2**16


def _decoded_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


def _upstream_headers(request: web.BaseRequest, raw: list[tuple[str, str]]) -> CIMultiDict[str]:
    listed = {
        token.strip().lower()
        for value in request.headers.getall("Connection", [])
        for token in value.split(",")
    }
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in raw:
        lowered = name.lower()
        if lowered in _NOT_FORWARDED or lowered in listed or lowered.startswith(PREFIX):
            continue
        headers.add(name, value)
    headers["Accept-Encoding"] = ", ".join(DECODABLE)
    return headers


async def _read_limited(request: web.BaseRequest, limit: int, deadline: float) -> bytes:
    """The whole body, for Body-*/Form-* injection: bounded in size and in time."""
    if request.content_length is not None and request.content_length > limit:
        raise ProxyError(
            "body_too_large",
            f"request body exceeds the {limit}-byte limit for Body-*/Form-* injection",
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise ProxyError(
                        "body_too_large",
                        f"request body exceeds the {limit}-byte limit for Body-*/Form-* injection",
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ProxyError(
            "bad_request",
            f"the request body did not arrive within {deadline:g}s ([limits] body_read_timeout)",
            close=True,
        ) from None
    return b"".join(chunks)


class _CountingBody:
    """Streams the agent's body upstream while counting it for the audit record."""

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.request.content.iter_chunked(CHUNK):
            self.size += len(chunk)
            yield chunk


def _upstream_failure(exc: BaseException, spec: ProxySpec, redactor: Redactor) -> ProxyError:
    target = spec.target
    where = target.host_header
    if isinstance(exc, BlockedAddressError):
        return ProxyError(
            "blocked_address",
            f"{target.host} resolves only to addresses blindkey "
            "does not dial (private, loopback, link-local or reserved); a human can "
            "permit a range with [allowlist] private_ranges",
        )
    if isinstance(exc, UpstreamTimeout):
        return ProxyError("upstream_timeout", f"{where} did not answer in time")
    if isinstance(exc, UpstreamResolveError):
        return ProxyError("upstream_error", str(exc))
    if isinstance(exc, UpstreamConnectError):
        return ProxyError("upstream_error", f"{where}: {exc}")
    detail = str(exc) if isinstance(exc, UpstreamError) else type(exc).__name__
    clean, _ = redactor.redact_text(detail)
    return ProxyError("upstream_error", f"{where} failed: {clean}")


def _audit_url(spec: ProxySpec, shown_path: str) -> str:
    target = spec.target
    return f"{target.scheme}://{target.host_header}{shown_path}"


async def handle_proxy(
    runtime: ProxyRuntime, request: web.BaseRequest, request_id: str
) -> web.StreamResponse:
    record = AuditRecord(
        request_id=request_id,
        method=request.headers.get("X-AS-Method", request.method)[:16],
        url=request.headers.get("X-AS-Target-URL", "")[:2048],
    )
    try:
        return await _proxy(runtime, request, record)
    except ProxyError as exc:
        record.block(exc.code, exc.status)
        return error_response(exc, request_id)
    finally:
        runtime.audit.submit_after_answer(record)


async def _proxy(
    runtime: ProxyRuntime, request: web.BaseRequest, record: AuditRecord
) -> web.StreamResponse:
    raw = _decoded_headers(request)
    spec = parse_spec(request.method, raw)
    target = spec.target
    record.method, record.host = spec.method, target.host
    names = spec.secret_names
    record.secrets, record.styles = names, spec.styles
    settings = runtime.settings
    record.short_secrets = [n for n in names if settings.policy(n).allow_short]
    agent, env, outcome = await runtime.resolve(spec.token, names, target.host)
    record.agent, record.env = agent, env
    runtime.guard.check(target)
    if isinstance(outcome, BrokerDenied):
        raise ProxyError(outcome.code, str(outcome))
    return await _forward(runtime, request, spec, outcome, raw, record)


async def _forward(
    runtime: ProxyRuntime,
    request: web.BaseRequest,
    spec: ProxySpec,
    grant: Grant,
    raw: list[tuple[str, str]],
    record: AuditRecord,
) -> web.StreamResponse:
    target = spec.target
    headers = _upstream_headers(request, raw)
    inject_headers(headers, spec.injections, grant.values)
    path_query, shown = inject_query(target.path_query, spec.injections, grant.values)
    record.url = _audit_url(spec, shown)
    counter: _CountingBody | None = None
    body: bytes | _CountingBody | None = None
    if spec.buffers_body:
        limits = runtime.settings.limits
        original = await _read_limited(request, limits.max_request_body, limits.body_read_timeout)
        body, content_type = inject_body(
            original, request.headers.get("Content-Type", ""), spec.injections, grant.values
        )
        headers["Content-Type"] = content_type
        record.bytes_in = len(body)
    elif request.body_exists:
        counter = body = _CountingBody(request)
    pool = runtime.upstream
    assert pool is not None
    redactor = grant.redactor
    try:
        upstream = await pool.request(
            spec.method,
            target.scheme,
            target.host,
            target.port,
            target.host_header,
            path_query,
            headers.items(),
            body,
            request.content_length if counter is not None else None,
        )
    except (UpstreamError, OSError) as exc:
        raise _upstream_failure(exc, spec, redactor) from None
    except ValueError as exc:
        raise ProxyError("bad_request", str(exc)) from None
    async with upstream:
        if counter is not None:
            record.bytes_in = counter.size
        refused = undecodable(upstream.codings)
        if refused is not None:
            raise ProxyError(
                "upstream_error",
                f"{target.host_header} answered with content "
                f"encoding {refused[:32]!r}, which blindkey cannot scan",
            )
        kept = [
            (name, value) for name, value in upstream.headers if name.lower() not in _NOT_RETURNED
        ]
        # Everything the agent receives passes the redactor: the status line's reason phrase,
        # header names and values (one scan over all of them when nothing matches). A name
        # holding a value cannot be rewritten into a valid name, so that header is dropped.
        texts, count = redactor.redact_texts(
            [upstream.reason, *(name for name, _ in kept), *(value for _, value in kept)]
        )
        reason = texts[0]
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
        record.status = upstream.status
        size = upstream.content_length
        if size is not None and size <= SMALL_BODY and not upstream.codings:
            # Most API answers are small: one read, one redaction, one write with a length.
            try:
                answer = await upstream.read()
            except UpstreamError as exc:
                raise _upstream_failure(exc, spec, redactor) from None
            clean_body, count = redactor.redact(answer)
            record.redactions += count
            record.bytes_out = len(clean_body)
            return web.Response(
                status=upstream.status,
                reason=reason,
                body=clean_body,
                headers=headers_back,
            )
        response = web.StreamResponse(status=upstream.status, reason=reason, headers=headers_back)
        await response.prepare(request)
        stream = redactor.stream()
        try:
            async for chunk in upstream.iter_chunks():
                out = stream.feed(chunk)
                if out:
                    record.bytes_out += len(out)
                    await response.write(out)
        except UpstreamError as exc:
            # Headers are gone; all we can do is cut the stream so the agent sees a failure.
            log.warning("%s: upstream failed mid-stream (%s)", record.request_id, exc)
            record.redactions += stream.count
            if request.transport is not None:
                request.transport.close()
            return response
        tail = stream.finish()
        record.redactions += stream.count
        if tail:
            record.bytes_out += len(tail)
            await response.write(tail)
        await response.write_eof()
        return response
