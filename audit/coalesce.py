"""The records of callers nobody identified, folded so a flood of them cannot fill the disk.

Any local process can send the proxy requests without a token, each refused and each worth
a record; written one by one they reached 5-9 MB/s, the disk filled, and the fail-closed
audit then refused every agent. So the calls of an unidentified caller (no valid token)
are kept per peer and outcome: the first of an interval is written as it comes, the rest
are counted and written at the interval's end as one record with `count`, the number of
calls it stands for. The disk then takes at most two records per peer and outcome per
interval, and at most MAX_PEERS peers have their own: beyond that, one bucket per outcome
holds every other peer's calls. Every loopback address is one peer (a local process can
bind any of 127.0.0.0/8).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from blindkey.audit.record import AuditRecord
from blindkey.audit.writer import AuditWriter

INTERVAL = 10.0
MAX_PEERS = 16
URL_LIMIT = 256  # an unidentified caller's URL says little more in 2 KB than in this
OTHER_PEERS = "*"

Key = tuple[str, str, str | None]


@dataclass
class _Bucket:
    last: AuditRecord | None = None
    count: int = 0


class Coalescer:
    def __init__(
        self, audit: AuditWriter, *, interval: float = INTERVAL, max_peers: int = MAX_PEERS
    ) -> None:
        self.audit = audit
        self.interval = interval
        self.max_peers = max_peers
        self.folded = 0  # calls counted into a summary instead of a record of their own
        self._buckets: dict[Key, _Bucket] = {}
        self._peers: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, record: AuditRecord, peer: str) -> None:
        """Write or count `record` (a call of a caller with no valid token)."""
        record.url = record.url[:URL_LIMIT]
        if peer not in self._peers and len(self._peers) >= self.max_peers:
            peer = OTHER_PEERS
        key = (peer, record.decision, record.reason)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = _Bucket()
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.interval, self.flush)
            if peer != OTHER_PEERS:
                self._peers.add(peer)
                # Held if the disk refuses it: a refusal injects nothing, so nobody waits.
                self.audit.seal(record)
                return
        else:
            self.folded += 1
        bucket = self._buckets[key]
        bucket.last = record
        bucket.count += 1

    def flush(self) -> None:
        """Write the interval's summaries (also at shutdown, before the audit closes)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        buckets, self._buckets = self._buckets, {}
        self._peers.clear()
        for bucket in buckets.values():
            if bucket.last is not None:
                self.audit.seal(bucket.last, count=bucket.count)
