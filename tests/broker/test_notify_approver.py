"""Approvers are told by webhook: a real local receiver, a real proxy and its broker
subprocess ([notify] webhook). The body is exactly the documented fields, a 500 is tried
again, a receiver that gives up is on the record, and one that hangs slows no call."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.approvals_helpers import acli, audit_events, enrol
from tests.broker.approvals.watch_helpers import eventually
from tests.proxy.conftest import (
    BASIC,
    OTHER,
    SECRET,
    Env,
    open_env,
    set_secret_policy,
    status_after_reload,
)

FIELDS = ("event", "approval_id", "agent", "secret", "host", "method", "path", "approve")


class Receiver:
    """A webhook receiver on loopback: answers each POST with the next scripted status
    (200 once the script is spent), or holds it until released when `hang` is set."""

    def __init__(self) -> None:
        self.posts: asyncio.Queue[tuple[dict[str, Any], str]] = asyncio.Queue()
        self.raw: list[bytes] = []
        self.statuses: list[int] = []
        self.hang = False
        self.hanging = 0
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append(body)
        await self.posts.put((orjson.loads(body), request.content_type))
        if self.hang:
            self.hanging += 1
            await self.release.wait()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def next(self) -> dict[str, Any]:
        body, content_type = await asyncio.wait_for(self.posts.get(), 15)
        assert content_type == "application/json"
        return body


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    # A token in the path, as Slack and ntfy URLs have: never written anywhere.
    app.router.add_post("/hooks/T0KEN-in-the-path", found.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    found.url = f"http://127.0.0.1:{port}/hooks/T0KEN-in-the-path"
    try:
        yield found
    finally:
        found.release.set()
        await runner.cleanup()


def _notify(url: str, style: str = "json") -> Callable[[Any], None]:
    def change(document: Any) -> None:
        table = toml_table(document, "notify")
        table["desktop"] = False
        table["webhook"] = url
        table["format"] = style

    return change


async def _gate(env: Env) -> dict[str, str]:
    await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    await env.server.reload()
    return env.headers("/repos/x", X_AS_Inject_Bearer="GITHUB_TOKEN")


async def _ask(env: Env, path: str, **extra: str) -> str:
    """A gated call to `path`: its approval id."""
    headers = env.headers(path, X_AS_Inject_Bearer="GITHUB_TOKEN", **extra)
    status, _, body = await env.call(headers=headers)
    assert status == 403, body
    return str(orjson.loads(body)["approval_id"])


async def test_webhook_body_is_exactly_the_documented_fields(
    home: Paths, receiver: Receiver
) -> None:
    async with open_env(home, configure=_notify(receiver.url)) as env:
        headers = await _gate(env)
        await status_after_reload(env, 403, headers, code="approval_required")
        body = await receiver.next()
        approval_id = body["approval_id"]
        assert body == {
            "event": "pending", "approval_id": approval_id, "agent": "tester",
            "secret": "GITHUB_TOKEN", "host": "127.0.0.1", "method": "GET", "path": "/repos/x",
            "approve": f"blindkey approve --request {approval_id}",
        }  # fmt: skip
        # The same call, now waiting: "held", for the same request.
        held = asyncio.create_task(env.call(headers={**headers, "X-AS-Wait-Approval": "1"}))
        body = await receiver.next()
        assert (body["event"], body["approval_id"]) == ("held", approval_id)
        await held
        for _ in range(5):
            assert (await acli("approve", "GITHUB_TOKEN", "--code", "000000"))[0] == 4
        body = await receiver.next()
        assert body == {name: None for name in FIELDS} | {"event": "locked_out"}
    for raw in receiver.raw:
        assert all(value.encode() not in raw for value in (SECRET, OTHER, BASIC))
    assert not audit_events(home.audit_dir, "notify_failed")


async def test_slack_format_is_one_text(home: Paths, receiver: Receiver) -> None:
    async with open_env(home, configure=_notify(receiver.url, "slack")) as env:
        await _gate(env)
        approval_id = await _ask(env, "/repos/y")
        body = await receiver.next()
        assert body == {
            "text": "blindkey: agent tester asks for GITHUB_TOKEN\nGET 127.0.0.1/repos/y\n"
            f"approve: blindkey approve --request {approval_id}"
        }


async def test_webhook_is_tried_again_on_500_and_a_loss_is_recorded(
    home: Paths, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503, 200, 500, 500, 500, 404]
    async with open_env(home, configure=_notify(receiver.url)) as env:
        await _gate(env)
        first = await _ask(env, "/repos/1")
        bodies = [await receiver.next() for _ in range(3)]
        assert [b["approval_id"] for b in bodies] == [first] * 3  # the same notice, 3 times
        second = await _ask(env, "/repos/2")
        assert [(await receiver.next())["approval_id"] for _ in range(3)] == [second] * 3
        # A 4xx is the receiver's refusal: not tried again.
        third = await _ask(env, "/repos/3")
        assert (await receiver.next())["approval_id"] == third
        await eventually(lambda: len(audit_events(home.audit_dir, "notify_failed")) == 2, 15)
    failed = audit_events(home.audit_dir, "notify_failed")
    assert [(r["approval_id"], r["attempts"], r["channel"], r["notice"]) for r in failed] == [
        (second, 3, "webhook", "pending"), (third, 1, "webhook", "pending"),
    ]  # fmt: skip
    origin = receiver.url.split("/hooks")[0]
    assert failed[0]["reason"] == f"{origin}: answered 500"
    assert failed[1]["reason"] == f"{origin}: refused: answered 404"
    assert receiver.posts.empty()
    for path in home.audit_dir.glob("*.jsonl*"):
        assert b"T0KEN" not in path.read_bytes()


async def _times(env: Env, prefix: str, count: int) -> list[float]:
    """How long each of `count` gated calls (each a new request, so a new notice) took."""
    took = []
    for n in range(count):
        started = time.perf_counter()
        await _ask(env, f"/{prefix}/{n}")
        took.append(time.perf_counter() - started)
    return took


async def test_a_hanging_receiver_slows_no_call(home: Paths, receiver: Receiver) -> None:
    async with open_env(home, configure=_notify(receiver.url)) as env:
        await _gate(env)
        # An agent may have 50 requests waiting: 3 + 20 + 1 + 20 of them.
        await _times(env, "warm", 3)
        for _ in range(3):
            await receiver.next()
        answered = await _times(env, "answered", 20)
        for _ in range(20):
            await receiver.next()
        receiver.hang = True
        await _ask(env, "/first-hung")
        await receiver.next()
        await eventually(lambda: receiver.hanging >= 1)
        hung = await _times(env, "hung", 20)
        # Every one of these calls was answered while the receiver held its notices.
        assert not receiver.release.is_set() and receiver.hanging >= 1
        receiver.release.set()
    fast, slow = statistics.median(answered), statistics.median(hung)
    print(f"median gated call: receiver answering {fast * 1e3:.2f} ms, hanging {slow * 1e3:.2f} ms")
    assert slow < fast * 2 + 0.005, (fast, slow)
    assert max(hung) < 0.5
