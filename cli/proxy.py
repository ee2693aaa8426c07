"""The handlers of `blindkey proxy start|stop|status|reload` (the tree is in cli/main.py)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from blindkey.audit.printable import printable
from blindkey.config.console import emit_json, say
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths
from blindkey.proxy import lifecycle


def cmd_proxy_start(paths: Paths, args: argparse.Namespace) -> int:
    if args.foreground:
        return lifecycle.run_foreground(paths, args.host, args.port, args.allow_remote)
    current = lifecycle.start_detached(paths, args.host, args.port, args.allow_remote)
    say(
        f"blindkey proxy running on http://{current.status.get('host')}:"
        f"{current.status.get('port')} (pid {current.pid})"
    )
    return 0


def cmd_proxy_stop(paths: Paths, args: argparse.Namespace) -> int:
    pid = lifecycle.stop(paths)
    say("the proxy was not running" if pid is None else f"stopped the proxy (pid {pid})")
    return 0


def cmd_proxy_status(paths: Paths, args: argparse.Namespace) -> int:
    current = lifecycle.running(paths)
    if current is None:
        if args.json:
            emit_json({"running": False})
        else:
            say("blindkey proxy is not running")
        return lifecycle.EXIT_NOT_RUNNING
    info = lifecycle.describe(current, lifecycle.ask_broker(paths), paths)
    if args.json:
        emit_json(info)
        return 0
    # Errors quote files and stores an agent may write to: shown, never obeyed.
    for line in _status_lines(info):
        say(printable(line))
    return 0


def _status_lines(info: dict[str, Any]) -> Iterator[str]:
    yield (
        f"running: pid {info['pid']}, http://{info['host']}:{info['port']}, "
        f"up {info['uptime_s']}s, broker {info['broker']}, backend {info['backend']}, "
        f"environment {info['env']}"
    )
    if info["deployment"]:
        yield f"deployment: {info['deployment']}"
    if info["config_error"]:
        yield f"config refused (running configuration kept): {info['config_error']}"
    if not info["healthy"]:
        yield f"not serving: {info['broker_error'] or 'the proxy does not answer /health'}"
    if info["backend_error"]:
        yield f"secret store: {info['backend_error']} (cached values serve until cache_ttl)"
    if info["load_error"] and info["healthy"]:
        yield f"broker: {info['load_error']}: {info['load_error_hint']}"
    if info["approvals_error"]:
        yield f"approvals file unreadable, gated secrets refused: {info['approvals_error']}"
    audit = info["audit"]
    if not isinstance(audit, dict):
        return
    if audit.get("state") == "ok":
        yield f"audit: ok, {audit.get('seq')} records"
        return
    since = audit.get("since")
    when = (
        datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
        if isinstance(since, int | float)
        else "?"
    )
    yield (
        f"audit: {audit.get('state')} since {when}: {audit.get('error')}"
        f" ({audit.get('held')} records held, calls refused until it recovers)"
    )


def cmd_proxy_reload(paths: Paths, args: argparse.Namespace) -> int:
    status = lifecycle.reload(paths)
    if status.get("config_error"):
        raise BlindkeyError(
            f"config refused, the running configuration is kept: {status['config_error']}"
        )
    say("configuration reloaded")
    return 0
