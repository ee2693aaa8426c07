"""`blindkey secrets|agent|allowlist|broker`: the human's side of the broker's data."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from blindkey.broker import cli_env
from blindkey.broker.agents import AgentStore
from blindkey.broker.cli_secrets import (
    MIN_REDACTABLE,
    cmd_secrets_delete,
    cmd_secrets_diff,
    cmd_secrets_list,
    cmd_secrets_pull,
    cmd_secrets_push,
    cmd_secrets_set,
)
from blindkey.broker.notify import put_in_force
from blindkey.config.arguments import Subcommands
from blindkey.config.console import emit_json, say, table
from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.hosts import AllowEntry, HostError
from blindkey.config.loader import load_settings
from blindkey.config.model import TIERS, Settings
from blindkey.config.paths import Paths


def _parse_entries(entries: list[str]) -> list[AllowEntry]:
    parsed = []
    for text in entries:
        try:
            parsed.append(AllowEntry.parse(text))
        except HostError as exc:
            raise BlindkeyError(f"invalid allowlist entry: {exc}") from exc
    return parsed


def cmd_allowlist_add(paths: Paths, args: argparse.Namespace) -> int:
    entries = _parse_entries(args.entries)

    def change(document: Any) -> None:
        section = toml_table(document, "allowlist")
        current = [str(h) for h in section.get("hosts", [])]
        known = {AllowEntry.parse(h) for h in current}
        added = []
        for entry in entries:
            if entry not in known:
                known.add(entry)
                added.append(entry.text)
        section["hosts"] = string_array(current + added)

    settings = edit_config(paths.config_file, paths.lock_file, change)
    put_in_force(paths, settings, "the allowlist is saved", config=True)
    say(f"allowlisted: {', '.join(e.text for e in entries)}")
    return 0


def cmd_allowlist_remove(paths: Paths, args: argparse.Namespace) -> int:
    entries = _parse_entries(args.entries)
    drop = set(entries)

    def change(document: Any) -> None:
        section = toml_table(document, "allowlist")
        current = [str(h) for h in section.get("hosts", [])]
        present = {AllowEntry.parse(h) for h in current}
        missing = [e.text for e in entries if e not in present]
        if missing:
            raise BlindkeyError(f"not on the allowlist: {', '.join(missing)}")
        section["hosts"] = string_array([h for h in current if AllowEntry.parse(h) not in drop])

    settings = edit_config(paths.config_file, paths.lock_file, change)
    put_in_force(paths, settings, "the allowlist is saved", config=True)
    say(f"removed: {', '.join(sorted(args.entries))}")
    return 0


def cmd_allowlist_list(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    rows = [
        {"entry": e.text, "scheme": e.scheme, "host": str(e.pattern), "port": e.port}
        for e in settings.allowlist.entries
    ]
    if args.json:
        emit_json(rows)
    elif not rows:
        say("the allowlist is empty; add a host with: blindkey allowlist add api.github.com")
    else:
        table(
            [[r["entry"], r["scheme"], r["host"], str(r["port"])] for r in rows],
            ["ENTRY", "SCHEME", "HOST", "PORT"],
        )
    return 0


def _agents(paths: Paths) -> AgentStore:
    return AgentStore(paths.agents_file, paths.lock_file)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def cmd_agent_add(paths: Paths, args: argparse.Namespace) -> int:
    token = _agents(paths).add(args.name)
    # Out before anything else can fail: it is shown only this once.
    if args.json:
        emit_json({"agent": args.name, "token": token})
    else:
        say(f"agent {args.name} added. Its token, shown this once:\n\n  {token}\n")
        say("Send it as the X-AS-Agent-Token header; only its hash is stored.")
    sys.stdout.flush()
    put_in_force(paths, None, f"agent {args.name} is added")
    return 0


def cmd_agent_list(paths: Paths, args: argparse.Namespace) -> int:
    rows = [
        {"agent": a.name, "created": _iso(a.created), "revoked": _iso(a.revoked)}
        for a in sorted(_agents(paths).load().values(), key=lambda a: a.name)
    ]
    if args.json:
        emit_json(rows)
    elif not rows:
        say("no agents; add one with: blindkey agent add NAME")
    else:
        table(
            [[r["agent"], r["created"] or "", r["revoked"] or "active"] for r in rows],
            ["AGENT", "CREATED", "REVOKED"],
        )
    return 0


def cmd_agent_revoke(paths: Paths, args: argparse.Namespace) -> int:
    _agents(paths).revoke(args.name)
    put_in_force(paths, None, f"agent {args.name} is revoked")
    say(f"agent {args.name} revoked; its token no longer works")
    return 0


def cmd_broker_serve(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.server import serve_broker

    try:
        settings = load_settings(paths.config_file)
    except BlindkeyError:
        if not args.socket:
            raise
        # Spawned by a proxy: serve anyway; the broker keeps reporting the bad file (ping)
        # and picks the file up once it is fixed.
        settings = Settings()
    socket_path = Path(args.socket or settings.broker.socket or paths.broker_socket)
    uids = frozenset({os.getuid(), *settings.broker.allowed_uids, *args.allow_uid})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        pass
    asyncio.run(serve_broker(paths, socket_path, uids))
    return 0


def _remote_options(p: argparse.ArgumentParser, *, writes: bool) -> None:
    p.add_argument("--env", help="environment (default: the active one)")
    p.add_argument("--all", action="store_true", help="every environment")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only show what would change" if writes else "diff never writes; accepted for scripts",
    )
    if writes:
        p.add_argument("--yes", action="store_true", help="confirm writing into production")
    p.add_argument("--json", action="store_true", help="print JSON only")


def register(sub: Subcommands) -> None:
    secrets = sub.add_parser(
        "secrets",
        help="store, list and delete secret values",
        description="Values live in the vault; metadata in config.toml.",
    )
    s = secrets.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = s.add_parser(
        "set",
        help="store a value (read from stdin, or prompted without echo)",
        description="Store NAME's value. Pipe it on stdin "
        '(`printf %s "$TOKEN" | blindkey secrets set GITHUB_TOKEN`) or type it '
        "at the hidden prompt. NAME=VALUE works but leaves the value in history.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--env", help="environment (default: the active one)")
    p.add_argument("--tier", choices=TIERS, help="open (default), controlled or restricted")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="bind the secret to this host (repeatable; *.example.com allowed)",
    )
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME",
        help="only this agent may use it (repeatable; default: every agent)",
    )
    p.add_argument(
        "--allow-short",
        action="store_true",
        help=f"store a value shorter than {MIN_REDACTABLE} characters, which cannot be "
        "redacted safely; every use is then marked in the audit",
    )
    p.set_defaults(func=cmd_secrets_set)
    p = s.add_parser("list", help="names, environments and policy (never values)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_secrets_list)
    p = s.add_parser("delete", help="delete a value")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--env", help="environment (default: the active one)")
    p.set_defaults(func=cmd_secrets_delete)
    p = s.add_parser(
        "diff",
        help="names missing or different: between two environments, or local and [remote]",
        description="Values are compared by a keyed hash made for this run; none is shown. "
        "Exit status as diff(1): 0 when the same, 1 when anything differs.",
    )
    p.add_argument("--from", dest="from_env", metavar="ENV", help="with --to: compare these")
    p.add_argument("--to", dest="to_env", metavar="ENV")
    _remote_options(p, writes=False)
    p.set_defaults(func=cmd_secrets_diff)
    p = s.add_parser("push", help="copy local values that are new or changed to [remote]")
    _remote_options(p, writes=True)
    p.set_defaults(func=cmd_secrets_push)
    p = s.add_parser("pull", help="copy [remote] values that are new or changed to local")
    _remote_options(p, writes=True)
    p.set_defaults(func=cmd_secrets_pull)

    cli_env.register(sub)

    allow = sub.add_parser(
        "allowlist",
        help="where requests may go",
        description="Entries: host (https:443), host:port (https), "
        "*.example.com (subdomains), http://host[:port], https://host:port.",
    )
    a = allow.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = a.add_parser("add", help="permit one or more destinations")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    p.set_defaults(func=cmd_allowlist_add)
    p = a.add_parser("remove", help="stop permitting destinations")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    p.set_defaults(func=cmd_allowlist_remove)
    p = a.add_parser("list", help="show the allowlist")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_allowlist_list)

    agent = sub.add_parser("agent", help="agent identities and their tokens")
    g = agent.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = g.add_parser("add", help="create an agent and print its token once")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help='print {"agent": NAME, "token": TOKEN}')
    p.set_defaults(func=cmd_agent_add)
    p = g.add_parser("list", help="agents and whether they are revoked")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_agent_list)
    p = g.add_parser("revoke", help="revoke an agent's token")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_agent_revoke)

    broker = sub.add_parser("broker", help="run the secret broker yourself")
    b = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = b.add_parser("serve", help="serve the broker socket in the foreground")
    p.add_argument("--socket", help="socket path (default: the runtime directory)")
    p.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="also accept connections from this uid (repeatable)",
    )
    p.set_defaults(func=cmd_broker_serve)


__all__ = ["UsageError", "register"]
