"""The handlers of `blindkey agent ...` and `blindkey broker serve` (the tree is in
proxy/cli.py; secrets and environments are in cli_secrets.py and cli_env.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from blindkey.broker.agents import AgentStore
from blindkey.broker.notify import put_in_force
from blindkey.broker.policy_link import record
from blindkey.config.console import emit_json, say, table
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths


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
    record(paths, "agent_add", [args.name])
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
    record(paths, "agent_revoke", [args.name])
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
    socket_path = (
        Path(args.socket) if args.socket else paths.broker_socket_at(settings.broker.socket)
    )
    uids = frozenset({os.getuid(), *settings.broker.allowed_uids, *args.allow_uid})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        pass
    asyncio.run(serve_broker(paths, socket_path, uids))
    return 0
