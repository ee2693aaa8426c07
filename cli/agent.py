"""The handlers of `blindkey agent ...` and `blindkey broker serve` (the tree is in
cli/main.py; secrets and environments are in secrets.py and environment.py)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import emit_json, say, table
from blindkey.config.paths import Paths

if TYPE_CHECKING:
    from blindkey.broker.agents import AgentRecord, AgentStore


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


def _row(a: AgentRecord) -> dict[str, Any]:
    row: dict[str, Any] = {"agent": a.name, "created": _iso(a.created), "revoked": _iso(a.revoked)}
    if a.narrowed is not None:
        n = a.narrowed
        row.update(parent=n.parent, expires=_iso(n.expires), secrets=list(n.secrets),
                   hosts=list(n.hosts), methods=list(n.methods), paths=list(n.paths))  # fmt: skip
    return row


def _state(a: AgentRecord, live: dict[str, AgentRecord], now: float) -> str:
    if a.revoked is not None:
        return f"revoked {_iso(a.revoked)}"
    if a.narrowed is None:
        return "active"
    if a.token_sha256 not in live:
        return f"dead (agent {a.narrowed.parent} revoked or re-added)"
    return "expired" if now >= a.narrowed.expires else f"until {_iso(a.narrowed.expires)}"


def cmd_agent_list(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.agents import live_tokens

    agents = _agents(paths).load()
    ordered = sorted(agents.values(), key=lambda a: a.name)
    if args.json:
        emit_json([_row(a) for a in ordered])
    elif not ordered:
        say("no agents; add one with: blindkey agent add NAME")
    else:
        live, now = live_tokens(agents), time.time()
        table(
            [[a.name, _iso(a.created) or "", _state(a, live, now), _limits(a)] for a in ordered],
            ["AGENT", "CREATED", "STATE", "NARROWED TO"],
        )
    return 0


def _limits(a: AgentRecord) -> str:
    n = a.narrowed
    if n is None:
        return ""
    parts = [f"{k} {','.join(v)}" for k, v in (("secrets", n.secrets), ("hosts", n.hosts),
             ("methods", n.methods), ("paths", n.paths)) if v]  # fmt: skip
    return "; ".join(parts) or f"as {n.parent}"


def cmd_agent_token(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.notify import put_in_force
    from blindkey.broker.policy_link import record
    from blindkey.config.errors import UsageError
    from blindkey.config.hosts import AllowEntry
    from blindkey.config.model import SECRET_NAME
    from blindkey.config.request_rules import parse_method, parse_path_glob
    from blindkey.config.values import parse_duration

    try:
        ttl = parse_duration(args.ttl)
        for name in args.secret:
            if not SECRET_NAME.match(name):
                raise ValueError(f"{name!r} is not a secret name")
        hosts = tuple(str(AllowEntry.binding(h)) for h in args.host)
        methods = tuple(parse_method(m) for m in args.method)
        globs = tuple(parse_path_glob(p) for p in args.path)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    name, token = _agents(paths).narrow(args.name, ttl, tuple(args.secret), hosts, methods, globs)
    expires = _iso(time.time() + ttl)
    if args.json:
        emit_json({"agent": args.name, "token_name": name, "token": token, "expires": expires})
    else:
        say(f"a token of agent {args.name}, narrowed ({name}), until {expires}; shown once:\n")
        say(f"  {token}\n")
        say(f"It dies with {args.name} (`blindkey agent revoke {args.name}`), or alone: "
            f"`blindkey agent revoke {name}`.")  # fmt: skip
    sys.stdout.flush()
    record(paths, "agent_token", [args.name, name])
    put_in_force(paths, None, f"token {name} of agent {args.name} is added")
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
    p = actions.add_parser("list", help="agents, their narrowed tokens, and which still work")
    json_flag(p)
    p.set_defaults(handler=cmd_agent_list)
    p = actions.add_parser(
        "token",
        help="a token that can do only part of what NAME can, for a while",
        description="Print a token that acts as agent NAME with less: only the secrets, "
        "hosts, methods and paths given (each flag may repeat; one left out: as NAME), "
        "until --ttl. NAME's own policy still applies, so it never does more than NAME. It "
        "works with the proxy only, and dies when NAME is revoked or added again. For an "
        "orchestrator to hand a sub-agent.",
    )
    p.add_argument("name", metavar="NAME", help="the agent whose rights it narrows")
    p.add_argument("--ttl", default="1h", help='how long it works (default "1h"; at most 30 days)')
    p.add_argument("--secret", action="append", default=[], metavar="S", help="a secret it may use")
    p.add_argument("--host", action="append", default=[], metavar="H",
                   help="a host it may call (as [secrets.NAME] hosts: host, host:port, "
                   "http://host:port)")  # fmt: skip
    p.add_argument("--method", action="append", default=[], metavar="M", help="an HTTP method")
    p.add_argument("--path", action="append", default=[], metavar="P",
                   help="a path glob (`*` one segment, `**` any number)")  # fmt: skip
    json_flag(p, 'print {"agent", "token_name", "token", "expires"}')
    p.set_defaults(handler=cmd_agent_token)
    p = actions.add_parser(
        "revoke", help="revoke an agent's token (and every token narrowed from it)"
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_agent_revoke)
