"""Proxy mode through the real proxy: curl told only `--proxy` and blindkey's CA, holding a
placeholder, reaches a TLS upstream that sees the value; the answer comes back redacted.
CONNECT without a token, off the allowlist, to a private address behind an allowlisted name
or to the proxy itself is refused before a byte leaves; other allowlisted hosts are tunnelled
blind, with one record."""

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
from tests.proxy.conftest import OTHER, SECRET, Env, open_env
from tests.proxy.test_attack_dos import audit_records
from tests.upstream import HITS, start_tls_upstream


@dataclass
class Mode:
    env: Env
    bound_port: int  # GITHUB_TOKEN is bound to https://127.0.0.1:bound_port
    free_port: int  # allowlisted, no secret bound: tunnelled blind
    bound: web.AppRunner
    free: web.AppRunner
    upstream_ca: Path
    placeholders: dict[str, str]

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.env.server.port}"


@pytest.fixture
async def mode(home: Paths, tmp_path: Path) -> AsyncIterator[Mode]:
    ca = trustme.CA()
    upstream_ca = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(upstream_ca))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    bound, bound_port = await start_tls_upstream(context)
    free, free_port = await start_tls_upstream(context)
    ensure_ca(home)

    def configure(document: Any) -> None:
        hosts = toml_table(document, "allowlist")["hosts"]
        hosts.extend(
            [
                f"https://127.0.0.1:{bound_port}",
                f"https://127.0.0.1:{free_port}",
                f"https://localhost:{free_port}",
            ]
        )
        toml_table(document, "proxy")["ca_file"] = str(upstream_ca)
        toml_table(document, "secrets", "GITHUB_TOKEN")["hosts"] = string_array(
            [f"https://127.0.0.1:{bound_port}"]
        )

    try:
        async with open_env(home, configure) as env:
            broker = env.server.runtime.authoriser.broker
            reply = await broker.call("placeholders", env="development")
            yield Mode(env, bound_port, free_port, bound, free, upstream_ca,
                       dict(reply["placeholders"]))  # fmt: skip
    finally:
        await bound.cleanup()
        await free.cleanup()


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


async def connect(mode: Mode, authority: str, token: str | None) -> tuple[bytes, dict[str, Any]]:
    """A CONNECT by hand: the proxy's answer head and its JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mode.env.server.port)
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if token is not None:
        basic = base64.b64encode(f"agent:{token}".encode()).decode()
        head += f"Proxy-Authorization: Basic {basic}\r\n"
    writer.write((head + "\r\n").encode())
    answer = await reader.read()
    writer.close()
    status_and_headers, _, body = answer.partition(b"\r\n\r\n")
    return status_and_headers, orjson.loads(body)


async def test_curl_with_a_placeholder_reaches_the_value(mode: Mode) -> None:
    placeholder = mode.placeholders["GITHUB_TOKEN"]
    url = f"https://127.0.0.1:{mode.bound_port}/echo?key={placeholder}"
    status, out = await curl(mode, url, "-H", f"Authorization: Bearer {placeholder}",
                             "-H", "Content-Type: application/json",
                             "--data", orjson.dumps({"key": placeholder}).decode())  # fmt: skip
    assert status == 0, out
    _, path, headers = mode.bound.app[HITS][-1]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert path == f"/echo?key={SECRET}"
    answer = orjson.loads(out)
    assert SECRET.encode() not in out and "[REDACTED:GITHUB_TOKEN]" in answer["body"]
    records = [r for r in audit_records(mode.env.paths.audit_dir) if r.get("via") == "connect"]
    assert records[-1]["secrets"] == ["GITHUB_TOKEN"] and records[-1]["status"] == 200
    assert placeholder in records[-1]["url"] and SECRET not in records[-1]["url"]


async def test_basic_credentials_with_a_placeholder(mode: Mode) -> None:
    placeholder = mode.placeholders["GITHUB_TOKEN"]
    url = f"https://127.0.0.1:{mode.bound_port}/echo"
    status, out = await curl(mode, url, "--user", f"x-access-token:{placeholder}")
    assert status == 0, out
    _, _, headers = mode.bound.app[HITS][-1]
    sent = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode()
    assert sent == f"x-access-token:{SECRET}"


@pytest.mark.parametrize("where", ["header", "query", "body", "basic"])
async def test_a_placeholder_headed_elsewhere_is_refused(mode: Mode, where: str) -> None:
    """STRIPE_KEY is bound to no host: its placeholder is swapped nowhere, and refused."""
    foreign = mode.placeholders["STRIPE_KEY"]
    url = f"https://127.0.0.1:{mode.bound_port}/echo"
    extra = {
        "header": ["-H", f"X-Api-Key: {foreign}"],
        "query": [],
        "body": ["-H", "Content-Type: text/plain", "--data", f"key={foreign}"],
        "basic": ["--user", f"x:{foreign}"],
    }[where]
    if where == "query":
        url += f"?k={foreign}"
    hits = len(mode.bound.app[HITS])
    _, out = await curl(mode, url, "-w", "\n%{http_code}", *extra)
    body, _, code = out.rpartition(b"\n")
    assert code == b"403" and orjson.loads(body)["error"] == "secret_denied"
    assert b"STRIPE_KEY" in body and OTHER.encode() not in out
    assert len(mode.bound.app[HITS]) == hits  # nothing reached the upstream


async def test_no_token_is_407(mode: Mode) -> None:
    head, body = await connect(mode, f"127.0.0.1:{mode.bound_port}", None)
    assert (
        head.startswith(b"HTTP/1.1 407 ") and b'Proxy-Authenticate: Basic realm="blindkey"' in head
    )
    assert body["error"] == "unauthenticated"
    head, body = await connect(mode, f"127.0.0.1:{mode.bound_port}", "not-a-token")
    assert head.startswith(b"HTTP/1.1 407 ")


@pytest.mark.parametrize(
    ("authority", "code"),
    [
        ("example.com:443", "host_not_allowed"),
        ("10.0.0.1:443", "host_not_allowed"),
        ("localhost:{free}", "blocked_address"),  # allowlisted, but a loopback address
        ("127.0.0.1:{proxy}", "host_not_allowed"),
    ],
)
async def test_refused_before_a_byte_leaves(mode: Mode, authority: str, code: str) -> None:
    authority = authority.format(free=mode.free_port, proxy=mode.env.server.port)
    head, body = await connect(mode, authority, mode.env.token)
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert body["error"] == code
    records = audit_records(mode.env.paths.audit_dir)
    assert any(r.get("method") == "CONNECT" and r.get("reason") == code for r in records)


async def test_an_unbound_host_is_tunnelled_blind(mode: Mode) -> None:
    placeholder = mode.placeholders["GITHUB_TOKEN"]
    url = f"https://127.0.0.1:{mode.free_port}/echo"
    status, out = await curl(mode, url, "--cacert", str(mode.upstream_ca),
                             "-H", f"Authorization: Bearer {placeholder}")  # fmt: skip
    assert status == 0, out
    _, _, headers = mode.free.app[HITS][-1]
    assert headers["Authorization"] == f"Bearer {placeholder}"  # never looked inside
    await mode.env.server.audit.flush()
    tunnels = [r for r in audit_records(mode.env.paths.audit_dir) if r["event"] == "tunnel"]
    assert tunnels and tunnels[-1]["port"] == mode.free_port
    assert tunnels[-1]["bytes_up"] > 0 and tunnels[-1]["bytes_down"] > 0


async def test_absolute_form_http_through_the_proxy(mode: Mode) -> None:
    """HTTP_PROXY for an http:// API: `GET http://host/path` to blindkey as the proxy."""
    env = mode.env
    http_target = f"http://127.0.0.1:{env.upstream_port}"

    def bind(document: Any) -> None:
        toml_table(document, "secrets", "STRIPE_KEY")["hosts"] = string_array([http_target])

    env.configure(bind)
    await env.server.reload()
    placeholder = mode.placeholders["STRIPE_KEY"]
    status, out = await curl(mode, f"{http_target}/echo", "-H", f"X-Key: {placeholder}")
    assert status == 0, out
    _, _, headers = env.upstream.app[HITS][-1]
    assert headers["X-Key"] == OTHER
    assert "[REDACTED:STRIPE_KEY]" in out.decode() and OTHER.encode() not in out
    status, out = await curl(mode, f"{http_target}/echo", "-w", "\n%{http_code}", token="")
    assert out.endswith(b"\n407")
    # GITHUB_TOKEN is bound to the TLS host only: its placeholder is refused here.
    github = mode.placeholders["GITHUB_TOKEN"]
    status, out = await curl(mode, f"{http_target}/echo", "-H", f"X-Key: {github}",
                             "-w", "\n%{http_code}")  # fmt: skip
    assert out.endswith(b"\n403") and b"secret_denied" in out
