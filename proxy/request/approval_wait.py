"""A call that names a secret whose tier needs a grant, without one: refused
`approval_required` with the id a human approves, or, with `X-AS-Wait-Approval: SECONDS`,
held until the broker says a human approved (it goes on), denied (`approval_denied`) or
the time ran out (`approval_required`).

A held call is a coroutine waiting on a future the broker's push resolves: it pins no
thread, keeps its connection (so it counts toward the connection limit), and is answered
at once when the proxy shuts down.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from blindkey.config.hosts import origin
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.authorise import Authoriser, Grant
from blindkey.proxy.request.parse import ProxySpec
from blindkey.proxy.runtime import ProxyRuntime

WAIT_HEADER = "X-AS-Wait-Approval"
MAX_WAIT = 300


def wait_seconds(text: str | None) -> int | None:
    """X-AS-Wait-Approval: whole seconds, 1 to 300."""
    if text is None:
        return None
    value = text.strip()
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_WAIT:
        raise ProxyError("bad_request", f"{WAIT_HEADER} takes whole seconds from 1 to {MAX_WAIT}")
    return int(value)


def _required(
    approval_id: str, secret: str, host: str, why: str = "", count: str = ""
) -> ProxyError:
    return ProxyError(
        "approval_required",
        f"{why}secret {secret} needs a human's approval before it is used on {host}{count}: "
        f"ask them to run `blindkey approve --request {approval_id}` (for {host} only; or "
        f"`blindkey approve {secret}`, for every host it may reach), then retry; or send "
        f"{WAIT_HEADER}: SECONDS to wait for it",
        fields={"approval_id": approval_id},
    )


# A held call looks up this often to see whether its caller is still there.
CALLER_CHECK = 1.0


async def _outlast(
    authoriser: Authoriser, request: web.BaseRequest, approval_id: str, deadline: float,
    since: int,
) -> str:  # fmt: skip
    """Wait as Authoriser.wait does, but give up ("gone") once the caller hung up: nothing
    would carry the answer, and the held call would be kept for nothing. A broker that
    restarted meanwhile knows neither the call nor what changed while it was down (a
    grant made then is in its file, and no push says so): "rejoined", ask it again."""
    loop = asyncio.get_running_loop()
    link = authoriser.broker.connection_epoch
    while True:
        left = deadline - loop.time()
        outcome = await authoriser.wait(approval_id, min(left, CALLER_CHECK), since)
        if outcome != "timeout" or left <= CALLER_CHECK:
            return outcome
        transport = request.transport
        if transport is None or transport.is_closing():
            return "gone"
        if await authoriser.rejoined(link):
            return "rejoined"


async def approved(runtime: ProxyRuntime, request: web.BaseRequest, spec: ProxySpec) -> Grant:
    """The values once a grant exists; raises the refusal otherwise."""
    wait = wait_seconds(request.headers.get(WAIT_HEADER))
    authoriser = runtime.authoriser
    target = spec.target
    names, host = spec.secret_names, target.host
    destination = (target.scheme, target.host, target.port)
    # The refusal names the destination a grant from this request covers, port included.
    shown = origin(*destination)
    path = target.path_query.split("?", 1)[0]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (wait or 0)
    approval_id: str | None = None
    while True:
        since = authoriser.changes
        # Asked again (a change, a restarted broker), the call keeps the id its human has.
        approval_id, secret, count = await authoriser.hold(
            spec.token, names, destination, spec.method, path, approval_id
        )
        if approval_id is not None:
            if wait is None:
                raise _required(approval_id, secret, shown, count=count)
            outcome = await _outlast(authoriser, request, approval_id, deadline, since)
            if outcome == "denied":
                raise ProxyError(
                    "approval_denied",
                    f"a human denied request {approval_id} to use {secret} on {shown}",
                    fields={"approval_id": approval_id},
                )
            if outcome in ("timeout", "shutdown", "expired", "gone"):
                why = {
                    "timeout": f"no human approved within {wait}s: ",
                    "shutdown": "the proxy is shutting down: ",
                    "gone": "the caller went away: ",
                    "expired": "the request was not approved within 10 minutes: ",
                }[outcome]
                raise _required(approval_id, secret, shown, why, count)
        _, _, grant = await authoriser.resolve(spec.token, names, host, target.scheme, target.port)
        if isinstance(grant, Grant):
            return grant
        if grant.code != "approval_required" or wait is None or approval_id is None:
            raise grant
        if loop.time() >= deadline:
            why = f"no human approved within {wait}s: "
            raise _required(approval_id or "", secret, shown, why, count)
