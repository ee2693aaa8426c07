"""The handlers of `blindkey agent ...` and `blindkey broker serve` (the tree is in
cli/main.py; secrets and environments are in secrets.py and environment.py)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import emit_json, say, table
from blindkey.config.paths import Paths

if TYPE_CHECKING:
    from blindkey.broker.agents import AgentStore


def _agents(paths: Paths) -> AgentStore:
    from blindkey.broker.agents import AgentStore

    return AgentStore(paths.agents_file, paths.lock_file)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def cmd_agent_add(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.notify import put_in_force
    from blindkey.broker.policy_link import record

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
    from blindkey.broker.notify import put_in_force
    from blindkey.broker.policy_link import record

    _agents(paths).revoke(args.name)
    record(paths, "agent_revoke", [args.name])
    put_in_force(paths, None, f"agent {args.name} is revoked")
    say(f"agent {args.name} revoked; its token no longer works")
    return 0


def add_commands(sub: Subcommands) -> None:
    actions = action_group(sub, "agent", help="agent identities and their tokens")
    p = actions.add_parser("add", help="create an agent and print its token once")
    p.add_argument("name", metavar="NAME")
    json_flag(p, 'print {"agent": NAME, "token": TOKEN}')
    p.set_defaults(handler=cmd_agent_add)
    p = actions.add_parser("list", help="agents and whether they are revoked")
    json_flag(p)
    p.set_defaults(handler=cmd_agent_list)
    p = actions.add_parser("revoke", help="revoke an agent's token")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_agent_revoke)
