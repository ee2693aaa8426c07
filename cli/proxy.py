"""`blindkey proxy start|stop|status|reload|logs`: run and inspect the daemon, and read the
audit trail, filtered, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from blindkey.config.arguments import Subcommands, action_group, count, json_flag, port
from blindkey.config.console import emit_json, say
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths


def cmd_proxy_start(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.proxy import daemon, detach

    if args.foreground:
        return daemon.run_foreground(paths, args.host, args.port, args.allow_remote)
    current = detach.start_detached(paths, args.host, args.port, args.allow_remote)
    say(
        f"blindkey proxy running on http://{current.status.get('host')}:"
        f"{current.status.get('port')} (pid {current.pid})"
    )
    return 0


def cmd_proxy_stop(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.proxy import lifecycle

    pid = lifecycle.stop(paths)
    say("the proxy was not running" if pid is None else f"stopped the proxy (pid {pid})")
    return 0


def cmd_proxy_status(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.audit.printable import printable
    from blindkey.proxy import lifecycle

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
    from blindkey.proxy import lifecycle

    status = lifecycle.reload(paths)
    if status.get("config_error"):
        raise BlindkeyError(
            f"config refused, the running configuration is kept: {status['config_error']}"
        )
    say("configuration reloaded")
    return 0


def _line(record: dict[str, Any]) -> str:
    from blindkey.audit.printable import event_detail

    if record.get("event", "request") != "request":
        # Grants, exec, config changes...: their own fields, after the event's name.
        detail = event_detail(record)
        return f"{record.get('ts', '')}  {record.get('event')!s:7}  {detail}"
    secrets = ",".join(record.get("secrets") or []) or "-"
    outcome = record.get("status") if record.get("decision") == "allowed" else record.get("reason")
    if record.get("complete") is False:
        outcome = f"{outcome} cut"
    flags = f"  [{','.join(map(str, record['flags']))}]" if record.get("flags") else ""
    # One record standing for the calls of an unidentified caller over an interval.
    count = f"  x{record['count']}" if record.get("count") else ""
    return (
        f"{record.get('ts', '')}  {record.get('decision', '')!s:7}  {outcome!s:18}  "
        f"{record.get('agent') or '-'!s:12}  {secrets:20}  {record.get('method', '')} "
        f"{record.get('url', '')}  {record.get('duration_ms', 0)}ms{count}{flags}"
    )


def _print(record: dict[str, Any], as_json: bool) -> None:
    from blindkey.audit.printable import inert_json, printable

    if as_json:
        sys.stdout.write(inert_json(orjson.dumps(record).decode()) + "\n")
    else:
        say(printable(_line(record)))
    sys.stdout.flush()


def _print_array(records: Iterable[dict[str, Any]]) -> None:
    """A JSON array written one record at a time (the audit may not fit in memory)."""
    from blindkey.audit.printable import inert_json

    out = sys.stdout
    written = False
    for record in records:
        out.write(",\n" if written else "[\n")
        out.write(inert_json(orjson.dumps(record).decode()))
        written = True
    out.write("\n]\n" if written else "[]\n")


def cmd_logs(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.audit.reader import Filter, follow, iter_all, last_records, parse_since
    from blindkey.audit.writer import audit_file

    selection = Filter(
        secret=args.secret,
        agent=args.agent,
        status=args.status,
        since=parse_since(args.since) if args.since else None,
        flagged=bool(getattr(args, "flagged", False)),
    )
    path = audit_file(paths.audit_dir)
    records: Iterable[dict[str, Any]]
    if args.last is not None:
        # From the end back: the last N records cost N records, not the whole audit.
        records, start = last_records(paths.audit_dir, selection, max(args.last, 0))
    else:
        records, start = iter_all(paths.audit_dir, selection)
    if args.json and not args.follow:
        _print_array(records)
    else:
        for record in records:
            _print(record, args.json)
    if args.follow:
        try:
            for record in follow(path, selection, start):
                _print(record, args.json)
        except KeyboardInterrupt:
            return 0
    return 0


def add_commands(sub: Subcommands) -> None:
    actions = action_group(sub, "proxy", help="run and inspect the proxy daemon")
    p = actions.add_parser("start", help="start the proxy (returns once /health answers)")
    p.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    p.add_argument("--port", type=port, help="port (default from config: 8765; 0 picks one)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on a non-loopback --host: every caller then needs an agent token, and "
        "remote callers must be in [proxy] allowed_peers",
    )
    p.add_argument(
        "--foreground", action="store_true", help="stay attached (for systemd, launchd, make run)"
    )
    p.set_defaults(handler=cmd_proxy_start)
    p = actions.add_parser("stop", help="stop gracefully (drains calls for [limits] drain_timeout)")
    p.set_defaults(handler=cmd_proxy_stop)
    p = actions.add_parser("status", help="exit 0 when running, 3 when not")
    json_flag(p)
    p.set_defaults(handler=cmd_proxy_status)
    p = actions.add_parser("reload", help="re-read config.toml (a bad file is refused)")
    p.set_defaults(handler=cmd_proxy_reload)
    p = actions.add_parser(
        "logs",
        help="show audit records (oldest first)",
        description="Audit records, oldest first. With --json: a JSON array, or one object "
        "per line with --follow.",
    )
    p.add_argument("--last", type=count, metavar="N", help="only the last N records")
    p.add_argument("--secret", metavar="NAME", help="records that used this secret")
    p.add_argument("--agent", metavar="NAME", help="records of this agent")
    p.add_argument("--status", choices=("allowed", "blocked"), help="by decision")
    p.add_argument("--since", metavar="WHEN", help="1h, 30m, 2d or 2026-11-21T10:00Z")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.add_argument(
        "--flagged", action="store_true", help="only records with flags a human should look at"
    )
    json_flag(p)
    p.set_defaults(handler=cmd_logs)
