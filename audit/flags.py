"""`flags` on request records: what a human should look at, computed as records are
written (a few dict operations per record, no I/O).

- `new_host`: an allowed call used a secret on a host it was never used on before.
- `burst`: an agent's calls in the last window far above its own recent rate.
- `denied_streak`: 5 or more refusals of one agent within a minute.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

BURST_WINDOW = 10.0
BURST_MIN_CALLS = 50  # fewer calls in a window are never a burst
BURST_FACTOR = 10.0
BASELINE_WEIGHT = 0.2  # how fast the recent rate follows new windows
STREAK_SPAN = 60.0
STREAK_COUNT = 5


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
