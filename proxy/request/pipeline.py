"""The stages one call passes, in order, after its entry point has parsed it into a spec.

    egress check -> authorise (-> approval wait) -> inject -> send -> relay

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
from blindkey.broker.protocol import BrokerUnavailable
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.approval_wait import WAIT_HEADER, approved
from blindkey.proxy.request.authorise import Grant
from blindkey.proxy.request.egress import dialled
from blindkey.proxy.request.forward_proxy import swap_body, swap_headers, swap_path
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
from blindkey.proxy.request.send import upstream_errors
from blindkey.proxy.request.sigv4 import Outgoing, check_styles, sign_all, signs_payload, unsent
from blindkey.proxy.request.sigv4_chunks import resigned
from blindkey.proxy.request.token_scan import refusal as token_refusal
from blindkey.proxy.request.usage import meter_for, settle
from blindkey.proxy.runtime import ProxyRuntime
from blindkey.proxy.upstream import UpstreamRequest, UpstreamResponse


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
    short = settings.short_allowed
    record.short_secrets = [name for name in names if name in short] if short else []
    runtime.authoriser.catch_up()

    await egress_check(runtime, spec, record)
    grant = await authorise(runtime, request, spec, record)

    # Inject.
    ranged = settings.range_allowed.issuperset(names)
    outgoing = await injected(runtime, request, spec, raw_headers, grant, record, ranged=ranged)
    counter = outgoing.body if isinstance(outgoing.body, CountingBody) else None

    # Upstream, then relay; their failures become errors of the table at this boundary.
    pool = runtime.upstream
    assert pool is not None
    with upstream_errors(target, grant.redactor, counter):
        upstream = await pool.request(outgoing)
    record.peer = dialled(upstream.connection)
    async with upstream:
        if counter is not None:
            record.bytes_in = counter.size
        if not ranged:
            refuse_parts(upstream, target)
        meter = meter_for(upstream.status, upstream.content_type)  # an LLM answer's usage
        # The relay raises UpstreamError only while nothing is sent.
        try:
            with upstream_errors(target, grant.redactor, counter):
                return await relay(
                    request, upstream, grant.redactor, record, target.host_header, meter
                )
        finally:
            settle(runtime, record, meter, grant.redactor)


async def egress_check(runtime: ProxyRuntime, spec: ProxySpec, record: AuditRecord) -> None:
    """Scheme, host and port against the allowlist."""
    try:
        record.rule = runtime.egress.check(spec.target).text
    except ProxyError:
        # The record names the caller; an unknown token is answered 401 instead. A broker
        # that cannot answer leaves the refusal as it is.
        with contextlib.suppress(BrokerUnavailable):
            record.agent, record.env = await runtime.authoriser.identify(spec.token)
        raise


async def authorise(
    runtime: ProxyRuntime, request: web.BaseRequest, spec: ProxySpec, record: AuditRecord
) -> Grant:
    """The values the broker releases to this agent on this host."""
    target = spec.target
    agent, env, grant = await runtime.authoriser.resolve(
        spec.token, spec.secret_names, target.host, target.scheme, target.port,
        spec.method, target.path_query.split("?", 1)[0],
    )  # fmt: skip
    record.agent, record.env = agent, env
    if isinstance(grant, Grant):
        record.would_deny = grant.would_deny
        return grant
    if grant.code != "approval_required":
        raise grant
    # A human must approve first: say how, or keep the call waiting until they do.
    asked = time.perf_counter()
    try:
        grant = await approved(runtime, request, spec)
        record.would_deny = grant.would_deny
        return grant
    finally:
        if WAIT_HEADER in request.headers:  # the human's time, not the service's
            record.waited_ms = round((time.perf_counter() - asked) * 1000, 3)


async def injected(
    runtime: ProxyRuntime,
    request: web.BaseRequest,
    spec: ProxySpec,
    raw_headers: list[tuple[str, str]],
    grant: Grant,
    record: AuditRecord,
    *,
    ranged: bool,
) -> UpstreamRequest:
    """The request that goes upstream, with the values in place."""
    target = spec.target
    # SigV4's checks and signature cost only the calls that bind AWS keys: which values are
    # keys is known once per broker answer (Grant.aws), which injections sign, by the spec.
    signs = spec.signs
    values: Mapping[str, str] = grant.values
    if signs or grant.aws:
        check_styles(spec.injections, values)
        values = unsent(spec.injections, values)  # AWS keys sign, and are never sent
    headers = upstream_headers(request, raw_headers, allow_range=ranged)
    inject_headers(headers, spec.injections, grant.values)
    path_query, shown = inject_query(target.path_query, spec.injections, grant.values)
    if spec.placeholders is not None:  # proxy mode: the values where the placeholders were
        headers = swap_headers(headers, spec.placeholders, values)
        path_query = swap_path(path_query, spec.placeholders, values)
    record.url = f"{target.scheme}://{target.host_header}{shown}"
    body = await request_body(runtime, request, spec, values, headers, record, signs=signs)
    length = request.content_length if isinstance(body, CountingBody) else None
    if signs:
        signed = Outgoing(spec.method, target.host, target.host_header, path_query,
                          body if isinstance(body, bytes) else None, length)  # fmt: skip
        chunk_signers = sign_all(headers, spec.injections, grant.values, signed,
                                 lambda name: runtime.settings.policy(name).region)  # fmt: skip
        body = resigned(body, chunk_signers)  # signed chunks: signed again as they stream
    return UpstreamRequest(
        spec.method,
        target.scheme,
        target.host,
        target.port,
        target.host_header,
        path_query,
        headers.items(),
        body,
        length,
    )


async def request_body(
    runtime: ProxyRuntime,
    request: web.BaseRequest,
    spec: ProxySpec,
    values: Mapping[str, str],
    headers: CIMultiDict[str],
    record: AuditRecord,
    *,
    signs: bool,
) -> bytes | CountingBody | None:
    """The body to send: read whole for a Body-*/Form-* injection, else streamed (through
    a route's token scan)."""
    if spec.body is not None:  # proxy mode: read and searched by its entry point
        body = spec.body
        if spec.placeholders is not None:
            content_type = request.headers.get("Content-Type", "")
            body = swap_body(body, content_type, spec.placeholders, values)
        record.bytes_in = len(body)
        return body
    if not (spec.buffers_body or (signs and signs_payload(spec.injections, headers))):
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
    if upstream.status == 206 or upstream.content_range:
        raise ProxyError(
            "upstream_error",
            f"{target.host_header} answered with a part of its content ({upstream.status}, "
            "Content-Range): blindkey relays only whole answers, since parts can spell out a "
            "value in slices too short to redact; a human can permit parts for the secrets "
            "of this call with [secrets.NAME] allow_range = true",
        )
