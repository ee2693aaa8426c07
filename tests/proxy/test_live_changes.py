"""Changes made with the CLI are in force in a running proxy when the command returns.

Every check here is the first call after the command returned: no retry, no grace period.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.writer import AuditWriter
from blindkey.broker.protocol import PUSH_ID, encode, read_frame
from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.proxy.request.authorise import Grant
from blindkey.proxy.runtime import ProxyRuntime
from tests.conftest import ROOT
from tests.proxy.conftest import Env, open_env


async def cli(env: Env, *args: str, stdin: bytes = b"") -> str:
    """Run `blindkey ARGS` while this event loop keeps the proxy answering; its stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "blindkey.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, "BLINDKEY_HOME": str(env.paths.config_dir)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    assert process.returncode == 0, err
    assert err == b"", err
    return out.decode()


async def outcome(env: Env, headers: dict[str, str]) -> tuple[int, str | None]:
    status, _, body = await env.call(headers=headers)
    return status, orjson.loads(body)["error"] if status != 200 else None


async def test_allowlist_remove_and_add(env: Env) -> None:
    target = f"http://127.0.0.1:{env.upstream_port}"
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert await outcome(env, headers) == (200, None)
    for _ in range(3):
        await cli(env, "allowlist", "remove", target)
        assert await outcome(env, headers) == (403, "host_not_allowed")
        await cli(env, "allowlist", "add", target)
        assert await outcome(env, headers) == (200, None)


async def test_a_proxy_that_has_not_served_yet_uses_the_allowlist_of_its_first_call(
    home: Paths,
) -> None:
    def nothing_allowed(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"] = string_array([])

    # The quick start: the proxy has not reached its broker yet when the allowlist changes.
    async with open_env(home, configure=nothing_allowed) as env:
        await cli(env, "allowlist", "add", f"http://127.0.0.1:{env.upstream_port}")
        headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
        assert await outcome(env, headers) == (200, None)


async def test_a_new_agent_is_known_when_agent_add_returns(env: Env) -> None:
    assert await outcome(env, env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")) == (200, None)
    for name in ("second", "third", "fourth"):
        token = orjson.loads(await cli(env, "agent", "add", name, "--json"))["token"]
        headers = {**env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"), "X-AS-Agent-Token": token}
        assert await outcome(env, headers) == (200, None)


async def test_rotation_is_used_by_the_next_request(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert (await env.call(headers=headers))[0] == 200
    for new in ("rotated-value-0123456789", "rotated-again-9876543210"):
        await cli(env, "secrets", "set", "GITHUB_TOKEN", stdin=f"{new}\n".encode())
        status, response_headers, body = await env.call(headers=headers)
        assert status == 200
        expected = hashlib.sha256(f"Bearer {new}".encode()).hexdigest()
        assert response_headers["X-Echo-Authorization-Sha256"] == expected
        assert new.encode() not in body


async def test_a_new_secret_is_usable_when_secrets_set_returns(env: Env) -> None:
    assert (await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")))[0] == 200
    bound = f"http://127.0.0.1:{env.upstream_port}"  # a binding names scheme and port
    await cli(env, "secrets", "set", "NEW_KEY", "--host", bound, stdin=b"new-key-0123456789")
    status, response_headers, _ = await env.call(headers=env.headers(X_AS_Inject_Bearer="NEW_KEY"))
    assert status == 200
    expected = hashlib.sha256(b"Bearer new-key-0123456789").hexdigest()
    assert response_headers["X-Echo-Authorization-Sha256"] == expected


async def test_delete_is_in_force_when_the_command_returns(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="STRIPE_KEY")
    assert await outcome(env, headers) == (200, None)
    await cli(env, "secrets", "delete", "STRIPE_KEY")
    assert await outcome(env, headers) == (404, "unknown_secret")


async def test_revoke_with_the_cli(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert await outcome(env, headers) == (200, None)
    await cli(env, "agent", "revoke", "tester")
    assert await outcome(env, headers) == (401, "unauthenticated")


async def test_an_answer_overtaken_by_an_invalidation_is_not_kept(home: Paths) -> None:
    """The broker's answer and the push that outdates it can arrive in one read: the call
    waiting for the answer resumes after the push was handled (and acknowledged, so the
    CLI has returned). That answer serves its own call, which began before the change,
    and must not be cached for the calls after it."""
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    socket_path = directory / "b.sock"
    values = ["warm-up-value-0123", "value-before-the-change", "value-after-the-change"]
    resolves = 0
    finished = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A scripted broker: the second answer leaves in one write with an invalidation.
        nonlocal resolves
        current = ""
        try:
            while (frame := await read_frame(reader)) is not None:
                if frame["op"] == "resolve":
                    current = values[resolves]
                    resolves += 1
                    answer = {"id": frame["id"], "agent": "a", "env": "development"}
                    answer |= {"generation": resolves, "values": {"K": current}}
                    push = {"id": PUSH_ID, "event": "invalidate", "generation": resolves + 1}
                    overtaken = encode({**push, "ack": resolves}) if resolves == 2 else b""
                    writer.write(encode(answer) + overtaken)
                elif frame["op"] == "redaction_set":
                    answer = {"id": frame["id"], "generation": resolves, "values": {"K": current}}
                    writer.write(encode(answer))
        finally:
            writer.close()
            finished.set()

    def use_socket(document: Any) -> None:
        toml_table(document, "broker")["socket"] = str(socket_path)

    edit_config(home.config_file, home.lock_file, use_socket)
    server = await asyncio.start_unix_server(broker, socket_path)
    runtime = ProxyRuntime(home, load_settings(home.config_file), AuditWriter(home.audit_dir))
    try:
        for expected in values:
            runtime.authoriser.catch_up()  # as the pipeline does before every call
            _, _, grant = await runtime.authoriser.resolve("token", ["K"], "api.example.com")
            assert isinstance(grant, Grant)
            assert grant.values == {"K": expected}
        assert resolves == 3
    finally:
        await runtime.close()
        await finished.wait()
        server.close()
        await server.wait_closed()
        shutil.rmtree(directory, ignore_errors=True)
