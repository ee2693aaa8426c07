"""Values of PEM-key size: added, used and removed while another agent's calls go on, and a
value too long to redact refused when it is stored, never discovered by a request."""

from __future__ import annotations

import asyncio
import base64
import random
from typing import Any

import orjson
import pytest

from blindkey.config.edit import toml_table
from blindkey.config.model import MAX_VALUE_BYTES
from blindkey.config.paths import Paths
from tests.conftest import RunCli
from tests.proxy.conftest import Env, open_env


def pem(size: int) -> str:
    body = base64.b64encode(random.Random(size).randbytes(size * 3 // 4)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN PRIVATE KEY-----\n{lines}\n-----END PRIVATE KEY-----"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("size", [16 * 1024, 64 * 1000])
async def test_a_pem_key_is_added_used_and_removed_while_others_keep_working(
    home: Paths, run_cli: RunCli, size: int
) -> None:
    # A JSON body carrying a 64 KB key is over the test default of 64 KiB for buffered bodies.
    async with open_env(home, roomy_bodies) as env:
        await exchange(env, run_cli, size)


def roomy_bodies(document: Any) -> None:
    toml_table(document, "limits")["max_request_body"] = "1MiB"


async def exchange(env: Env, run_cli: RunCli, size: int) -> None:
    others: list[int] = []
    done = asyncio.Event()

    async def other_agent() -> None:
        headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
        while not done.is_set():
            others.append((await env.call(headers=headers))[0])

    running = asyncio.create_task(other_agent(), name="other-agent")
    value = pem(size)
    try:
        stored = await asyncio.to_thread(run_cli, "secrets", "set", "PEM", input=value)
        assert stored.returncode == 0, stored.stderr
        headers = env.headers(X_AS_Inject_Body_key="PEM", **{"Content-Type": "application/json"})
        status, _, body = await env.call("POST", headers=headers, data=b"{}")
        assert status == 200, body
        echoed = orjson.loads(body)["body"]
        assert orjson.loads(echoed) == {"key": "[REDACTED:PEM]"}
        assert value[100:200] not in body.decode()
        removed = await asyncio.to_thread(run_cli, "secrets", "delete", "PEM")
        assert removed.returncode == 0, removed.stderr
    finally:
        done.set()
        await running
    assert others and set(others) == {200}


def test_a_value_too_long_to_redact_is_refused_when_stored(run_cli: RunCli) -> None:
    value = "k" * (MAX_VALUE_BYTES + 1)
    result = run_cli("secrets", "set", "HUGE", input=value)
    assert result.returncode == 1
    assert f"up to {MAX_VALUE_BYTES} bytes" in result.stderr and "kkkk" not in result.stderr
    assert "HUGE" not in run_cli("secrets", "list", "--json").stdout
