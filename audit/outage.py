"""What the audit writer keeps while the audit cannot be written (disk full, file
unwritable): records held whole, in order, up to a limit; past it, the records that follow
(refusals: nothing is injected meanwhile) counted into one `event: gap` record, written
after the held ones. No answered call goes unaccounted, and `audit verify` reports how many
are known only by that count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from blindkey.audit.store import AuditLog

RETRY_BATCH = 256  # held records per write() when the backlog is written again


class Gap:
    """Records that came while the audit could not be written and the limit were held: kept
    as counts (by decision, reason and agent) and the span of time they cover."""

    KEYS = 64  # distinct reasons or agents counted by name; the rest under "other"

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None
        self.last: str | None = None
        self.reasons: dict[str, int] = {}
        self.agents: dict[str, int] = {}

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        moment = str(record.get("ts", ""))
        self.first = self.first or moment
        self.last = moment
        reason = str(record.get("reason") or record.get("decision") or record.get("event"))
        self._tally(self.reasons, reason)
        self._tally(self.agents, str(record.get("agent") or "-"))

    def _tally(self, table: dict[str, int], key: str) -> None:
        if key not in table and len(table) >= self.KEYS:
            key = "other"
        table[key] = table.get(key, 0) + 1

    def record(self, limit: int) -> dict[str, Any]:
        return {
            "ts": self.last,
            "event": "gap",
            "count": self.count,
            "first_ts": self.first,
            "last_ts": self.last,
            "reasons": self.reasons,
            "agents": self.agents,
            "detail": f"{self.count} records beyond the {limit} held while the audit could "
            "not be written are known only by these counts",
        }


class Backlog:
    """Records waiting for the audit to take them: held whole, then counted in a Gap."""

    def __init__(self) -> None:
        self.held: deque[dict[str, Any]] = deque()
        self.gap = Gap()

    def __len__(self) -> int:
        return len(self.held) + self.gap.count

    def add(self, record: dict[str, Any], limit: int) -> None:
        if len(self.held) >= limit or self.gap.count:
            self.gap.add(record)  # once counting began, every later record is counted
            return
        self.held.append(record)

    def write_to(self, log: AuditLog, written: Callable[[], None], limit: int) -> None:
        """Write what is held, in order, a batch per write() (halved while the disk has
        less room than a batch needs, so space freed for part of it is used at once); then
        the gap's record. `written` is told of each write. Raises OSError with the rest
        still here."""
        size = RETRY_BATCH
        while self.held:
            batch = [self.held[i] for i in range(min(size, len(self.held)))]
            try:
                log.append(batch)
            except OSError:
                if size == 1:
                    raise
                size //= 2
                continue
            for _ in batch:
                self.held.popleft()
            written()
        if self.gap.count:
            log.append([self.gap.record(limit)])
            self.gap = Gap()
            written()

    def records(self, limit: int) -> list[dict[str, Any]]:
        """Everything waiting, as records (the gap's count as its record)."""
        return [*self.held, *([self.gap.record(limit)] if self.gap.count else [])]
