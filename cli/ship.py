"""`blindkey audit ship status`: where the audit's copies stand (audit/ship/)."""

from __future__ import annotations

import argparse
import time

from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import emit_json, say, table
from blindkey.config.paths import Paths


def _ago(moment: float | None) -> str:
    return "never" if moment is None else f"{max(0.0, time.time() - moment):.0f}s ago"


def cmd_audit_ship_status(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.audit.ship.status import ship_status
    from blindkey.config.loader import load_settings

    settings = load_settings(paths.config_file)
    found = ship_status(paths.audit_dir, settings.audit_ship)
    if args.json:
        emit_json(found)
        return 0
    if not found:
        say("no destinations: set [audit.ship] syslog, otlp or journald in config.toml")
        return 0
    rows = [
        (
            d["destination"],
            d["url"],
            d["shipped_seq"],
            d["lag_records"],
            f"{d['lag_seconds']:.1f}",
            _ago(d["shipped_at"]),
            d["last_error"] or "-",
        )
        for d in found
    ]
    table(rows, ("DESTINATION", "URL", "SHIPPED", "LAG", "LAG (S)", "LAST BATCH", "LAST ERROR"))
    for d in found:
        if d["note"]:
            say(f"{d['destination']}: {d['note']}")
    return 0


def add_commands(audit_actions: Subcommands) -> None:
    actions = action_group(
        audit_actions,
        "ship",
        help="copies of the audit sent to syslog, OTLP and the journal ([audit.ship])",
        description="The running proxy sends each audit record to the destinations of "
        "[audit.ship] once, in order, from the audit file; a cursor per destination says "
        "what was delivered, so outages and restarts lose nothing.",
    )
    p = actions.add_parser(
        "status",
        help="per destination: the last seq shipped, the lag (records, seconds), the last error",
        description="The lag is the records written and not yet confirmed by the destination, "
        "and how old the oldest of them is; the last error stays until a batch gets through.",
    )
    json_flag(p)
    p.set_defaults(handler=cmd_audit_ship_status)
