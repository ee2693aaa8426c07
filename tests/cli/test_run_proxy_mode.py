"""`blindkey run` as a user runs it: a detached proxy, a TLS upstream (trustme), and real
clients — curl, requests, httpx, the openai SDK — that are told nothing but what `run` puts
in their environment. Each upstream sees the value; each client sees only the placeholder
and [REDACTED:GITHUB_TOKEN]; the run's own agent token is revoked when the command ends."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web

from blindkey.broker.agents import AgentStore
from blindkey.broker.vault import FileVault
from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import SECRET
from tests.upstream import HITS, start_tls_upstream

# A loopback address that is not in the NO_PROXY `run` sets (localhost, 127.0.0.1, ::1):
# programs send their calls for it through the proxy, as for any API's host.
HOST = "127.0.0.2"


@dataclass
class Setup:
    home: Paths
    upstream: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}/echo"


async def blindkey(
    home: Paths, *args: str, extra: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """`blindkey ARGS` in a subprocess; `extra`: more of its environment (what CMD reads)."""
    environment = {**os.environ, **(extra or {}), "BLINDKEY_HOME": str(home.config_dir)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", *args, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def upstream_tls(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A trustme CA's certificate file (the proxy's `ca_file`) and a server context for HOST."""
    ca = trustme.CA()
    upstream_ca = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(upstream_ca))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    return upstream_ca, context


@asynccontextmanager
async def proxy_for(home: Paths, secret: str, port: int, upstream_ca: Path) -> AsyncIterator[None]:
    """A detached proxy that trusts `upstream_ca`, with `secret` bound to HOST:`port`."""
    origin = f"https://{HOST}:{port}"

    def configure(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"] = string_array([origin])
        toml_table(document, "proxy")["ca_file"] = str(upstream_ca)
        toml_table(document, "secrets", secret)["hosts"] = string_array([origin])

    edit_config(home.config_file, home.lock_file, configure)
    FileVault(home).set("development", secret, SECRET)
    status, _, err = await blindkey(home, "proxy", "start", "--port", "0")
    assert status == 0, err
    try:
        yield
    finally:
        await blindkey(home, "proxy", "stop")


@pytest.fixture
async def setup(home: Paths, tmp_path: Path) -> AsyncIterator[Setup]:
    upstream_ca, context = upstream_tls(tmp_path)
    upstream, port = await start_tls_upstream(context, HOST)
    try:
        async with proxy_for(home, "GITHUB_TOKEN", port, upstream_ca):
            yield Setup(home, upstream, port)
    finally:
        await upstream.cleanup()


CLIENTS = {
    "curl": ["sh", "-c", 'curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" "$URL"'],
    "requests": [sys.executable, "-c", "import os, requests; print(requests.get(os.environ['URL'],"
                 " headers={'Authorization': 'Bearer ' + os.environ['GITHUB_TOKEN']}).text)"],
    "httpx": [sys.executable, "-c", "import os, httpx; print(httpx.get(os.environ['URL'],"
              " headers={'Authorization': 'Bearer ' + os.environ['GITHUB_TOKEN']}).text)"],
}  # fmt: skip


@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_a_client_holding_a_placeholder_reaches_the_value(setup: Setup, client: str) -> None:
    status, out, err = await blindkey(
        setup.home, "run", "--agent", "runner", "--secret", "GITHUB_TOKEN", "--",
        *CLIENTS[client], extra={"URL": setup.url},
    )  # fmt: skip
    assert status == 0, err
    _, _, headers = setup.upstream.app[HITS][-1]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    echoed = orjson.loads(out)
    authorization = dict(echoed["headers"])["Authorization"]
    assert authorization == "Bearer [REDACTED:GITHUB_TOKEN]" and SECRET not in out
    agents = AgentStore(setup.home.agents_file, setup.home.lock_file).load()
    assert agents["runner"].revoked is not None  # the run's token died with the run


async def test_the_openai_sdk_with_only_its_key_set(setup: Setup) -> None:
    """The SDK is given the placeholder as api_key and a base_url of the TLS upstream; the
    proxy and CA come from the environment `run` made (httpx reads them)."""
    code = (
        "import os, openai\n"
        "client = openai.OpenAI(api_key=os.environ['OPENAI_API_KEY'],"
        " base_url=os.environ['BASE'] + '/v1', max_retries=0)\n"
        "print(client.models.with_raw_response.list().http_request.headers['authorization'])\n"
    )
    status, out, err = await blindkey(
        setup.home, "run", "--agent", "sdk", "--secret", "GITHUB_TOKEN=OPENAI_API_KEY",
        "--", sys.executable, "-c", code, extra={"BASE": f"https://{HOST}:{setup.port}"},
    )  # fmt: skip
    assert status == 0, err
    assert out.strip().startswith("Bearer bk_")  # what the SDK itself held
    _, path, headers = setup.upstream.app[HITS][-1]
    assert path == "/v1/models" and headers["Authorization"] == f"Bearer {SECRET}"


async def test_without_a_token_the_command_is_told_407(setup: Setup) -> None:
    _, out, err = await blindkey(
        setup.home, "run", "--", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
        setup.url,
    )  # fmt: skip
    assert "no agent token" in err
    assert out.strip() == "407" or "407" in err
