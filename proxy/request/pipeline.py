"""The stages one call passes, in order, after its entry point has parsed it into a spec.

    egress check -> authorise -> inject -> upstream -> relay

The order is deliberate. The allowlist is checked before the broker is asked for values:
a call that cannot go anywhere costs no socket round trip, and no value is released into
this process for it. Who the caller is, is still learned for the record of a refusal (and
an unknown token is refused 401 before anything about the allowlist is said). The address
a name resolves to is checked later, when the upstream client dials: the address checked
must be the address dialled, and a pooled connection needs no new lookup.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict

from blindkey.audit.record import AuditRecord
from blindkey.broker.protocol import BrokerDenied, BrokerUnavailable
from blindkey.config.errors import BlindkeyError
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.approval_wait import WAIT_HEADER, approved
from blindkey.proxy.request.inject import (
    CountingBody,
    inject_body,
    inject_headers,
    inject_query,
    read_limited,
    upstream_headers,
)
from blindkey.proxy.request.parse import ProxySpec, Target
from blindkey.proxy.request.relay import relay
from blindkey.proxy.request.token_scan import refusal as token_refusal
from blindkey.proxy.runtime import ProxyRuntime
from blindkey.proxy.upstream import UpstreamError, UpstreamResponse
from blindkey.redact.redactor import Redactor


async def forward(
    runtime: ProxyRuntime,
    request: web.BaseRequest,
    spec: ProxySpec,
    raw_headers: list[tuple[str, str]],
    record: AuditRecord,
) -> web.StreamResponse:
    target = spec.target
    names = spec.secret_names
    record.method, record.host = spec.method, target.host
    record.secrets, record.styles = names, spec.styles
    settings = runtime.settings
    record.short_secrets = [n for n in names if settings.policy(n).allow_short]
    authoriser = runtime.authoriser
    authoriser.catch_up()

    # Egress check: scheme, host and port against the allowlist.
    try:
        runtime.guard.check(target)
    except ProxyError:
        # The record names the caller; an unknown token is answered 401 instead. A broker
        # that cannot answer leaves the refusal as it is.
        with contextlib.suppress(BrokerUnavailable):
            record.agent, record.env = await authoriser.identify(spec.token)
        raise

    # Authorise: the broker releases the values this agent may use on this host.
    agent, env, grant = await authoriser.resolve(
        spec.token, names, target.host, target.scheme, target.port
    )
    record.agent, record.env = agent, env
    if isinstance(grant, BrokerDenied):
        if grant.code != "approval_required":
            raise grant
        # A human must approve first: say how, or hold the call until they do.
        held = time.perf_counter()
        try:
            grant = await approved(runtime, request, spec)
        finally:
            if WAIT_HEADER in request.headers:  # the human's time, not the service's
                record.waited_ms = round((time.perf_counter() - held) * 1000, 3)

    # Inject.
    ranged = all(settings.policy(name).allow_range for name in names)
    headers = upstream_headers(request, raw_headers, allow_range=ranged)
    inject_headers(headers, spec.injections, grant.values)
    path_query, shown = inject_query(target.path_query, spec.injections, grant.values)
    record.url = f"{target.scheme}://{target.host_header}{shown}"
    body = await request_body(runtime, request, spec, grant.values, headers, record)
    counter = body if isinstance(body, CountingBody) else None

    # Upstream, then relay. A failure before the answer's head is sent carries the redactor
    # along, for what an upstream's error text may echo.
    pool = runtime.upstream
    assert pool is not None
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
        if counter is not None and counter.refusal is not None:
            raise counter.refusal from None  # the token scan cut the body short
        raise UpstreamFailure(exc, target, grant.redactor) from None
    async with upstream:
        if counter is not None:
            record.bytes_in = counter.size
        if not ranged:
            refuse_parts(upstream, target)
        try:
            return await relay(request, upstream, grant.redactor, record, target.host_header)
        except UpstreamError as exc:  # relay raises it only while nothing is sent
            if counter is not None and counter.refusal is not None:
                raise counter.refusal from None
            raise UpstreamFailure(exc, target, grant.redactor) from None


async def request_body(
    runtime: ProxyRuntime,
    request: web.BaseRequest,
    spec: ProxySpec,
    values: Mapping[str, str],
    headers: CIMultiDict[str],
    record: AuditRecord,
) -> bytes | CountingBody | None:
    """The body to send: read whole for a Body-*/Form-* injection, else streamed (through
    a route's token scan)."""
    if not spec.buffers_body:
        return CountingBody(request, spec.token_scan) if request.body_exists else None
    limits = runtime.settings.limits
    original = await read_limited(request, limits.max_request_body, limits.body_read_timeout)
    if spec.token_scan is not None and spec.token_scan.found(original):
        raise token_refusal("the body")
    body, content_type = inject_body(
        original, request.headers.get("Content-Type", ""), spec.injections, values
    )
    headers["Content-Type"] = content_type
    record.bytes_in = len(body)
    return body


def refuse_parts(upstream: UpstreamResponse, target: Target) -> None:
    """A 206 (or a Content-Range on another answer) is a part: refused unless asked for. A
    Range header was not sent, but an upstream may answer with parts anyway (S3's
    `?partNumber=`), and slices shorter than a value pass any redactor."""
    if upstream.status == 416:
        return
    if upstream.status == 206 or any(n.lower() == "content-range" for n, _ in upstream.headers):
        raise ProxyError(
            "upstream_error",
            f"{target.host_header} answered with a part of its content ({upstream.status}, "
            "Content-Range): blindkey relays only whole answers, since parts can spell out a "
            "value in slices too short to redact; a human can permit parts for the secrets "
            "of this call with [secrets.NAME] allow_range = true",
        )


class UpstreamFailure(BlindkeyError):
    """An upstream failure with what its error message needs: the target, and the redactor
    for any text the upstream sent back (proxy/request/edge.py turns it into the error answer)."""

    def __init__(self, cause: BaseException, target: Target, redactor: Redactor) -> None:
        super().__init__(str(cause))
        self.cause, self.target, self.redactor = cause, target, redactor
