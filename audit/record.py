"""The one decision record per request: fields fixed by INTERFACE.md, never a value."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def rfc3339(epoch: float) -> str:
    # Per request: the formatted second is reused, only the milliseconds change.
    whole = int(epoch)
    return _second(whole) + _MILLIS[int((epoch - whole) * 1000)]


_MILLIS = [f"{n:03d}Z" for n in range(1000)]
_CUT = (
    "the answer was cut before its end (shutdown, upstream reset or the agent went away): "
    "the agent did not get all of it"
)


@dataclass
class AuditRecord:
    request_id: str
    method: str
    url: str
    ts: str = ""
    agent: str | None = None
    env: str | None = None
    host: str | None = None
    secrets: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    decision: str = "allowed"
    reason: str | None = None
    status: int | None = None
    duration_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    redactions: int = 0
    short_secrets: list[str] = field(default_factory=list)
    # False when the answer the agent got was cut (shutdown, upstream reset, agent gone).
    complete: bool = True
    # Time a held call waited for a human (X-AS-Wait-Approval); part of duration_ms.
    waited_ms: float | None = None
    via: str | None = None  # "connect": a request inside a tunnel blindkey intercepted
    # [policy] mode = "report": the refusal a method, path or rate rule would have answered.
    would_deny: dict[str, object] | None = None
    # The canonical decision (smokescreen's): the address dialled (ip:port), the allowlist
    # entry that matched, and a sentence for people beside `reason`.
    peer: str | None = None
    rule: str | None = None
    detail: str | None = None
    # An LLM answer's usage: {"model", "input_tokens", "output_tokens", "cost_usd"}.
    usage: dict[str, object] | None = None
    started: float = field(default_factory=time.time, repr=False)
    _clock: float = field(default_factory=time.perf_counter, repr=False)

    def block(self, reason: str, status: int, detail: str | None = None) -> None:
        self.decision = "blocked"
        self.reason = reason
        self.status = status
        self.detail = detail

    def cut(self) -> None:
        """The answer began but did not end: what the agent got is not the whole of it."""
        self.complete = False
        if self.decision == "allowed":
            self.reason = "cut"
            self.detail = _CUT

    def _detail(self) -> str | None:
        if self.detail is not None or self.decision != "allowed" or self.rule is None:
            return self.detail
        where = f", dialled {self.peer}" if self.peer is not None else ""
        return f"allowed: {self.host} matched the allowlist entry {self.rule}{where}"

    def finish(self) -> dict[str, Any]:
        self.ts = rfc3339(self.started)
        # Microseconds rounded to the nearest, then as ms: round(x, 3) costs three times more.
        self.duration_ms = int((time.perf_counter() - self._clock) * 1_000_000 + 0.5) / 1000
        # Spelled out rather than dataclasses.asdict, which deep-copies: this runs per request.
        values: dict[str, Any] = {
            "ts": self.ts,
            "request_id": self.request_id,
            "event": "request",
            "agent": self.agent,
            "env": self.env,
            "method": self.method,
            "url": self.url,
            "host": self.host,
            "secrets": list(self.secrets),
            "styles": list(self.styles),
            "decision": self.decision,
            "reason": self.reason,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "redactions": self.redactions,
            # Secrets stored with --allow-short: their echoes may not have been caught.
            "short_secrets": list(self.short_secrets),
            "complete": self.complete,
            "peer": self.peer,
            "rule": self.rule,
            "detail": self._detail(),
        }
        if self.waited_ms is not None:
            values["waited_ms"] = self.waited_ms
        if self.via is not None:
            values["via"] = self.via
        if self.would_deny is not None:
            values["would_deny"] = self.would_deny
        if self.usage is not None:
            values["usage"] = self.usage
        return values
