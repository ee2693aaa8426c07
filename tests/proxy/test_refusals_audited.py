"""Every refusal leaves a record, whatever refused it: aiohttp's parser, or a target URL
whose bytes are not UTF-8 (written escaped, never dropped)."""

from __future__ import annotations

import asyncio

import orjson

from tests.proxy.conftest import Env


async def raw_exchange(env: Env, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return head


def request_id(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        if name.lower() == b"x-blindkey-request-id":
            return value.decode()
    raise AssertionError(head)


async def last_record(env: Env) -> dict[str, object]:
    await env.server.audit.flush()
    record = orjson.loads((env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()[-1])
    assert isinstance(record, dict)
    return record


async def test_a_request_the_parser_refuses_has_a_record(env: Env) -> None:
    filler = b"".join(b"X-Filler-%d: x\r\n" % i for i in range(150))
    head = await raw_exchange(env, b"GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\n" + filler + b"\r\n")
    assert head.split(b" ")[1] == b"400"  # the parser answers in HTTP/1.0
    record = await last_record(env)
    assert record["request_id"] == request_id(head)
    assert (record["decision"], record["reason"], record["status"]) == (
        "blocked",
        "bad_request",
        400,
    )


async def test_a_target_url_that_is_not_utf8_is_recorded_escaped(env: Env) -> None:
    request = (
        b"GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nX-AS-Agent-Token: " + env.token.encode()
        + b"\r\nX-AS-Target-URL: http://127.0.0.1/\xff\xfe\r\nX-AS-Inject-Bearer: GITHUB_TOKEN"
        + b"\r\n\r\n"
    )  # fmt: skip
    head = await raw_exchange(env, request)
    assert head.startswith(b"HTTP/1.1 400")
    record = await last_record(env)
    assert record["request_id"] == request_id(head)
    assert record["reason"] == "bad_request"
    assert "\\xff\\xfe" in str(record["url"])
