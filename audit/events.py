"""Records of things that are not proxied requests: grants, refused codes, elevations,
`env`/`exec`/`mcp` uses, config changes. Written by whichever process saw the event (the
broker, a CLI command), appended to the same audit as the proxy's request records.

Every writer takes an exclusive flock on the audit file for its append, so records of
several processes never interleave and each sees the one before it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.record import rfc3339
from blindkey.audit.writer import audit_file

EVENTS = (
    "request",
    "grant",
    "grant_revoked",
    "grant_expired",
    "code_refused",
    "locked_out",
    "elevate",
    "env",
    "exec",
    "mcp",
    "config",
)


def event_record(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    return {"ts": rfc3339(time.time()), "event": event, **fields}


def append_event(audit_dir: Path, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Append one event record durably (fsync'd) and return it."""
    record = event_record(event, fields)
    line = orjson.dumps(record) + b"\n"
    audit_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(audit_file(audit_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return record
