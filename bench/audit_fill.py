"""A big audit, written fast: request records sealed by the audit's own chain and appended by
its own writer (audit/store.AuditLog), a batch per write, as a proxy that answered that many
calls would have left them. A million proxy calls would take the bench an hour; this takes
seconds, and `audit verify` accepts every record.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindkey.audit.chain import dumps
from blindkey.audit.record import AuditRecord
from blindkey.audit.store import AuditLog, audit_file, audit_files

# The default `[audit] rotate_mb`: the proxy and the CLI rotate at this size too.
ROTATE_BYTES = 64 << 20
BATCH = 4096
# The records spread over this long before now, so time buckets and `--since` have data.
SPAN_S = 30 * 86400
AGENTS = ("claude", "codex", "ci-bot", "notebook")
HOSTS = ("api.openai.com", "api.github.com", "api.stripe.com", "hooks.slack.com")
PATHS = ("/v1/chat/completions", "/repos/acme/app/pulls", "/v1/charges", "/services/T0/B0")
SECRET_NAMES = tuple(f"BENCH_SECRET_{i:02d}" for i in range(50))


@dataclass
class Filled:
    records: int
    current_bytes: int
    files: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "current_file_mb": round(self.current_bytes / 2**20, 1),
            "files": self.files,
            "seconds": round(self.seconds, 1),
        }


def request_record(n: int, started: float) -> dict[str, Any]:
    """The nth call of a busy home: mostly allowed, some refused, a few flagged."""
    host = HOSTS[n % len(HOSTS)]
    record = AuditRecord(
        request_id=uuid.UUID(int=n).hex,
        method="POST" if n % 3 else "GET",
        url=f"https://{host}{PATHS[n % len(PATHS)]}",
        agent=AGENTS[n % len(AGENTS)],
        host=host,
        secrets=[SECRET_NAMES[n % len(SECRET_NAMES)]],
        styles=["bearer"],
        status=200,
        bytes_in=120 + n % 900,
        bytes_out=300 + n % 5000,
        started=started,
    )
    if n % 17 == 0:
        record.block("host_not_allowlisted", 403)
    values = record.finish()
    values["duration_ms"] = float(n % 400)
    values["flags"] = ["new_host"] if n % 5000 == 0 else []
    return values


def _records(count: int, first: int, until: float) -> Iterator[dict[str, Any]]:
    step = SPAN_S / max(1, count)
    begin = until - SPAN_S
    for n in range(first, first + count):
        yield request_record(n, begin + (n - first) * step)


def fill(
    audit_dir: Path, count: int, *, full_current: bool = False, rotate_bytes: int = ROTATE_BYTES
) -> Filled:
    """Append `count` records to the audit in `audit_dir`, rotating as the proxy does. With
    `full_current`, go on until the current file is as big as it gets before it rotates."""
    began = time.perf_counter()
    log = AuditLog(audit_dir, rotate_bytes=rotate_bytes, keep_days=0)
    path = audit_file(audit_dir)
    written = 0
    try:
        log.open()
        first = log.refresh().seq + 1
        records = _records(count, first, time.time())
        while written < count:
            batch = list(itertools.islice(records, BATCH))
            log.append(batch)
            written += len(batch)
        if full_current:
            written += _top_up(log, path, first + written, rotate_bytes)
    finally:
        log.close()
    files = [p for p in audit_files(audit_dir) if p.exists()]
    return Filled(written, path.stat().st_size, len(files), time.perf_counter() - began)


def _top_up(log: AuditLog, path: Path, n: int, rotate_bytes: int) -> int:
    """Records until one more would rotate the current file: the file is then full."""
    added = 0
    while True:
        batch = [request_record(n + added + i, time.time()) for i in range(64)]
        # seq, hash and chain come on top (some 170 bytes), and a checkpoint record every
        # [audit] checkpoint_every: an estimate short of the truth would overshoot, rotate
        # and start the file over, for ever.
        line = max(len(dumps(r)) for r in batch) + 256
        room = (rotate_bytes - path.stat().st_size) // line - 1
        if room <= 0:
            return added
        more = min(BATCH, int(room))
        log.append([request_record(n + added + i, time.time()) for i in range(more)])
        added += more
