"""Usage in the record: unmodified openai and anthropic SDKs call an API that answers like
the vendors' (whole and streamed) through /r/NAME routes; each record carries the tokens
the answer reported and their price from [prices]."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from blindkey.broker.vault import FileVault
from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from blindkey.proxy.request.usage import MAX_LINE, MAX_WHOLE, Meter
from tests.proxy.conftest import Env, open_env
from tests.proxy.llm_upstream import INPUT, OUTPUT, WORDS, start_llm_api

OPENAI_KEY = "sk-proj-Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVb"
ANTHROPIC_KEY = "sk-ant-api03-Mn9Bv8Cx7Za6Sd5Fg4Hj3Kl2Pq1Wo0Ei"
GPT = (2.5, 10.0)
CLAUDE = (3.0, 15.0)


def cost(price: tuple[float, float], given: int = INPUT, made: int = OUTPUT) -> float:
    return round((given * price[0] + made * price[1]) / 1e6, 6)


def llm_config(api: str) -> Any:
    def change(document: Any) -> None:
        hosts = [*toml_table(document, "allowlist").get("hosts", []), api]
        toml_table(document, "allowlist")["hosts"] = string_array(hosts)
        openai_route = toml_table(document, "routes", "openai")
        openai_route.update(to=api, inject="bearer", secret="OPENAI_API_KEY")
        claude_route = toml_table(document, "routes", "anthropic")
        claude_route.update(to=api, inject="header", name="x-api-key", secret="ANTHROPIC_API_KEY")
        toml_table(document, "prices", "gpt-4o").update(input=GPT[0], output=GPT[1])
        toml_table(document, "prices", "claude-sonnet-4-5").update(
            input=CLAUDE[0], output=CLAUDE[1]
        )

    return change


@contextlib.asynccontextmanager
async def llm_env(home: Paths, extra: Any = None) -> AsyncIterator[Env]:
    """A proxy with routes `openai` and `anthropic` to the fake API, and prices for
    `gpt-4o` and `claude-sonnet-4-5`."""
    api = start_llm_api()
    port = await anext(api)
    vault = FileVault(home)
    vault.set("development", "OPENAI_API_KEY", OPENAI_KEY)
    vault.set("development", "ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    change = llm_config(f"http://127.0.0.1:{port}")

    def configure(document: Any) -> None:
        change(document)
        if extra is not None:
            extra(document)

    try:
        async with open_env(home, configure) as env:
            yield env
    finally:
        await api.aclose()


async def usages(env: Env) -> list[Any]:
    await env.server.audit.flush()
    lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    return [r.get("usage") for r in records if r.get("event") == "request"]


def clients(env: Env) -> tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]:
    proxy = f"http://127.0.0.1:{env.server.port}/r"
    gpt = openai.AsyncOpenAI(base_url=f"{proxy}/openai/v1", api_key=env.token, max_retries=0)
    claude = anthropic.AsyncAnthropic(
        base_url=f"{proxy}/anthropic", api_key=env.token, max_retries=0
    )
    return gpt, claude


@pytest.mark.timeout(90)
async def test_sdk_calls_whole_and_streamed_carry_their_usage(home: Paths) -> None:
    async with llm_env(home) as env:
        gpt, claude = clients(env)
        said = "".join(WORDS)
        try:
            asked: Any = [{"role": "user", "content": "hi"}]
            chat = await gpt.chat.completions.create(model="gpt-4o-dated", messages=asked)
            assert chat.choices[0].message.content == said
            stream = await gpt.chat.completions.create(
                model="gpt-4o", messages=asked, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            answer = await gpt.responses.create(model="gpt-4o", input="hi")
            assert answer.output_text == said
            events = await gpt.responses.create(model="gpt-4o", input="hi", stream=True)
            assert [e.type async for e in events][-1] == "response.completed"
            prompt: Any = [{"role": "user", "content": "hi"}]
            message = await claude.messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=prompt
            )
            assert message.usage.output_tokens == OUTPUT
            async with claude.messages.stream(
                model="claude-sonnet-4-5-dated", max_tokens=10, messages=prompt
            ) as streamed:
                assert "".join([t async for t in streamed.text_stream]) == said
            unknown = await gpt.chat.completions.create(model="gpt-unpriced", messages=asked)
            assert unknown.usage is not None
            echoed = await gpt.chat.completions.create(model="echo-key", messages=asked)
            assert echoed.model == "[REDACTED:OPENAI_API_KEY]"
        finally:
            await gpt.close()
            await claude.close()
        gpt_usage = {"input_tokens": INPUT, "output_tokens": OUTPUT, "cost_usd": cost(GPT)}
        claude_usage = {**gpt_usage, "cost_usd": cost(CLAUDE)}
        assert await usages(env) == [
            # A dated model name is priced by the alias it extends.
            {"model": "gpt-4o-dated-2024-08-06", **gpt_usage},
            {"model": "gpt-4o", **gpt_usage},
            {"model": "gpt-4o", **gpt_usage},
            {"model": "gpt-4o", **gpt_usage},
            {"model": "claude-sonnet-4-5", **claude_usage},
            {"model": "claude-sonnet-4-5-dated-2024-08-06", **claude_usage},
            # No [prices] table for it: counted, not priced.
            {"model": "gpt-unpriced", **gpt_usage, "cost_usd": None},
            # The model's name is the one text kept: it passes the redactor.
            {"model": "[REDACTED:OPENAI_API_KEY]", **gpt_usage, "cost_usd": None},
        ]


async def post(env: Env, route: str, body: dict[str, Any]) -> bytes:
    """A raw call through a route; a cut stream ends in a client error, which is expected."""
    url = f"http://127.0.0.1:{env.server.port}/r/{route}"
    headers = {"X-AS-Agent-Token": env.token, "anthropic-version": "2023-06-01"}
    got = b""
    with contextlib.suppress(aiohttp.ClientPayloadError):
        async with env.session.post(url, json=body, headers=headers) as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                got += chunk
    return got


async def test_a_stream_cut_before_its_usage_is_counted_from_what_was_seen(home: Paths) -> None:
    estimate = -(-len("".join(WORDS)) // 4)  # 4 characters of streamed text per token
    async with llm_env(home) as env:
        asked = [{"role": "user", "content": "hi"}]
        got = await post(env, "anthropic/v1/messages", {"model": "claude-sonnet-4-5-cut",
                         "max_tokens": 9, "messages": asked, "stream": True})  # fmt: skip
        assert b"message_start" in got and b"message_delta" not in got
        # A chat stream the caller did not ask usage of never reports any.
        got = await post(env, "openai/v1/chat/completions",
                         {"model": "gpt-4o", "messages": asked, "stream": True})  # fmt: skip
        assert b"[DONE]" in got
        got = await post(env, "openai/v1/responses",
                         {"model": "gpt-4o-cut", "input": "hi", "stream": True})  # fmt: skip
        assert b"response.created" in got and b"response.completed" not in got
        assert await usages(env) == [
            # message_start said the input; the output is what streamed before the cut.
            {"model": "claude-sonnet-4-5-cut", "input_tokens": INPUT, "output_tokens": estimate,
             "cost_usd": cost(CLAUDE, INPUT, estimate), "complete": False},
            {"model": "gpt-4o", "input_tokens": 0, "output_tokens": estimate,
             "cost_usd": cost(GPT, 0, estimate), "complete": False},
            {"model": "gpt-4o-cut", "input_tokens": 0, "output_tokens": estimate,
             "cost_usd": cost(GPT, 0, estimate), "complete": False},
        ]  # fmt: skip


async def test_answers_that_are_not_llm_answers_carry_no_usage(env: Env) -> None:
    # JSON without a model and usage, chunks and gzip: no usage field.
    for path in ("/echo", "/chunks", "/gzip"):
        await env.call(headers=env.headers(path, X_AS_Inject_Bearer="GITHUB_TOKEN"))
    await env.server.audit.flush()
    lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
    assert all("usage" not in orjson.loads(line) for line in lines)


def anthropic_stream() -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-sonnet-4-5",
            "usage": {"input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 1},
        },
    }
    end = {"type": "message_delta", "usage": {"output_tokens": 11}}  # fmt: skip
    return b"".join(b"event: x\r\ndata: " + orjson.dumps(e) + b"\r\n\r\n" for e in (start, end))


@pytest.mark.parametrize("size", [1, 2, 7, 64, 10_000])
def test_the_meter_reads_events_split_anywhere(size: int) -> None:
    meter = Meter(sse=True)
    stream = anthropic_stream()
    for at in range(0, len(stream), size):
        meter.feed(stream[at : at + size])
    # Cache reads are input too.
    assert meter.reading({}) == {"model": "claude-sonnet-4-5", "input_tokens": 10,
                                 "output_tokens": 11, "cost_usd": None}  # fmt: skip


def test_the_meter_keeps_a_bounded_amount() -> None:
    meter = Meter(sse=True)
    meter.feed(b"data: {" + b" " * MAX_LINE)  # a line too long to keep is skipped whole
    meter.feed(b'"model": "m", "usage": {"input_tokens": 5}}\n' + anthropic_stream())
    assert meter._size == 0
    assert meter.reading({}) == {"model": "claude-sonnet-4-5", "input_tokens": 10,
                                 "output_tokens": 11, "cost_usd": None}  # fmt: skip
    whole = Meter(sse=False)
    whole.feed(b'{"model": "m", "pad": "')
    for _ in range(64):  # 4 MiB: kept is the head and a tail, never the whole
        whole.feed(b"x" * 2**16)
        assert whole._size <= MAX_WHOLE + 2**16
    assert whole._size <= 2 * MAX_LINE + 2**16
    whole.feed(b'", "usage": {"input_tokens": 5, "output_tokens": 6, "x": {"y": 1}}}')
    assert MAX_WHOLE < 4 * 2**20
    assert whole.reading({}) == {"model": "m", "input_tokens": 5, "output_tokens": 6,
                                 "cost_usd": None}  # fmt: skip
