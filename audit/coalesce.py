"""The records of callers nobody identified, folded so a flood of them cannot fill the disk.

Any local process can send the proxy requests without a token, each refused and each worth
a record; written one by one they reached 5-9 MB/s, the disk filled, and the fail-closed
audit then refused every agent. So the calls of unidentified callers (no valid token) are
written one by one only while the interval's BUDGET lasts (a browser page's few attempts
keep a record each); past it they are counted per peer and outcome, and each count is
written at the interval's end as one record with `count`, the number of calls it stands
for. An interval then writes at most BUDGET records plus one per peer and outcome, and at
most MAX_PEERS peers have their own counts: beyond that, one count per outcome holds every
other peer's calls. Every loopback address is one peer (a local process can bind any of
127.0.0.0/8). With the defaults a local flood writes about 40 records a half minute.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from blindkey.audit.record import AuditRecord
from blindkey.audit.writer import AuditWriter

INTERVAL = 30.0
BUDGET = 32
MAX_PEERS = 16
URL_LIMIT = 256  # an unidentified caller's URL says little more in 2 KB than in this
OTHER_PEERS = "*"

Key = tuple[str, str, str | None]


@dataclass
class _Count:
    last: AuditRecord
    count: int = 1


class Coalescer:
    def __init__(
        self,
        audit: AuditWriter,
        *,
        interval: float = INTERVAL,
        budget: int = BUDGET,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.audit = audit
        self.interval = interval
        self.budget = budget
        self.max_peers = max_peers
        self.folded = 0  # calls counted into a summary instead of a record of their own
        self._written = 0  # records of their own this interval
        self._counts: dict[Key, _Count] = {}
        self._peers: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, record: AuditRecord, peer: str) -> None:
        """Write or count `record` (a call of a caller with no valid token)."""
        record.url = record.url[:URL_LIMIT]
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
        if self._written < self.budget:
            self._written += 1
            # Held if the disk refuses it: a refusal injects nothing, so nobody waits.
            self.audit.seal(record)
            return
        self.folded += 1
        if peer not in self._peers:
            if len(self._peers) >= self.max_peers:
                peer = OTHER_PEERS
            else:
                self._peers.add(peer)
        key = (peer, record.decision, record.reason)
        counted = self._counts.get(key)
        if counted is None:
            self._counts[key] = _Count(record)
        else:
            counted.last = record
            counted.count += 1

    def flush(self) -> None:
        """Write the interval's counts (also at shutdown, before the audit closes)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        self._peers.clear()
        self._written = 0
        for counted in counts.values():
            self.audit.seal(counted.last, count=counted.count)
