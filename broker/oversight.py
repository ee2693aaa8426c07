"""Where the audit's copies and approvers' notices go ([audit.ship], [notify]), as policy.

An agent that can write config.toml and wants to act unseen does not widen what it can
reach: it turns the SIEM's copy off, re-points it at a receiver of its own, or sends the
approvers' notices nowhere. So once an approver exists, any change of these tables waits
for a code like a widening (policy.widenings), and every change is in the reload record.

The view never holds a URL whole: a Slack incoming webhook's path is its credential, and
reload records are written to the audit. A URL is kept as scheme://host:port plus a short
digest of the rest, enough to tell that it changed and never enough to use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any
from urllib.parse import urlsplit

from blindkey.config.model import Settings

# The view's key of each table, and its name in config.toml.
TABLES = {"audit_ship": "audit.ship", "notify": "notify"}


def masked(value: object) -> object:
    """A URL cut to where it points; any other value as it is."""
    if not isinstance(value, str) or "://" not in value:
        return value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, None
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]
    if parts is None or not parts.hostname:
        return f"(not a URL, sha256 {digest})"
    where = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port is not None else "")
    return where if value.rstrip("/") == where else f"{where}/... (sha256 {digest})"


def oversight_view(settings: Settings) -> dict[str, Any]:
    """Every key of [audit.ship] and [notify] (new keys are included as they are added)."""
    return {
        key: {k: masked(v) for k, v in dataclasses.asdict(getattr(settings, key)).items()}
        for key in TABLES
    }


def oversight_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Each key of those tables that differs, in words; a baseline approved before these
    tables were part of the policy has none to compare and gives none."""
    found = []
    for key, section in TABLES.items():
        old, new = before.get(key), after.get(key) or {}
        if old is None:
            continue
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                found.append(
                    f"[{section}] {name} changes from {old.get(name)!r} to {new.get(name)!r}"
                    ": where audit copies and approvers' notices go"
                )
    return found
