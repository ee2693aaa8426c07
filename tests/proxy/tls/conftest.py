"""Proxy mode through the real proxy: three TLS upstreams (trustme) on loopback ports.

GITHUB_TOKEN is bound to `bound`, STRIPE_KEY (placeholder prefix `sk-`) to `other`; `free`
is allowlisted with no secret bound to it, so it is tunnelled blind. Clients are real: curl
told only `--proxy` and blindkey's CA, or a CONNECT written by hand."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from blindkey.proxy.tls.ca import ensure_ca
from tests.proxy.conftest import Env, open_env
from tests.upstream import start_tls_upstream

STRIPE_PREFIX = "sk-"


@dataclass
class Mode:
    env: Env
    bound_port: int  # GITHUB_TOKEN is bound to https://127.0.0.1:bound_port
    free_port: int  # allowlisted, no secret bound: tunnelled blind
    bound: web.AppRunner
    free: web.AppRunner
    upstream_ca: Path
    placeholders: dict[str, str]
    other: web.AppRunner | None = None
    other_port: int = 0  # STRIPE_KEY is bound to https://127.0.0.1:other_port
    context: ssl.SSLContext | None = None  # the upstreams' (a trustme leaf for 127.0.0.1)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.env.server.port}"


@pytest.fixture
def mode_limits() -> dict[str, str]:
    """[limits] for the proxy of `mode` (a test module overrides this fixture to change)."""
    return {}


@pytest.fixture
async def mode(home: Paths, tmp_path: Path, mode_limits: dict[str, str]) -> AsyncIterator[Mode]:
    ca = trustme.CA()
    upstream_ca = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(upstream_ca))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    bound, bound_port = await start_tls_upstream(context)
    free, free_port = await start_tls_upstream(context)
    other, other_port = await start_tls_upstream(context)
    ensure_ca(home)

    def configure(document: Any) -> None:
        hosts = toml_table(document, "allowlist")["hosts"]
        hosts.extend(
            [
                f"https://127.0.0.1:{bound_port}",
                f"https://127.0.0.1:{free_port}",
                f"https://localhost:{free_port}",
                f"https://127.0.0.1:{other_port}",
            ]
        )
        toml_table(document, "proxy")["ca_file"] = str(upstream_ca)
        toml_table(document, "limits").update(mode_limits)
        toml_table(document, "secrets", "GITHUB_TOKEN")["hosts"] = string_array(
            [f"https://127.0.0.1:{bound_port}"]
        )
        stripe = toml_table(document, "secrets", "STRIPE_KEY")
        stripe["hosts"] = string_array([f"https://127.0.0.1:{other_port}"])
        stripe["placeholder_prefix"] = STRIPE_PREFIX

    try:
        async with open_env(home, configure) as env:
            broker = env.server.runtime.authoriser.broker
            reply = await broker.call("placeholders", env="development")
            yield Mode(env, bound_port, free_port, bound, free, upstream_ca,
                       dict(reply["placeholders"]), other, other_port, context)  # fmt: skip
    finally:
        await bound.cleanup()
        await free.cleanup()
        await other.cleanup()


async def curl(mode: Mode, url: str, *args: str, token: str | None = None) -> tuple[int, bytes]:
    """curl through the proxy, trusting blindkey's CA only; (exit status, output)."""
    user = ["--proxy-user", f"agent:{token or mode.env.token}"] if token != "" else []
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--proxy", mode.proxy, *user, "--noproxy", "",
        "--cacert", str(mode.env.paths.ca_cert), *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out


def connect_head(authority: str, token: str | None) -> bytes:
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if token is not None:
        basic = base64.b64encode(f"agent:{token}".encode()).decode()
        head += f"Proxy-Authorization: Basic {basic}\r\n"
    return (head + "\r\n").encode()


async def connect(mode: Mode, authority: str, token: str | None) -> tuple[bytes, dict[str, Any]]:
    """A CONNECT by hand: the proxy's answer head and its JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mode.env.server.port)
    writer.write(connect_head(authority, token))
    answer = await reader.read()
    writer.close()
    status_and_headers, _, body = answer.partition(b"\r\n\r\n")
    return status_and_headers, orjson.loads(body)


async def tunnel(
    mode: Mode, port: int, *, alpn: list[str] | None = None, ca: Path | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A CONNECT to 127.0.0.1:port by hand, then TLS inside it (trusting blindkey's CA, or
    `ca`); what is written next is read by whoever answers the TLS."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mode.env.server.port)
    writer.write(connect_head(f"127.0.0.1:{port}", mode.env.token))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    context = ssl.create_default_context(cafile=str(ca or mode.env.paths.ca_cert))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    await writer.start_tls(context, server_hostname="127.0.0.1")
    return reader, writer
