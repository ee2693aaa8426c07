"""Usage: the tokens an LLM answer says it spent, read from the bytes the agent receives.

OpenAI chat completions and responses, and Anthropic messages, whole or streamed (SSE),
carry a `usage` object: whole answers at the top (or under `response`), streams in their
last events (a chat chunk with `usage`, `response.completed`, Anthropic's `message_start`
for input and `message_delta` for output). The meter reads the decoded answer as relay
receives it (what the upstream billed, even if a cut keeps its last bytes from the
agent); it holds no chunk back (it only looks), keeps at most MAX_WHOLE bytes of a JSON
answer and one SSE line of at most MAX_LINE bytes, and of all it reads a record keeps
numbers and the model's name, which passes the redactor.

A stream cut before its usage event is counted from what was seen (the input of
`message_start`, and output estimated at CHARS_PER_TOKEN characters of streamed text per
token) and its usage says `"complete": false`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from blindkey.audit.record import AuditRecord
from blindkey.config.spend import ModelPrice, cost_usd
from blindkey.proxy.runtime import ProxyRuntime
from blindkey.redact.redactor import Redactor

log = logging.getLogger("blindkey.proxy")
MAX_WHOLE = 2**20
MAX_LINE = 2**16
CHARS_PER_TOKEN = 4
MAX_MODEL = 128
Usage = dict[str, object]
_MODEL = re.compile(rb'"model"\s*:\s*("[^"\\]{1,128}")')
_spending: set[asyncio.Task[None]] = set()


class Meter:
    """Fed the answer as the agent gets it; `reading()` is its usage, or None."""

    # One per 2xx JSON answer, most of which never feed it (relay: no "usage" in them).
    __slots__ = (
        "_head",
        "_kept",
        "_overflow",
        "_size",
        "final",
        "input_tokens",
        "model",
        "output_tokens",
        "sse",
        "text_chars",
        "usage_seen",
    )  # fmt: skip

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self._kept: list[bytes] = []
        self._size = 0
        self._overflow = False  # the current SSE line, or the JSON answer, is too long
        self._head = b""  # of a JSON answer too long to parse whole
        self.model: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.usage_seen = False
        self.final = False
        self.text_chars = 0

    def feed(self, chunk: bytes) -> None:
        if not self.sse:
            if not self._overflow and self._size + len(chunk) > MAX_WHOLE:
                # Too long to parse whole: keep its head (the model) and a tail (the usage).
                whole = b"".join(self._kept)
                self._head, self._kept, self._size = whole[:MAX_LINE], [whole], len(whole)
                self._overflow = True
            self._kept.append(chunk)
            self._size += len(chunk)
            if self._overflow and self._size > 2 * MAX_LINE:
                tail = b"".join(self._kept)[-MAX_LINE:]
                self._kept, self._size = [tail], len(tail)
            return
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._keep_line(chunk[start:end])
            line = b"".join(self._kept)
            overflow = self._overflow
            self._kept, self._size, self._overflow = [], 0, False
            if not overflow:
                self._line(line)
            start = end + 1
        self._keep_line(chunk[start:])

    def _keep_line(self, part: bytes) -> None:
        if self._size + len(part) > MAX_LINE:
            self._overflow = True
        elif part and not self._overflow:
            self._kept.append(part)
            self._size += len(part)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data.startswith(b"{"):
            self._event(_loads(data))

    def _event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        for inner in (event.get("response"), event.get("message")):
            if isinstance(inner, dict):
                self._take(inner, final=kind != "message_start")
        self._take(event, final=True)
        self.text_chars += _text_chars(event)

    def _take(self, answer: dict[str, Any], *, final: bool) -> None:
        model = answer.get("model")
        if isinstance(model, str) and 0 < len(model) <= MAX_MODEL and model.isprintable():
            self.model = model
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return
        given = _tokens(usage, "prompt_tokens", "input_tokens")
        # Anthropic counts cache writes and reads apart from input_tokens; they are input
        # all the same (priced here at the input price: an upper bound for reads).
        cached = _tokens(usage, "cache_creation_input_tokens") + _tokens(
            usage, "cache_read_input_tokens"
        )
        output = _tokens(usage, "completion_tokens", "output_tokens")
        self.input_tokens = max(self.input_tokens, given + cached)
        self.output_tokens = max(self.output_tokens, output)
        self.usage_seen = True
        self.final = self.final or final

    def reading(self, prices: Mapping[str, ModelPrice]) -> Usage | None:
        """The usage this answer reported, priced (None: not an LLM answer, or none seen)."""
        if not self.sse and self._kept:
            whole = b"".join(self._kept)
            self._kept, self._size = [], 0
            if self._overflow:
                self._event(_head_and_tail(self._head, whole))
            elif b'"usage"' in whole:
                self._event(_loads(whole))
        if self.model is None or not (self.usage_seen or self.text_chars):
            return None
        output = self.output_tokens
        if not self.final:
            output = max(output, math.ceil(self.text_chars / CHARS_PER_TOKEN))
        usage: Usage = {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": output,
            "cost_usd": cost_usd(self.model, self.input_tokens, output, prices),
        }
        if not self.final:
            usage["complete"] = False
        return usage


def meter_for(status: int, content_type: str | None) -> Meter | None:
    """A meter for an answer that may carry usage: a 2xx in JSON or SSE (`content_type`:
    the answer's first Content-Type); else None."""
    if content_type is None or not 200 <= status < 300:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "text/event-stream":
        return Meter(sse=True)
    if kind == "application/json":
        return Meter(sse=False)
    return None


def settle(
    runtime: ProxyRuntime, record: AuditRecord, meter: Meter | None, redactor: Redactor
) -> None:
    """Put the answer's usage, priced by [prices], in its record, and tell the broker what
    the agent spent (its budgets are the broker's, priced there by the approved policy)."""
    if meter is None:
        return
    usage = meter.reading(runtime.settings.prices)
    if usage is None:
        return
    # The model's name is the one text a record keeps of the answer: redacted like it.
    (usage["model"],), _ = redactor.redact_texts([str(usage["model"])])
    record.usage = usage
    if record.agent is None:
        return
    task = asyncio.get_running_loop().create_task(
        _spend(runtime, record.agent, record.request_id, usage), name=f"spend-{record.request_id}"
    )
    _spending.add(task)
    task.add_done_callback(_spending.discard)


async def _spend(runtime: ProxyRuntime, agent: str, request_id: str, usage: Usage) -> None:
    try:
        await runtime.authoriser.broker.call("spend", agent=agent, request_id=request_id,
                                             usage=usage)  # fmt: skip
    except Exception as exc:  # the record keeps the usage: `budget status` says what it lacks
        log.warning("%s: spend not counted by the broker (%s)", request_id, exc)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _head_and_tail(head: bytes, tail: bytes) -> dict[str, Any]:
    """Of a JSON answer too long to parse: the first `"model"` of its head and the last
    `"usage"` object of its tail (where every vendor puts it), each parsed alone."""
    found: dict[str, Any] = {}
    model = _MODEL.search(head)
    if model is not None:
        found["model"] = _loads(model.group(1))
    at = tail.rfind(b'"usage"')
    start = tail.find(b"{", at) if at >= 0 else -1
    depth = 0
    for end in range(start, len(tail)) if start >= 0 else ():
        depth += {123: 1, 125: -1}.get(tail[end], 0)  # { and }
        if depth == 0:
            found["usage"] = _loads(tail[start : end + 1])
            break
    return found


def _tokens(usage: dict[str, Any], *keys: str) -> int:
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 0


def _text_chars(event: dict[str, Any]) -> int:
    """Characters of generated text in one stream event (for a cut stream's estimate)."""
    delta = event.get("delta")
    if isinstance(delta, str):  # responses: response.output_text.delta
        return len(delta)
    if isinstance(delta, dict):  # anthropic: content_block_delta
        text = delta.get("text", delta.get("partial_json", delta.get("thinking")))
        return len(text) if isinstance(text, str) else 0
    choices = event.get("choices")
    if isinstance(choices, list):  # openai chat: chunk choices
        total = 0
        for choice in choices:
            piece = choice.get("delta") if isinstance(choice, dict) else None
            content = piece.get("content") if isinstance(piece, dict) else None
            total += len(content) if isinstance(content, str) else 0
        return total
    return 0
