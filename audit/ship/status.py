"""`audit ship status`: per destination, the last record it confirmed, how far it is
behind the audit (records, and the age of the oldest record it has not received) and the
last error, read from the cursor files the shipper writes (no running proxy needed)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from blindkey.audit.ship.cursor import cursor_file, load_cursor
from blindkey.audit.ship.shipping import destinations
from blindkey.audit.ship.source import Source
from blindkey.audit.store import audit_files, head_of_file, read_pruned
from blindkey.config.outputs import ShipSettings


def audit_head(audit_dir: Path) -> int:
    """The seq of the audit's last record (0 when there is none)."""
    for path in reversed(audit_files(audit_dir)):
        head = head_of_file(path)
        if head is not None:
            return head.seq
    pruned = read_pruned(audit_dir)
    return pruned.seq if pruned is not None else 0


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def ship_status(
    audit_dir: Path, settings: ShipSettings, now: float | None = None
) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    head = audit_head(audit_dir)
    found = []
    for kind, url in destinations(settings).items():
        cursor = load_cursor(cursor_file(audit_dir, kind), url)
        lag = max(0, head - cursor.at.seq)
        waiting = 0.0
        if lag:
            batch = Source(audit_dir, sync=False).read(cursor.at, 1, 1 << 16)
            if batch.records:
                waiting = max(0.0, now - _epoch(batch.records[0].values["ts"]))
        found.append(
            {
                "destination": kind,
                "url": url,
                "shipped_seq": cursor.at.seq,
                "audit_seq": head,
                "lag_records": lag,
                "lag_seconds": round(waiting, 3),
                "shipped_at": cursor.shipped_at,
                "last_error": cursor.error,
                "error_at": cursor.error_at,
                "note": cursor.note,
            }
        )
    return found
