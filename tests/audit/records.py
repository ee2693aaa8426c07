"""Audit records for reader and CLI tests, built by the writer's own record type so the
fixtures always carry exactly the fields the proxy writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from blindkey.audit.record import AuditRecord


def make_record(request_id: str, moment: datetime, **fields: Any) -> dict[str, Any]:
    record = AuditRecord(
        request_id=request_id,
        method="GET",
        url=f"https://api.github.com/{request_id}",
        agent="alice",
        env="development",
        host="api.github.com",
        secrets=["GITHUB_TOKEN"],
        styles=["bearer"],
        status=200,
        bytes_out=100,
        started=moment.timestamp(),
    ).finish()
    record["duration_ms"] = 12.5
    record.update(fields)
    return record
