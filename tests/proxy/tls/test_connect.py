"""Proxy mode through the real proxy: curl told only `--proxy` and blindkey's CA, holding a
placeholder, reaches a TLS upstream that sees the value; the answer comes back redacted.
CONNECT without a token, off the allowlist, to a private address behind an allowlisted name
or to the proxy itself is refused before a byte leaves; other allowlisted hosts are tunnelled
blind, with one record."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from blindkey.config.edit import string_array, toml_table
from tests.proxy.conftest import OTHER, SECRET
from tests.proxy.test_attack_dos import audit_records
from tests.proxy.tls.conftest import Mode, connect, curl
from tests.upstream import HITS


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
    """STRIPE_KEY is bound to another host: its placeholder is refused here."""
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


@pytest.mark.parametrize(
    "authority", ["127.0.0.1:{proxy}", "[::1]:{proxy}", "0.0.0.0:{proxy}", "localhost:{proxy}"]
)
async def test_the_proxy_itself_is_refused_even_when_allowlisted(
    mode: Mode, authority: str
) -> None:
    """A human allowlisted the proxy's own port and permitted loopback for names: a tunnel
    into the proxy (and another inside it) is still refused, by address and by name."""
    proxy = mode.env.server.port

    def allow_self(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].extend(
            [f"https://{host}:{proxy}" for host in ("127.0.0.1", "[::1]", "0.0.0.0", "localhost")]
        )
        toml_table(document, "allowlist")["private_ranges"] = string_array(["127.0.0.0/8"])

    mode.env.configure(allow_self)
    await mode.env.server.reload()
    head, body = await connect(mode, authority.format(proxy=proxy), mode.env.token)
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert body["error"] == "blocked_address" and "itself" in body["message"]


async def test_a_loopback_name_permitted_by_private_ranges_is_tunnelled(mode: Mode) -> None:
    """The other side of the name checks: what refuses `localhost` is the address vetting,
    which a human can widen, and then the tunnel opens."""

    def permit(document: Any) -> None:
        toml_table(document, "allowlist")["private_ranges"] = string_array(["127.0.0.0/8"])

    mode.env.configure(permit)
    await mode.env.server.reload()
    status, out = await curl(mode, f"https://localhost:{mode.free_port}/echo",
                             "--cacert", str(mode.upstream_ca))  # fmt: skip
    assert status == 0, out
