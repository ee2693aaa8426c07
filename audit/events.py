"""Records of things that are not proxied requests: grants, refused codes, elevations,
`env`/`exec`/`mcp` uses, config changes. Written by whichever process saw the event (the
broker, a CLI command), appended to the same audit as the proxy's request records.

Every writer appends through audit/store.py under one flock (`audit.lock`), re-reading
the file's last record when another writer moved it on, so all of them continue one chain.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blindkey.audit.record import rfc3339
from blindkey.audit.store import AuditLog
from blindkey.config.errors import BlindkeyError

EVENTS = (
    "request",
    "grant",
    "grant_revoked",
    "grant_expired",
    "code_refused",
    "locked_out",
    "notify_failed",
    "elevate",
    "env",
    "exec",
    "mcp",
    "config",
    "tunnel",
    "token",
)


def event_record(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    return {"ts": rfc3339(time.time()), "event": event, **fields}


def append_event(audit_dir: Path, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Append one event record durably (fsync'd) and return it, with its seq and chain."""
    record = event_record(event, fields)
    log = AuditLog(audit_dir)
    try:
        log.append([record])
        log.sync()
    except PermissionError as exc:
        raise BlindkeyError(
            f"cannot write the audit in {audit_dir} ({exc.strerror}): run this as the user "
            "that runs the proxy"
        ) from exc
    except OSError as exc:
        raise BlindkeyError(f"cannot write the audit in {audit_dir}: {exc.strerror}") from exc
    finally:
        log.close()
    return record
