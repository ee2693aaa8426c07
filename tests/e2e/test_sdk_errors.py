"""A refusal an SDK can show: on /r/NAME routes blindkey's error is shaped the way vendors'
SDKs read theirs, so the exception the agent's code catches (and the model reads in its tool
output) carries blindkey's message: the real openai and anthropic clients for Python, and
the openai package for Node from npm."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.e2e.test_sdk_routes import OPENAI_KEY, blindkey
from tests.e2e.test_sdk_routes import fake_api as fake_api  # the fixture, used by name
from tests.proxy.conftest import Env, open_env, set_secret_policy

NODE_CLIENT = """
const OpenAI = require("openai");
const [baseURL, apiKey] = process.argv.slice(2);
new OpenAI({ baseURL, apiKey, maxRetries: 0 })
  .chat.completions.create({ model: "gpt-test", messages: [{ role: "user", content: "hi" }] })
  .then(() => console.log(JSON.stringify({ ok: true })))
  .catch((e) =>
    console.log(JSON.stringify({ status: e.status, code: e.code, message: e.message })));
"""


@pytest.fixture(scope="session")
def node_openai(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The openai package for Node, from the npm registry, in a folder of this run."""
    folder = tmp_path_factory.mktemp("node-openai")
    npm = shutil.which("npm")
    assert npm is not None, "npm comes with Debian's nodejs (.ci/run)"
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "openai@4"],
        cwd=folder, check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    (folder / "client.js").write_text(NODE_CLIENT)
    return folder


async def _gated_route(env: Env, api: str) -> str:
    """A route whose secret needs a grant nobody gave: every call is approval_required."""
    said = await blindkey(env, "route", "add", "openai", "--to", api, "--bearer", "OPENAI_API_KEY")
    assert "allowlisted" in said
    set_secret_policy(env.paths, "OPENAI_API_KEY", tier="controlled", hosts=[api])
    base = f"http://127.0.0.1:{env.server.port}/r/openai/v1"
    # The broker takes the edited file in on its own: wait until it gates the route.
    headers = {"Authorization": f"Bearer {env.token}"}
    for _ in range(500):
        async with env.session.post(f"{base}/chat/completions", headers=headers, json={}) as r:
            if r.status == 403:
                return base
        await asyncio.sleep(0.02)
    raise AssertionError("the route was never gated")


@pytest.mark.timeout(120)
async def test_sdks_show_blindkeys_message_for_a_refused_route_call(
    home: Paths, fake_api: tuple[web.Application, int], node_openai: Path
) -> None:
    _, api_port = fake_api
    FileVault(home).set("development", "OPENAI_API_KEY", OPENAI_KEY)
    api = f"http://127.0.0.1:{api_port}"
    asked: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    async with open_env(home) as env:
        base = await _gated_route(env, api)
        async with env.session.post(
            f"{base}/chat/completions", headers={"Authorization": f"Bearer {env.token}"}
        ) as response:
            shaped = orjson.loads(await response.read())
        assert shaped["type"] == "error" and shaped["error"]["type"] == "approval_required"
        assert shaped["error"]["approval_id"].startswith("ap_")
        assert shaped["error"]["request_id"] == shaped["request_id"]

        gpt = openai.AsyncOpenAI(base_url=base, api_key=env.token, max_retries=0)
        try:
            with pytest.raises(openai.PermissionDeniedError) as refused:
                await gpt.chat.completions.create(model="gpt-test", messages=asked)
        finally:
            await gpt.close()
        assert "blindkey approve --request ap_" in str(refused.value)
        assert refused.value.code == "approval_required"

        claude = anthropic.AsyncAnthropic(
            base_url=base.removesuffix("/v1"), api_key="not-a-token", max_retries=0
        )
        try:
            with pytest.raises(anthropic.AuthenticationError) as unknown:
                await claude.messages.create(
                    model="claude-test", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                )
        finally:
            await claude.close()
        assert "unknown or revoked agent token" in str(unknown.value)

        # Run beside this event loop, which serves the proxy the client calls.
        node = await asyncio.create_subprocess_exec(
            "node", "client.js", base, env.token, cwd=node_openai, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(node.communicate(), 60)
        caught = json.loads(out.decode().strip().splitlines()[-1])
        assert caught["status"] == 403 and caught["code"] == "approval_required"
        assert "blindkey approve --request ap_" in caught["message"]
