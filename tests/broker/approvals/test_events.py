"""The approvals event stream: a real proxy and its broker subprocess, a watcher on the
broker's socket (`approvals.watch`), codes from pyotp. New, held, approved, denied and
expired requests and lockouts are told as they happen, and never with a value."""

from __future__ import annotations

import asyncio
import json

import orjson

from blindkey.broker.approvals.events import ApprovalEvents
from blindkey.broker.approvals.pending import PENDING_TTL, PendingRequests
from blindkey.broker.protocol import encode, read_frame
from blindkey.broker.sockets import ConnectionLimits
from blindkey.config.paths import Paths
from tests.approvals_helpers import Approver, acli, enrol
from tests.broker.approvals.watch_helpers import EventWatch, eventually
from tests.broker.conftest import Brokers
from tests.proxy.conftest import BASIC, OTHER, SECRET, Env, set_secret_policy, status_after_reload

REQUEST_FIELDS = {
    "event", "ts", "approval_id", "agent", "secret", "env", "method", "scheme", "host", "port",
    "path", "covers", "age_s", "held",
}  # fmt: skip


async def _gated(env: Env) -> tuple[Approver, dict[str, str]]:
    approver = await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    headers = env.headers("/echo/x", X_AS_Inject_Bearer="GITHUB_TOKEN")
    await status_after_reload(env, 403, headers, code="approval_required")
    return approver, headers


def _no_value(watch: EventWatch) -> None:
    for frame in watch.frames:
        for value in (SECRET, OTHER, BASIC):
            assert value.encode() not in frame


async def test_new_held_and_approved_requests_are_streamed(env: Env) -> None:
    approver, headers = await _gated(env)
    code, out, _ = await acli("approvals", "list", "--json")
    (listed,) = json.loads(out)
    watch = await EventWatch.open(env.paths)
    # The snapshot is `approvals list`: nothing falls between it and the first event.
    assert [p["id"] for p in watch.snapshot] == [listed["id"]]
    assert watch.snapshot[0]["held"] is False

    # Another call of the same agent, to another path: a new request.
    other = env.headers("/echo/y", X_AS_Inject_Bearer="GITHUB_TOKEN")
    status, _, body = await env.call(headers=other)
    assert status == 403
    event = await watch.next()
    assert set(event) == REQUEST_FIELDS
    assert event["event"] == "pending" and event["approval_id"] == orjson.loads(body)["approval_id"]
    assert (event["agent"], event["secret"], event["method"], event["path"], event["held"]) == (
        "tester", "GITHUB_TOKEN", "GET", "/echo/y", False,
    )  # fmt: skip
    assert event["covers"] == f"http://127.0.0.1:{env.upstream_port}"

    # The first call again, now waiting: "held", once, for the request it already had.
    headers["X-AS-Wait-Approval"] = "30"
    held = asyncio.create_task(env.call(headers=headers), name="held-call")
    event = await watch.next()
    assert (event["event"], event["approval_id"], event["held"]) == ("held", listed["id"], True)

    code, _, err = await acli("approve", "--request", listed["id"], "--code", approver.code())
    assert code == 0, err
    event = await watch.next()
    assert (event["event"], event["approval_id"], event["held"]) == ("approved", listed["id"], True)
    status, _, _ = await asyncio.wait_for(held, 5)
    assert status == 200
    _no_value(watch)
    watch.close()


async def test_denial_and_lockout_are_streamed(env: Env) -> None:
    await _gated(env)
    watch = await EventWatch.open(env.paths)
    (pending,) = watch.snapshot
    code, _, err = await acli("deny", "--request", pending["id"])
    assert code == 0, err
    event = await watch.next()
    assert (event["event"], event["approval_id"], event["secret"]) == (
        "denied", pending["id"], "GITHUB_TOKEN",
    )  # fmt: skip
    for _ in range(5):
        assert (await acli("approve", "GITHUB_TOKEN", "--code", "000000"))[0] == 4
    event = await watch.next()
    assert set(event) == {"event", "ts", "approver", "until", "source"}
    assert (event["event"], event["approver"]) == ("locked_out", "default")
    _no_value(watch)
    watch.close()


def test_requests_nobody_answered_expire_on_the_stream() -> None:
    now = [1000.0]
    events = ApprovalEvents(lambda: now[0])
    seen: list[dict[str, object]] = []
    events.subscribe(seen.append)
    requests = PendingRequests(lambda: now[0], None, events)
    target = ("https", "api.github.com", 443)
    first = requests.add("builder", "GH", "development", "GET", target, "/user")
    assert requests.add("builder", "GH", "development", "GET", target, "/user", held=True) == first
    # A second waiting call on the same request is no news.
    requests.add("builder", "GH", "development", "GET", target, "/user", held=True)
    now[0] += PENDING_TTL
    assert requests.listed() == []
    assert [(e["event"], e["approval_id"], e["held"]) for e in seen] == [
        ("pending", first.id, False), ("held", first.id, True), ("expired", first.id, True),
    ]  # fmt: skip
    assert seen[-1]["age_s"] == int(PENDING_TTL)


def test_a_failing_listener_is_dropped_and_the_change_goes_on() -> None:
    events = ApprovalEvents(lambda: 0.0)

    def broken(event: dict[str, object]) -> None:
        raise RuntimeError("listener bug")

    seen: list[dict[str, object]] = []
    events.subscribe(broken)
    events.subscribe(seen.append)
    requests = PendingRequests(lambda: 0.0, None, events)
    requests.add("builder", "GH", "development", "GET", ("https", "h.io", 443), "/")
    assert len(seen) == 1 and events.subscribers == 1


async def test_a_watcher_outlives_the_idle_sweep_and_is_forgotten_when_gone(
    home: Paths, brokers: Brokers
) -> None:
    server = await brokers.start(home)
    server.limits = ConnectionLimits(idle_timeout=0.05)
    reader, writer = await asyncio.open_unix_connection(server.socket_path)
    writer.write(encode({"id": 7, "op": "approvals.watch"}))
    assert (await read_frame(reader) or {}).get("watching") is True
    idle_reader, idle_writer = await asyncio.open_unix_connection(server.socket_path)
    idle_writer.write(encode({"id": 1, "op": "ping"}))
    assert await read_frame(idle_reader) is not None
    # The sweep closes the quiet client that waits for nothing...
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""
    idle_writer.close()
    # ... and not the watcher: the next request still reaches it.
    pending = server.state.approvals.pending
    pending.add("builder", "GH", "development", "GET", ("https", "h.io", 443), "/")
    frame = await asyncio.wait_for(read_frame(reader), 5)
    assert frame is not None and frame["event"]["event"] == "pending"
    writer.close()
    await eventually(lambda: not server.clients)
    pending.add("builder", "GH", "development", "GET", ("https", "h.io", 443), "/other")
    assert server.state.approvals.events.subscribers == 0
