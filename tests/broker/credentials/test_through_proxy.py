"""oauth2 through the real proxy and its broker subprocess: the upstream gets the access
token, the agent gets it back only redacted, and a token endpoint that refuses is a 502 that
says why. The refresh token appears nowhere the agent or the records can see."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from blindkey.broker.vault import FileVault
from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.broker.credentials.conftest import CLIENT_ID, FIRST_REFRESH, TokenServer
from tests.broker.credentials.helpers import everything_written
from tests.conftest import RunCli
from tests.proxy.conftest import open_env
from tests.upstream import HITS


async def test_access_token_injected_and_redacted(
    home: Paths, token_server: TokenServer, run_cli: RunCli
) -> None:
    def configure(document: Any) -> None:
        allow = toml_table(document, "allowlist")
        allow["hosts"] = string_array([*allow["hosts"], f"http://127.0.0.1:{token_server.port}"])
        section = toml_table(document, "secrets", "GOOGLE")
        section["kind"] = "oauth2"
        section["token_url"] = token_server.url
        section["client_id"] = CLIENT_ID

    FileVault(home).set("development", "GOOGLE", FIRST_REFRESH)
    async with open_env(home, configure) as env:
        status, _, body = await env.call(
            "GET", headers=env.headers("/reflect", X_AS_Inject_Bearer="GOOGLE")
        )
        assert status == 200, body
        (access,) = token_server.issued
        assert env.upstream.app[HITS][-1][2]["Authorization"] == f"Bearer {access}"
        assert access.encode() not in body and access.encode().hex().encode() not in body
        assert b"[REDACTED:GOOGLE]" in body
        # The endpoint now refuses: the next token cannot be had, and the agent hears why.
        token_server.fault = "400"
        # A human stores a new refresh token: in force (the kept token dropped) on return.
        done = await asyncio.to_thread(
            run_cli, "secrets", "set", "GOOGLE", input="another-refresh-token-99\n"
        )
        assert done.returncode == 0, done.stderr
        status, _, body = await env.call(
            "GET", headers=env.headers("/echo", X_AS_Inject_Bearer="GOOGLE")
        )
        answer = orjson.loads(body)
        assert (status, answer["error"]) == (502, "upstream_error")
        assert "token endpoint 127.0.0.1 of GOOGLE answered 400 invalid_grant" in answer["message"]
    written = everything_written(home)
    for material in (FIRST_REFRESH, token_server.newest_refresh(), "another-refresh-token-99"):
        assert material.encode() not in written + body
