"""Changes made with the CLI reach a running proxy within a second, with no restart."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

from tests.conftest import ROOT
from tests.proxy.conftest import Env, eventually_status


async def cli(env: Env, *args: str, stdin: bytes = b"") -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "blindkey.proxy",
        *args,
        cwd=ROOT,
        env={**os.environ, "BLINDKEY_HOME": str(env.paths.config_dir)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate(stdin)
    assert process.returncode == 0, err


async def test_allowlist_add_and_remove(env: Env) -> None:
    target = f"http://127.0.0.1:{env.upstream_port}"
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await cli(env, "allowlist", "remove", target)
    assert await eventually_status(env, 403, headers, code="host_not_allowed") < 1.0
    await cli(env, "allowlist", "add", target)
    assert await eventually_status(env, 200, headers) < 1.0


async def test_rotation_is_used_by_the_next_request(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    new = "rotated-value-0123456789"
    expected = hashlib.sha256(f"Bearer {new}".encode()).hexdigest()
    await cli(env, "secrets", "set", "GITHUB_TOKEN", stdin=f"{new}\n".encode())
    deadline = time.monotonic() + 1.0
    while True:
        status, response_headers, body = await env.call(headers=headers)
        assert status == 200
        if response_headers["X-Echo-Authorization-Sha256"] == expected:
            break
        assert time.monotonic() < deadline, "rotation not used within a second"
        await asyncio.sleep(0.02)
    assert new.encode() not in body


async def test_delete_takes_effect_within_a_second(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="STRIPE_KEY")
    assert (await env.call(headers=headers))[0] == 200
    await cli(env, "secrets", "delete", "STRIPE_KEY")
    assert await eventually_status(env, 404, headers, code="unknown_secret") < 1.0


async def test_revoke_with_the_cli(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await cli(env, "agent", "revoke", "tester")
    assert await eventually_status(env, 401, headers) < 1.0
