"""X-AS-Wait-Approval: a call held until a human approves, denies, or the time runs out;
held calls pin no worker, are forgotten when answered, count toward the connection limit
and do not outlive shutdown. A real broker subprocess; codes from pyotp."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.approval_wait import wait_seconds
from blindkey.proxy.request.authorise import Authoriser
from tests.approvals_helpers import Approver, acli, enrol
from tests.proxy.conftest import Env, eventually_status, open_env, set_secret_policy


async def _gated(env: Env) -> tuple[Approver, dict[str, str]]:
    approver = await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await eventually_status(env, 403, headers, code="approval_required")
    return approver, headers


async def _pending_id(env: Env, count: int = 1) -> list[str]:
    """The ids of held calls once the broker lists them."""
    deadline = time.monotonic() + 5
    while True:
        code, out, err = await acli("approvals", "list", "--json")
        assert code == 0, err
        ids = [p["id"] for p in json.loads(out)]
        if len(ids) >= count:
            return ids
        assert time.monotonic() < deadline, "the held call was never listed"
        await asyncio.sleep(0.05)


def _held(env: Env) -> int:
    authoriser: Authoriser = env.server.runtime.authoriser
    return authoriser.held


async def test_held_call_goes_upstream_when_approved(env: Env) -> None:
    approver, headers = await _gated(env)
    headers["X-AS-Wait-Approval"] = "30"
    held = asyncio.create_task(env.call(headers=headers), name="held-call")
    (approval_id,) = await _pending_id(env)
    assert not held.done() and _held(env) == 1
    started = time.monotonic()
    code, _, err = await acli("approve", "--request", approval_id, "--code", approver.code())
    assert code == 0, err
    status, _, body = await asyncio.wait_for(held, 5)
    assert status == 200, body
    assert time.monotonic() - started < 2
    assert _held(env) == 0


async def test_held_call_fails_denied_on_deny(env: Env) -> None:
    _, headers = await _gated(env)
    headers["X-AS-Wait-Approval"] = "30"
    held = asyncio.create_task(env.call(headers=headers), name="held-call")
    (approval_id,) = await _pending_id(env)
    code, out, err = await acli("deny", "--request", approval_id)
    assert code == 0, err
    status, _, body = await asyncio.wait_for(held, 5)
    error = orjson.loads(body)
    assert (status, error["error"], error["approval_id"]) == (403, "approval_denied", approval_id)
    assert _held(env) == 0
    # Denied is final for that request: it is no longer listed, and cannot be approved.
    code, out, _ = await acli("approvals", "list", "--json")
    assert json.loads(out) == []


async def test_held_call_times_out_approval_required(env: Env) -> None:
    _, headers = await _gated(env)
    headers["X-AS-Wait-Approval"] = "1"
    started = time.monotonic()
    calls = [env.call(headers=headers) for _ in range(20)]
    answers = await asyncio.gather(*calls)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3
    for status, _, body in answers:
        error = orjson.loads(body)
        assert status == 403 and error["error"] == "approval_required"
        assert "no human approved within 1s" in error["message"]
        assert error["approval_id"].startswith("ap_")
    # Nothing kept for calls that were answered: 20 timed out, none still held.
    assert _held(env) == 0


@pytest.mark.parametrize("value", ["0", "301", "abc", "1.5", "-1", ""])
async def test_bad_wait_header_is_refused(env: Env, value: str) -> None:
    _, headers = await _gated(env)
    headers["X-AS-Wait-Approval"] = value
    status, _, body = await env.call(headers=headers)
    error = orjson.loads(body)
    assert status == 400 and error["error"] == "bad_request"
    assert "X-AS-Wait-Approval" in error["message"]
    assert _held(env) == 0


def _two_connections(document: Any) -> None:
    toml_table(document, "limits")["max_connections"] = 2
    toml_table(document, "limits")["drain_timeout"] = "1s"


async def test_held_calls_count_toward_the_connection_limit(home: Paths) -> None:
    async with open_env(home, configure=_two_connections) as env:
        _, headers = await _gated(env)
        headers["X-AS-Wait-Approval"] = "30"
        await env.session.close()  # its idle connection would be evicted to make room
        # Two connections of their own, each holding a call.
        sessions = [aiohttp.ClientSession() for _ in range(2)]
        try:
            held = [
                asyncio.create_task(s.get(env.url, headers=headers), name="held") for s in sessions
            ]
            await _pending_id(env)
            deadline = time.monotonic() + 5
            while _held(env) < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            # A third caller finds no room: both connections are busy, none idle.
            async with aiohttp.ClientSession() as third:
                with pytest.raises(aiohttp.ClientError):
                    await third.get(env.url, headers=env.headers(X_AS_Inject_Bearer="STRIPE_KEY"))
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
        finally:
            for session in sessions:
                await session.close()


def _long_drain(document: Any) -> None:
    toml_table(document, "limits")["drain_timeout"] = "10s"


async def test_held_call_does_not_outlive_shutdown(home: Paths) -> None:
    env_cm = open_env(home, configure=_long_drain)
    env = await env_cm.__aenter__()
    held: asyncio.Task[tuple[int, dict[str, str], bytes]] | None = None
    stopping: asyncio.Task[None] | None = None
    try:
        _, headers = await _gated(env)
        headers["X-AS-Wait-Approval"] = "300"
        held = asyncio.create_task(env.call(headers=headers), name="held-call")
        await _pending_id(env)
        started = time.monotonic()
        stopping = asyncio.create_task(env.server.stop(), name="stop")
        # Answered at the start of the drain, not cut at its end (10 s here) and never
        # left waiting its 300 s: a held call waits for a human, who will not come now.
        done, _ = await asyncio.wait([held], timeout=3)
        assert done, "the held call held the shutdown up"
        status, _, body = held.result()
        assert status == 403
        assert orjson.loads(body)["error"] == "approval_required"
        await stopping
        assert time.monotonic() - started < 5
        assert _held(env) == 0
    finally:
        if held is not None:
            held.cancel()
        if stopping is not None:
            await asyncio.gather(stopping, return_exceptions=True)
        env.server.stop = _noop  # type: ignore[method-assign]
        await env_cm.__aexit__(None, None, None)


async def _noop() -> None:
    return None


async def test_a_caller_that_hangs_up_is_not_held_for(env: Env) -> None:
    _, headers = await _gated(env)
    headers["X-AS-Wait-Approval"] = "300"
    request = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(f"GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\n{request}\r\n".encode())
    await writer.drain()
    deadline = time.monotonic() + 5
    while _held(env) != 1:
        assert time.monotonic() < deadline, "the call was never held"
        await asyncio.sleep(0.02)
    writer.close()
    await writer.wait_closed()
    # Forgotten within about a second (it looks every second), not after 300 s.
    while _held(env) != 0:
        assert time.monotonic() < deadline + 2, "a call is still held for a caller that left"
        await asyncio.sleep(0.05)
    del reader


@given(st.text(max_size=12))
def test_wait_header_parser_accepts_whole_seconds_1_to_300_only(text: str) -> None:
    stripped = text.strip()
    valid = stripped.isascii() and stripped.isdigit() and 1 <= int(stripped) <= 300
    try:
        seconds = wait_seconds(text)
    except ProxyError as exc:
        assert not valid and exc.code == "bad_request"
    else:
        assert valid and seconds == int(stripped)
