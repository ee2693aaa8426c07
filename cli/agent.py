"""The handlers of `blindkey agent ...` and `blindkey broker serve` (the tree is in
cli/main.py; secrets and environments are in secrets.py and environment.py)."""

from __future__ import annotations

import argparse
import sys
import time

from blindkey.broker import serve
from blindkey.broker.agents import AgentStore
from blindkey.broker.notify import put_in_force
from blindkey.broker.policy_link import record
from blindkey.config.console import emit_json, say, table
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
    return serve.serve(paths, args.socket, args.allow_uid)
