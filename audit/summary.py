"""Figures for people: per secret, agent and host, calls, refusals by reason, bytes and
duration percentiles; calls over time by decision."""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from blindkey.audit.reader import record_time

# Refusals that are faults on the way, not decisions: the call was allowed, then failed.
FAILURES = frozenset(
    {
        "upstream_error",
        "upstream_timeout",
        "broker_unavailable",
        "audit_unavailable",
        "internal_error",
    }
)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile of sorted `values`."""
    if not values:
        return None
    rank = max(1, -(-len(values) * share // 1))
    return values[int(rank) - 1]


@dataclass
class Tally:
    calls: int = 0
    allowed: int = 0
    blocked: int = 0
    failed: int = 0  # upstream, broker, audit or internal faults (recorded `blocked`)
    cut: int = 0
    flagged: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    # Compact (8 bytes a call): a summary of millions of records stays in tens of MB.
    durations: array[float] = field(default_factory=lambda: array("d"))

    def add(self, record: dict[str, Any]) -> None:
        calls = weight(record)
        self.calls += calls
        if record.get("decision") == "blocked":
            reason = str(record.get("reason"))
            if reason in FAILURES:
                self.failed += calls
            else:
                self.blocked += calls
            self.refusals[reason] += calls
        else:
            self.allowed += calls
        self.cut += record.get("complete") is False
        self.flagged += bool(record.get("flags"))
        self.bytes_in += _int(record.get("bytes_in"))
        self.bytes_out += _int(record.get("bytes_out"))
        duration = record.get("duration_ms")
        if isinstance(duration, int | float):
            # Time a held call spent waiting for a human is not the service's own time.
            waited = record.get("waited_ms")
            waited = waited if isinstance(waited, int | float) else 0.0
            self.durations.append(max(0.0, float(duration) - float(waited)))

    def as_json(self) -> dict[str, Any]:
        ordered = sorted(self.durations)
        return {
            "calls": self.calls,
            "allowed": self.allowed,
            "blocked": self.blocked,
            "failed": self.failed,
            "refusals": dict(self.refusals.most_common()),
            "cut": self.cut,
            "flagged": self.flagged,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "p50_ms": percentile(ordered, 0.5),
            "p99_ms": percentile(ordered, 0.99),
        }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def weight(record: dict[str, Any]) -> int:
    """The calls a record stands for: `count` for the coalesced record of an unidentified
    caller's calls (audit/coalesce.py), else one."""
    return max(_int(record.get("count")), 1)


@dataclass
class Summary:
    total: Tally = field(default_factory=Tally)
    by_secret: dict[str, Tally] = field(default_factory=dict)
    by_agent: dict[str, Tally] = field(default_factory=dict)
    by_host: dict[str, Tally] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None
    # The span of the calls alone (the timeline's), events aside.
    calls_first: datetime | None = None
    calls_last: datetime | None = None

    def add(self, record: dict[str, Any]) -> None:
        event = str(record.get("event", "request"))
        if event == "request" and record.get("url") == "/health" and not record.get("host"):
            event = "health"  # a probe of the proxy, not a call through it
        self.events[event] += 1
        moment = record_time(record)
        self.first = moment if self.first is None else min(self.first, moment)
        self.last = moment if self.last is None else max(self.last, moment)
        if event != "request":
            return
        self.calls_first = moment if self.calls_first is None else min(self.calls_first, moment)
        self.calls_last = moment if self.calls_last is None else max(self.calls_last, moment)
        self.total.add(record)
        for name in record.get("secrets") or ():
            self.by_secret.setdefault(str(name), Tally()).add(record)
        self.by_agent.setdefault(str(record.get("agent") or "-"), Tally()).add(record)
        self.by_host.setdefault(str(record.get("host") or "-"), Tally()).add(record)

    def as_json(self) -> dict[str, Any]:
        def table(tallies: dict[str, Tally]) -> dict[str, Any]:
            ordered = sorted(tallies.items(), key=lambda item: (-item[1].calls, item[0]))
            return {name: tally.as_json() for name, tally in ordered}

        return {
            "from": self.first.isoformat().replace("+00:00", "Z") if self.first else None,
            "to": self.last.isoformat().replace("+00:00", "Z") if self.last else None,
            "requests": self.total.as_json(),
            "events": dict(self.events.most_common()),
            "by_secret": table(self.by_secret),
            "by_agent": table(self.by_agent),
            "by_host": table(self.by_host),
        }


def summarise(records: Iterable[dict[str, Any]]) -> Summary:
    summary = Summary()
    for record in records:
        summary.add(record)
    return summary


def timeline(
    records: Iterable[dict[str, Any]],
    first: datetime | None,
    last: datetime | None,
    buckets: int = 48,
) -> list[tuple[datetime, int, int]]:
    """(bucket start, allowed, blocked) over the calls between `first` and `last` (their
    span, from the summary), in equal buckets, in one pass over the records."""
    if first is None or last is None:
        return []
    width = max((last - first).total_seconds(), 1.0) / buckets
    counts = [[0, 0] for _ in range(buckets)]
    for record in records:
        if record.get("event", "request") != "request":
            continue
        moment = record_time(record)
        if moment < first or moment > last:
            continue
        index = min(int((moment - first).total_seconds() / width), buckets - 1)
        counts[index][record.get("decision") == "blocked"] += weight(record)
    return [
        (first + timedelta(seconds=i * width), allowed, blocked)
        for i, (allowed, blocked) in enumerate(counts)
    ]
