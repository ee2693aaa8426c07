"""A loopback API that answers like OpenAI (chat completions, responses) and Anthropic
(messages), whole or streamed, with the usage each vendor reports where it reports it.

The model named in the request picks the answer's model (as the vendors answer with a
dated name for an alias when `dated` is in it); a model ending in `-cut` streams a few
events and then resets the connection before the usage event.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping

import orjson
from aiohttp import web

INPUT, OUTPUT = 1200, 340  # the tokens every answer reports
WORDS = ("Hello", " there", ", agent")


def _model(body: Mapping[str, object], request: web.Request) -> str:
    model = str(body["model"])
    if model == "echo-key":  # a careless API that names the model with the caller's key
        return request.headers.get("Authorization", "").removeprefix("Bearer ")
    return model + "-2024-08-06" if "dated" in model else model


def _data(payload: Mapping[str, object]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _event(event: str, payload: Mapping[str, object]) -> bytes:
    return f"event: {event}\n".encode() + _data(payload)


async def _stream(request: web.Request, events: list[bytes], cut: bool) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    for event in events:
        await response.write(event)
    if cut:
        assert request.transport is not None
        request.transport.close()  # the usage event never comes
        return response
    await response.write_eof()
    return response


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    model = _model(body, request)
    base = {"id": "chatcmpl-1", "created": 1, "model": model}
    usage = {"prompt_tokens": INPUT, "completion_tokens": OUTPUT, "total_tokens": INPUT + OUTPUT}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(WORDS)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        answer = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        return web.json_response(answer)
    events = []
    for word in WORDS:
        delta = {"index": 0, "delta": {"content": word}, "finish_reason": None}
        events.append(_data({**base, "object": "chat.completion.chunk", "choices": [delta]}))
    cut = model.endswith("-cut")
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(_data({**base, "object": "chat.completion.chunk", "choices": [],
                             "usage": usage}))  # fmt: skip
    events.append(b"data: [DONE]\n\n")
    return await _stream(request, events[: len(WORDS)] if cut else events, cut)


async def responses(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    model = _model(body, request)
    text = "".join(WORDS)
    output = [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}]  # fmt: skip
    usage = {"input_tokens": INPUT, "output_tokens": OUTPUT, "total_tokens": INPUT + OUTPUT,
             "input_tokens_details": {"cached_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    answer = {"id": "resp_1", "object": "response", "created_at": 1, "model": model,
              "status": "completed", "output": output, "usage": usage, "tools": [],
              "parallel_tool_calls": True, "tool_choice": "auto"}  # fmt: skip
    if not body.get("stream"):
        return web.json_response(answer)
    begun = {**answer, "status": "in_progress", "output": [], "usage": None}
    events = [_event("response.created", {"type": "response.created", "response": begun,
                                          "sequence_number": 0})]  # fmt: skip
    for n, word in enumerate(WORDS, 1):
        delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                 "content_index": 0, "delta": word, "sequence_number": n}  # fmt: skip
        events.append(_event("response.output_text.delta", delta))
    cut = model.endswith("-cut")
    done = {"type": "response.completed", "response": answer, "sequence_number": 9}
    events.append(_event("response.completed", done))
    return await _stream(request, events[:-1] if cut else events, cut)


async def messages(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    model = _model(body, request)
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
               "stop_reason": None, "stop_sequence": None}  # fmt: skip
    if not body.get("stream"):
        content = [{"type": "text", "text": "".join(WORDS)}]
        usage = {"input_tokens": INPUT, "output_tokens": OUTPUT}
        return web.json_response(
            {**message, "content": content, "stop_reason": "end_turn", "usage": usage}
        )
    begun = {"input_tokens": INPUT, "output_tokens": 1}
    start: dict[str, object] = {**message, "content": [], "usage": begun}
    events = [_event("message_start", {"type": "message_start", "message": start})]
    block = {"type": "text", "text": ""}
    events.append(_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": block}))  # fmt: skip
    for word in WORDS:
        delta = {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": word}}  # fmt: skip
        events.append(_event("content_block_delta", delta))
    cut = model.endswith("-cut")
    events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": OUTPUT}}  # fmt: skip
    events.append(_event("message_delta", end))
    events.append(_event("message_stop", {"type": "message_stop"}))
    return await _stream(request, events[:-3] if cut else events, cut)


async def start_llm_api() -> AsyncGenerator[int, None]:
    """Serves until the generator is closed; yields its port."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    (address,) = runner.addresses
    try:
        yield int(address[1])
    finally:
        await runner.cleanup()
