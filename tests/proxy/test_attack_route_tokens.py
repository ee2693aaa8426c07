"""An agent token spelled where a route does not read it (a cookie, `Token X`, Basic in a
custom header, quoted, encoded, a query parameter's text, a JSON body field) must never
reach the upstream: such a call is refused before anything of the token is sent. And a
refused route call is recorded under the route's target, never the token."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import Env, open_env
from tests.proxy.test_routes import hits, routed, send, sha

__all__ = ["routed"]  # the fixture, imported for the tests below


def every_char_encoded(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


HEADER_SPELLINGS: dict[str, Callable[[str], tuple[str, str]]] = {
    "cookie": lambda t: ("Cookie", f"theme=dark; api_key={t}"),
    "token-scheme": lambda t: ("X-Api-Token", f"Token {t}"),
    "basic-in-custom-header": lambda t: (
        "X-Auth",
        "Basic " + base64.b64encode(f"me:{t}".encode()).decode(),
    ),
    "quoted": lambda t: ("X-Key", f'"{t}"'),
    "percent-encoded": lambda t: ("X-Key", every_char_encoded(t)),
    "hex": lambda t: ("X-Key", t.encode().hex()),
    "base64url-in-json": lambda t: (
        "X-Meta",
        json.dumps({"k": base64.urlsafe_b64encode(t.encode()).decode()}),
    ),
}


@pytest.mark.parametrize("spelling", sorted(HEADER_SPELLINGS))
async def test_the_token_in_another_header_is_refused(routed: Env, spelling: str) -> None:
    env = routed
    header, value = HEADER_SPELLINGS[spelling](env.token)
    headers = {"Authorization": f"Bearer {env.token}", header: value}
    status, _, body = await send(env, "GET", "/r/echo/models", headers)
    error = orjson.loads(body)
    assert (status, error["error"]["code"]) == (400, "bad_request"), body
    assert f"header {header}" in error["error"]["message"]
    assert hits(env) == []
    assert env.token not in body.decode()


QUERY_SPELLINGS: dict[str, Callable[[str], str]] = {
    "token-scheme": lambda t: f"x=Token%20{t}",
    "quoted": lambda t: f"x=%22{t}%22",
    "double-encoded": lambda t: "x=" + every_char_encoded(every_char_encoded(t)),
    "basic-pair": lambda t: "auth=" + quote(base64.b64encode(f"u:{t}".encode()).decode()),
    "json": lambda t: "filter=" + quote(json.dumps({"key": t})),
}


@pytest.mark.parametrize("spelling", sorted(QUERY_SPELLINGS))
async def test_the_token_in_the_query_text_is_refused(routed: Env, spelling: str) -> None:
    env = routed
    query = QUERY_SPELLINGS[spelling](env.token)
    headers = {"Authorization": f"Bearer {env.token}"}
    status, _, body = await send(env, "GET", f"/r/echo/search?q=1&{query}", headers)
    assert (status, orjson.loads(body)["error"]["code"]) == (400, "bad_request"), body
    assert hits(env) == []


async def test_the_token_in_the_path_is_refused(routed: Env) -> None:
    env = routed
    headers = {"Authorization": f"Bearer {env.token}"}
    status, _, body = await send(env, "GET", f"/r/echo/keys/{env.token}", headers)
    assert (status, orjson.loads(body)["error"]["code"]) == (400, "bad_request"), body
    assert hits(env) == []


class Sink:
    """An upstream that keeps every byte it is sent and never answers."""

    def __init__(self) -> None:
        self.received = b""
        self.closed = asyncio.Event()
        self.marker = b"\0"
        self.marked = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            self.received += chunk
            if self.marker in self.received:
                self.marked.set()
        writer.close()
        self.closed.set()


@contextlib.asynccontextmanager
async def sink_route(home: Paths) -> AsyncIterator[tuple[Env, Sink]]:
    sink = Sink()
    server = await asyncio.start_server(sink.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    def configure(document: Any) -> None:
        hosts = [*toml_table(document, "allowlist")["hosts"], f"http://127.0.0.1:{port}"]
        toml_table(document, "allowlist")["hosts"] = string_array(hosts)
        section = toml_table(document, "routes", "sink")
        section.update({"to": f"http://127.0.0.1:{port}", "inject": "bearer"})
        section["secret"] = "GITHUB_TOKEN"

    try:
        async with open_env(home, configure) as env:
            yield env, sink
    finally:
        server.close()
        await server.wait_closed()


def body_spellings(token: str) -> dict[str, Any]:
    escaped = "".join(f"\\u{ord(c):04x}" for c in token)
    filler = b'{"pad": "' + b"x" * 150_000 + b'", '
    return {
        "json-field": b'{"model": "m", "api_key": "' + token.encode() + b'"}',
        "json-escaped": b'{"api_key": "' + escaped.encode() + b'"}',
        "after-150k": filler + b'"api_key": "' + token.encode() + b'"}',
        "split-across-chunks": [
            b'{"pad": "' + b"y" * 1000 + b'", "api_key": "' + token[:20].encode(),
            token[20:].encode() + b'"}',
        ],
    }


@pytest.mark.parametrize(
    "spelling", ["json-field", "json-escaped", "after-150k", "split-across-chunks"]
)
async def test_the_token_in_a_streamed_body_never_reaches_the_upstream(
    home: Paths, spelling: str
) -> None:
    async with sink_route(home) as (env, sink):
        payload = body_spellings(env.token)[spelling]
        data: Any = payload
        if isinstance(payload, list):
            sink.marker = b"yyy"

            async def pieces() -> AsyncIterator[bytes]:
                yield payload[0]
                # What comes before the held-back tail has reached the upstream: the first
                # piece went through the proxy alone, the token's start held back.
                await sink.marked.wait()
                yield payload[1]

            data = pieces()
        headers = {"Authorization": f"Bearer {env.token}", "Content-Type": "application/json"}
        status, _, body = await send(env, "POST", "/r/sink/v1/chat", headers, data=data)
        assert (status, orjson.loads(body)["error"]["code"]) == (400, "bad_request"), body
        assert "the body" in orjson.loads(body)["error"]["message"]
        await asyncio.wait_for(sink.closed.wait(), 10)
        assert sink.received.startswith(b"POST /v1/chat")  # the call went, the token did not
        assert env.token[:12].encode() not in sink.received
        assert env.token[-12:].encode() not in sink.received


async def test_a_large_body_without_the_token_passes_whole(routed: Env) -> None:
    env = routed
    payload = b'{"data": "' + b"0123456789" * 20_000 + b'"}'
    headers = {"Authorization": f"Bearer {env.token}", "Content-Type": "application/json"}
    status, answer, body = await send(env, "POST", "/r/echo/upload", headers, data=payload)
    assert status == 200, body[:200]
    assert answer["X-Echo-Body-Sha256"] == sha(payload.decode())


async def test_a_jwt_cookie_and_a_placeholder_key_are_not_mistaken_for_the_token(
    routed: Env,
) -> None:
    env = routed
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bk_" + "A" * 43 + "x"
    headers = {"X-AS-Agent-Token": env.token, "Authorization": "Bearer sk-x", "Cookie": f"s={jwt}"}
    status, _, body = await send(env, "GET", "/r/echo/models", headers)
    assert status == 200, body
    ((_, _, sent),) = hits(env)
    assert sent["Cookie"] == f"s={jwt}"


async def last_record(env: Env) -> dict[str, Any]:
    await env.server.audit.flush()
    lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
    record: dict[str, Any] = orjson.loads(lines[-1])
    return record


async def test_a_route_call_refused_at_the_door_is_recorded_under_its_target(
    routed: Env,
) -> None:
    env = routed
    headers = {"Authorization": f"Bearer {env.token}", "Origin": "https://evil.example"}
    status, _, _ = await send(env, "GET", "/r/echo/models?limit=2", headers)
    assert status == 403
    record = await last_record(env)
    assert record["reason"] == "forbidden_origin"
    assert record["url"] == f"http://127.0.0.1:{env.upstream_port}/v1/models?limit=2"


async def test_a_refused_token_spelling_is_not_written_to_the_record(routed: Env) -> None:
    env = routed
    headers = {"Authorization": f"Bearer {env.token}"}
    query = QUERY_SPELLINGS["token-scheme"](env.token)
    status, _, _ = await send(env, "GET", f"/r/echo/search?q=1&{query}", headers)
    assert status == 400
    record = await last_record(env)
    assert record["url"] == f"http://127.0.0.1:{env.upstream_port}/v1/search?q=1"
    status, _, _ = await send(env, "GET", f"/r/echo/keys/{env.token}", headers)
    assert status == 400
    record = await last_record(env)
    assert record["url"] == f"http://127.0.0.1:{env.upstream_port}/v1/"
    assert env.token not in (env.paths.audit_dir / "audit.jsonl").read_text()
