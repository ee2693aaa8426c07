"""A proxy whose broker is killed (SIGKILL) and restarted on an approvals file with one
flipped byte, after the secret's tier was lowered by hand in config.toml: the call is
refused, /health and `proxy status` say why, and restoring the file brings it back by
itself. A real proxy with its supervised broker subprocess."""

from __future__ import annotations

import asyncio
import os

import orjson

from blindkey.broker.approvals.store import approvals_file
from blindkey.proxy import lifecycle
from tests.approvals_helpers import enrol
from tests.proxy.broker_kill import killed, restarted
from tests.proxy.conftest import Env, eventually_status, set_secret_policy, status_after_reload


async def _health(env: Env) -> int:
    async with env.session.get(f"http://127.0.0.1:{env.server.port}/health") as response:
        return response.status


def _status(env: Env) -> dict[str, object]:
    """What `proxy status --json` shows (this proxy runs in-process, without the pid lock
    `proxy status` finds a detached one by)."""
    current = lifecycle.Running(os.getpid(), orjson.loads(env.paths.status_file.read_bytes()))
    return lifecycle.describe(current, lifecycle.ask_broker(env.paths))


async def test_a_flipped_byte_after_a_broker_restart_releases_nothing(env: Env) -> None:
    await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await status_after_reload(env, 403, headers, code="approval_required")
    store = approvals_file(env.paths)
    good = store.read_bytes()
    blob = bytearray(good)
    blob[-5] ^= 0x01
    store.write_bytes(bytes(blob))
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="open")
    await restarted(env.server, await killed(env.server))

    await eventually_status(env, 503, headers, timeout=5, code="broker_unavailable")
    status, _, body = await env.call(headers=headers)
    assert status == 503 and b"approvals file cannot be read" in body
    assert await _health(env) == 503
    info = await asyncio.to_thread(_status, env)
    assert info["healthy"] is False
    assert str(store) in str(info["approvals_error"])

    store.write_bytes(good)
    # The floor an approver set stands; no grant yet: refused for want of one.
    await eventually_status(env, 403, headers, timeout=5, code="approval_required")
    assert await _health(env) == 200
    info = await asyncio.to_thread(_status, env)
    assert info["approvals_error"] is None and info["healthy"] is True
