"""One read of the audit for every destination: the shippers of one process move in step
(woken together, confirmed within moments of each other), so the second one to ask for
the records after a position is given the batch the first one read, not a second read and
parse of the same lines. A batch for a position is the same whoever asks; one read earlier
may stop short of records written since, which the next batch then holds.
"""

from __future__ import annotations

import threading
from pathlib import Path

from blindkey.audit.ship.cursor import Position
from blindkey.audit.ship.source import Batch, Source

KEEP = 4  # batches kept: destinations a few batches apart still share


class SharedSource:
    def __init__(self, audit_dir: Path, *, sync: bool = True) -> None:
        self.source = Source(audit_dir, sync=sync)
        self.lock = threading.Lock()  # a second reader waits for the first one's batch
        self.recent: dict[tuple[Position, int, int], Batch] = {}

    def read(self, after: Position, max_records: int, max_bytes: int) -> Batch:
        key = (after, max_records, max_bytes)
        with self.lock:
            batch = self.recent.get(key)
            if batch is not None:
                return batch
            batch = self.source.read(after, max_records, max_bytes)
            if batch.records:
                self.recent[key] = batch
                while len(self.recent) > KEEP:
                    del self.recent[next(iter(self.recent))]
            return batch
