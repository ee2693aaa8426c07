"""`flags` on request records: what a human should look at, computed as records are
written (a few dict operations per record, no I/O).

- `new_host`: an allowed call used a secret on a host it was never used on before.
- `burst`: an agent's calls in the last window far above its own recent rate.
- `denied_streak`: 5 or more refusals of one agent within a minute.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BURST_WINDOW = 10.0
BURST_MIN_CALLS = 50  # fewer calls in a window are never a burst
BURST_FACTOR = 10.0
BASELINE_WEIGHT = 0.2  # how fast the recent rate follows new windows
STREAK_SPAN = 60.0
STREAK_COUNT = 5
# The (secret, host) pairs seen so far, kept beside the audit: a start reads this small file
# instead of parsing the whole current audit file (64 MB took 1.4 s and 290 MB).
SEEN_FILE = "seen-hosts.json"


@dataclass
class _Rate:
    window_start: float
    count: int = 0
    baseline: float = 0.0  # calls per window, smoothed over earlier windows


@dataclass
class FlagTracker:
    clock: Callable[[], float] = time.monotonic
    seen: set[tuple[str, str]] = field(default_factory=set)
    rates: dict[str | None, _Rate] = field(default_factory=dict)
    refusals: dict[str | None, deque[float]] = field(default_factory=dict)

    def learn(self, records: Iterable[dict[str, Any]]) -> None:
        """Remember which secret was used on which host (records already written)."""
        for record in records:
            if record.get("decision") == "allowed" and isinstance(record.get("host"), str):
                for name in record.get("secrets") or ():
                    if isinstance(name, str):
                        self.seen.add((name, record["host"]))

    def flags(self, record: dict[str, Any]) -> list[str]:
        now = self.clock()
        agent = record.get("agent")
        found = []
        if record.get("decision") == "allowed":
            host = record.get("host")
            if isinstance(host, str):
                new = [(n, host) for n in record.get("secrets") or () if (n, host) not in self.seen]
                if new:
                    self.seen.update(new)
                    found.append("new_host")
        if self._burst(agent, now):
            found.append("burst")
        if record.get("decision") == "blocked" and self._streak(agent, now):
            found.append("denied_streak")
        return found

    def _burst(self, agent: str | None, now: float) -> bool:
        rate = self.rates.get(agent)
        if rate is None:
            rate = self.rates[agent] = _Rate(window_start=now)
        elapsed = now - rate.window_start
        if elapsed >= BURST_WINDOW:
            windows = int(elapsed // BURST_WINDOW)
            # The finished window, then the empty ones after it, each pull the rate along.
            rate.baseline += BASELINE_WEIGHT * (rate.count - rate.baseline)
            rate.baseline *= (1 - BASELINE_WEIGHT) ** (windows - 1)
            rate.window_start += windows * BURST_WINDOW
            rate.count = 0
        rate.count += 1
        return rate.count >= BURST_MIN_CALLS and rate.count > BURST_FACTOR * rate.baseline

    def _streak(self, agent: str | None, now: float) -> bool:
        times = self.refusals.get(agent)
        if times is None:
            times = self.refusals[agent] = deque()
        times.append(now)
        while times and times[0] <= now - STREAK_SPAN:
            times.popleft()
        return len(times) >= STREAK_COUNT


def load_seen(audit_dir: Path) -> set[tuple[str, str]] | None:
    """The pairs `save_seen` kept; None when there is no readable file."""
    try:
        data = orjson.loads((audit_dir / SEEN_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, list):
        return None
    return {
        (pair[0], pair[1])
        for pair in data
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
    }


def save_seen(audit_dir: Path, seen: set[tuple[str, str]]) -> None:
    """Replace the file whole. Not synced: lost in a crash, a pair is flagged new once more."""
    target = audit_dir / SEEN_FILE
    temporary = audit_dir / f".{SEEN_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(sorted(seen)))
        os.replace(temporary, target)


def allowed_records(path: Path) -> Iterator[dict[str, Any]]:
    """The allowed records of an audit file, a line at a time (only those lines parsed)."""
    with contextlib.suppress(OSError), path.open("rb") as handle:
        for line in handle:
            if b'"allowed"' not in line:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(line)
                if isinstance(value, dict):
                    yield value
