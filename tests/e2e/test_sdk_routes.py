"""Unmodified openai and anthropic SDKs, given nothing but a base_url and the agent token as
their key, call a fake API through /r/NAME routes added with `blindkey route add` while the
proxy runs. The fake API writes down what it received; its answers echo the key it got, so
redaction is seen whole and streamed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from anthropic.types import MessageParam, TextBlock
from openai.types.chat import ChatCompletionMessageParam

from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.conftest import ROOT
from tests.proxy.conftest import Env, open_env

OPENAI_KEY = "sk-proj-Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVb"
ANTHROPIC_KEY = "sk-ant-api03-Mn9Bv8Cx7Za6Sd5Fg4Hj3Kl2Pq1Wo0Ei"
RECEIVED = web.AppKey("received", list)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, object] = field(default_factory=dict)


async def _record(request: web.Request) -> dict[str, object]:
    body = await request.json()
    request.app[RECEIVED].append(
        Received(request.method, request.path_qs, dict(request.headers), body)
    )
    assert isinstance(body, dict)
    return body


async def openai_chat(request: web.Request) -> web.StreamResponse:
    body = await _record(request)
    said = f"key={request.headers.get('Authorization', '')}"
    base = {"id": "chatcmpl-1", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": said}}
        return web.json_response(
            {**base, "object": "chat.completion", "choices": [{**choice, "finish_reason": "stop"}]}
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    # Each value whole inside one event: a value cut across two JSON events never appears
    # as bytes in the stream, which no byte-level redactor can see (SECURITY.md).
    for piece in ("key=", "Bearer ", said[len("key=Bearer ") :]):
        delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        chunk = {**base, "object": "chat.completion.chunk", "choices": [delta]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _sse(event: str, data: Mapping[str, object]) -> bytes:
    return f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    body = await _record(request)
    said = f"key={request.headers.get('x-api-key', '')}"
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    if not body.get("stream"):
        content = [{"type": "text", "text": said}]
        return web.json_response({**message, "content": content, "stop_reason": "end_turn"})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(
        _sse("message_start", {"type": "message_start", "message": {**message, "content": []}})
    )
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    await response.write(_sse("content_block_start", block))
    for piece in ("key=", said[4:]):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        await response.write(_sse("content_block_delta", delta))
    await response.write(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 3},
    }
    await response.write(_sse("message_delta", end))
    await response.write(_sse("message_stop", {"type": "message_stop"}))
    await response.write_eof()
    return response


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[web.Application, int]]:
    app = web.Application()
    app[RECEIVED] = []
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post("/v1/messages", anthropic_messages)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    (address,) = runner.addresses
    try:
        yield app, int(address[1])
    finally:
        await runner.cleanup()


async def blindkey(env: Env, *args: str) -> str:
    """`blindkey ARGS` while this event loop keeps the proxy answering; its stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "blindkey.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, "BLINDKEY_HOME": str(env.paths.config_dir)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err
    return out.decode()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.timeout(90)
async def test_openai_and_anthropic_sdks_through_routes(
    home: Paths, fake_api: tuple[web.Application, int]
) -> None:
    app, api_port = fake_api
    vault = FileVault(home)
    vault.set("development", "OPENAI_API_KEY", OPENAI_KEY)
    vault.set("development", "ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    api = f"http://127.0.0.1:{api_port}"
    async with open_env(home) as env:
        said = await blindkey(
            env, "route", "add", "openai", "--to", api, "--bearer", "OPENAI_API_KEY"
        )
        assert f"allowlisted: {api}" in said
        header = "x-api-key=ANTHROPIC_API_KEY"
        said = await blindkey(env, "route", "add", "anthropic", "--to", api, "--header", header)
        assert "already allowlisted" in said
        proxy = f"http://127.0.0.1:{env.server.port}/r"
        gpt = openai.AsyncOpenAI(base_url=f"{proxy}/openai/v1", api_key=env.token, max_retries=0)
        claude = anthropic.AsyncAnthropic(
            base_url=f"{proxy}/anthropic", api_key=env.token, max_retries=0
        )
        try:
            asked: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
            whole = await gpt.chat.completions.create(model="gpt-test", messages=asked)
            assert whole.choices[0].message.content == "key=Bearer [REDACTED:OPENAI_API_KEY]"
            stream = await gpt.chat.completions.create(
                model="gpt-test", messages=asked, stream=True
            )
            pieces = [c.choices[0].delta.content or "" async for c in stream]
            assert "".join(pieces) == "key=Bearer [REDACTED:OPENAI_API_KEY]"

            prompt: list[MessageParam] = [{"role": "user", "content": "hi"}]
            answer = await claude.messages.create(
                model="claude-test", max_tokens=10, messages=prompt
            )
            assert isinstance(answer.content[0], TextBlock)
            assert answer.content[0].text == "key=[REDACTED:ANTHROPIC_API_KEY]"
            async with claude.messages.stream(
                model="claude-test", max_tokens=10, messages=prompt
            ) as events:
                text = "".join([t async for t in events.text_stream])
            assert text == "key=[REDACTED:ANTHROPIC_API_KEY]"
        finally:
            await gpt.close()
            await claude.close()
    received: list[Received] = app[RECEIVED]
    assert [(r.method, r.path) for r in received] == [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages"),
    ]
    for r in received[:2]:
        assert r.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
        assert "x-api-key" not in {k.lower() for k in r.headers}
    for r in received[2:]:
        assert r.headers["x-api-key"] == ANTHROPIC_KEY
        assert "authorization" not in {k.lower() for k in r.headers}
        assert r.headers["anthropic-version"]  # the SDK's own headers go on
    assert [r.body.get("stream", False) for r in received] == [False, True, False, True]
    # The agent token reached no upstream, in no header and no body.
    assert env.token not in repr(received)
