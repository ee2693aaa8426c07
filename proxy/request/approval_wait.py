"""A call that names a secret whose tier needs a grant, without one: refused
`approval_required` with the id a human approves, or, with `X-AS-Wait-Approval: SECONDS`,
kept waiting until the broker says a human approved (it goes on), denied
(`approval_denied`) or the time ran out (`approval_required`).

A waiting call is a coroutine on a future the broker's push resolves (`ApprovalWaits`,
told by the authoriser, which receives the pushes): it pins no thread, keeps its connection
(so it counts toward the connection limit), and is answered at once when the proxy shuts
down. ("Held" is the redactor's word, for the tail of a stream it holds back.)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

from blindkey.broker.approvals.core import approvals_count
from blindkey.broker.protocol import BrokerUnavailable
from blindkey.config.hosts import origin
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.authorise import Authoriser, Grant
from blindkey.proxy.request.parse import ProxySpec

if TYPE_CHECKING:
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


# A waiting call looks up this often to see whether its caller is still there.
CALLER_CHECK = 1.0
MAX_OUTCOMES = 256


class ApprovalWaits:
    """Calls waiting for a human, by approval id, woken by the broker's pushes: a grant may
    have appeared (any change), a request was approved, denied or forgotten."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[str]]] = {}
        # Kept a while: a call may start waiting just after its push arrived.
        self._outcomes: dict[str, str] = {}
        self._closing = False
        # Taken before asking the broker: wait() then sees a change pushed meanwhile.
        self.changes = 0

    def pushed(self, approval_id: str | None, outcome: str) -> None:
        """The broker's word: `outcome` for `approval_id`, or None: something changed."""
        if approval_id is None:
            self.changes += 1
            self._wake(None, outcome)
            return
        self._outcomes[approval_id] = outcome
        while len(self._outcomes) > MAX_OUTCOMES:
            del self._outcomes[next(iter(self._outcomes))]
        self._wake(approval_id, outcome)

    async def wait(self, approval_id: str, within: float, since: int) -> str:
        """Until something may have decided `approval_id`: approved, denied, expired,
        changed (any grant may have appeared), timeout or shutdown."""
        if self._closing:
            return "shutdown"
        if approval_id in self._outcomes:
            return self._outcomes[approval_id]
        if self.changes != since:
            return "changed"
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(approval_id, set())
        waiters.add(future)
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            return "timeout"
        finally:
            waiters.discard(future)
            if not waiters and self._waiters.get(approval_id) is waiters:
                del self._waiters[approval_id]

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())

    def _wake(self, approval_id: str | None, outcome: str) -> None:
        chosen = (
            self._waiters.values()
            if approval_id is None
            else [self._waiters.get(approval_id, set())]
        )
        for waiters in list(chosen):
            for future in list(waiters):
                if not future.done():
                    future.set_result(outcome)

    def release(self) -> None:
        """Shutting down: every waiting call is answered now (approval_required)."""
        self._closing = True
        self._wake(None, "shutdown")


async def ask_approval(
    authoriser: Authoriser, token: str | None, names: list[str], target: tuple[str, str, int],
    method: str, path: str, known: str | None = None, held: bool = False,
) -> tuple[str | None, str, str]:  # fmt: skip
    """Record a call to target (scheme, host, port) that met a gate as a pending request
    (the broker's `hold` op): (approval id, the secret that needs a grant, how many
    approvals it needs and has when one is not enough, else ""); the id is None when
    nothing needs one any more. `known`: the id the call had (a restarted broker takes it
    back, so the human's `approve --request ID` still finds it)."""
    scheme, host, port = target
    extra: dict[str, object] = {} if known is None else {"approval_id": known}
    if held:  # the broker tells the approvers a call waits (notifications, watchers)
        extra["held"] = True
    reply = await authoriser.broker.call(
        "hold", token=token, names=names, scheme=scheme, host=host, port=port,
        method=method, path=path, **extra,
    )  # fmt: skip
    approval_id = reply.get("approval_id")
    needed, have = reply.get("needed"), reply.get("have")
    count = (
        approvals_count(needed, have) if isinstance(needed, int) and isinstance(have, int) else ""
    )
    return (str(approval_id) if approval_id else None), str(reply.get("secret", "")), count


async def rejoined(authoriser: Authoriser, epoch: int) -> bool:
    """Whether the broker link is not the one of `epoch` any more (the broker went and came
    back): reconnects if it can; while the broker is away, False."""
    broker = authoriser.broker
    if not broker.connected:
        with contextlib.suppress(BrokerUnavailable):
            await broker.connect()
    return broker.connected and broker.connection_epoch != epoch


async def _outlast(
    runtime: ProxyRuntime, request: web.BaseRequest, approval_id: str, deadline: float,
    since: int,
) -> str:  # fmt: skip
    """Wait as ApprovalWaits.wait does, but give up ("gone") once the caller hung up:
    nothing would carry the answer, and the call would wait for nothing. A broker that
    restarted meanwhile knows neither the call nor what changed while it was down (a
    grant made then is in its file, and no push says so): "rejoined", ask it again."""
    loop = asyncio.get_running_loop()
    link = runtime.authoriser.broker.connection_epoch
    while True:
        left = deadline - loop.time()
        outcome = await runtime.waits.wait(approval_id, min(left, CALLER_CHECK), since)
        if outcome != "timeout" or left <= CALLER_CHECK:
            return outcome
        transport = request.transport
        if transport is None or transport.is_closing():
            return "gone"
        if await rejoined(runtime.authoriser, link):
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
        since = runtime.waits.changes
        # Asked again (a change, a restarted broker), the call keeps the id its human has.
        approval_id, secret, count = await ask_approval(
            authoriser, spec.token, names, destination, spec.method, path, approval_id,
            wait is not None,
        )  # fmt: skip
        if approval_id is not None:
            if wait is None:
                raise _required(approval_id, secret, shown, count=count)
            outcome = await _outlast(runtime, request, approval_id, deadline, since)
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
        _, _, grant = await authoriser.resolve(
            spec.token, names, host, target.scheme, target.port, spec.method, path
        )
        if isinstance(grant, Grant):
            return grant
        if grant.code != "approval_required" or wait is None or approval_id is None:
            raise grant
        if loop.time() >= deadline:
            why = f"no human approved within {wait}s: "
            raise _required(approval_id or "", secret, shown, why, count)
