"""The handlers of `blindkey policy ...`: what the broker would decide of a call, and what
a config would change of the calls on the record (the tree is in cli/main.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import emit_json, say, table
from blindkey.config.paths import Paths


def _tested(paths: Paths, args: argparse.Namespace) -> dict[str, Any]:
    """The running broker's decision; with none running, the same code in-process."""
    from blindkey.broker.explain import explain
    from blindkey.broker.link import NotRunning, ask
    from blindkey.broker.state import BrokerState
    from blindkey.config.errors import BlindkeyError, UsageError
    from blindkey.config.loader import load_settings

    names = list(args.secret)
    try:
        reply = ask(paths, "explain", settings=load_settings(paths.config_file),
                    agent=args.agent, names=names, url=args.url, method=args.method)  # fmt: skip
    except NotRunning:
        state = BrokerState(paths)
        try:
            state.refresh()
            if state.last_error is not None:
                raise BlindkeyError(state.last_error) from None
            return explain(state, args.agent, names, args.url, args.method)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        finally:
            state.close()
    if "error" in reply and "decision" not in reply:
        raise BlindkeyError(str(reply.get("message", reply["error"])))
    reply.pop("id", None)
    return reply


def cmd_policy_test(paths: Paths, args: argparse.Namespace) -> int:
    result = _tested(paths, args)
    if args.json:
        emit_json(result)
        return 0
    if result["decision"] == "allowed":
        say(f"allowed ({result['rule']}; {result['message']})")
    else:
        say(f"blocked: {result['error']} by rule {result['rule']}\n  {result['message']}")
    if result.get("would_deny"):
        would = result["would_deny"]
        say(f"report mode: enforcing would refuse it ({would.get('error')}, {would.get('detail')})")
    return 0


def cmd_policy_replay(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.audit.reader import Filter, iter_all, parse_since
    from blindkey.broker.explain import replay
    from blindkey.config.errors import BlindkeyError
    from blindkey.config.loader import load_settings

    file = Path(args.config) if args.config else paths.config_file
    if not file.is_file():
        raise BlindkeyError(f"{file}: no such config file")
    settings = load_settings(file)
    records, _ = iter_all(paths.audit_dir, Filter(since=parse_since(args.since)))
    rows = list(replay(paths, settings, records))
    changed = [r for r in rows if r["changed"]]
    summary = {
        "replayed": len(rows),
        "changed": len(changed),
        "now_blocked": sum(1 for r in changed if r["now"] != "allowed"),
        "now_allowed": sum(1 for r in changed if r["now"] == "allowed"),
        "changes": changed,
    }
    if args.json:
        emit_json(summary)
        return 0
    say(f"{len(rows)} recorded calls since {args.since} decided again under "
        f"{file}: {len(changed)} would change")  # fmt: skip
    if changed:
        keys = ("ts", "agent", "method", "url", "was", "now", "rule")
        table(
            [[str(r[k])[:60] for k in keys] for r in changed],
            ["TIME", "AGENT", "METHOD", "URL", "WAS", "NOW", "RULE"],
        )
    return 0


def add_commands(sub: Subcommands) -> None:
    actions = action_group(sub, "policy", help="try policy on a call, or on the recorded calls")
    p = actions.add_parser(
        "test",
        help="what the broker would decide of one call, and the rule that decides it",
        description="Decides a call as the broker does (allowlist, bindings, tiers and "
        "grants, methods, paths, budgets; rates looked at, not counted) without making it.",
    )
    p.add_argument("--agent", required=True, metavar="NAME", help="the agent calling")
    p.add_argument("--method", required=True, metavar="M", help="the HTTP method")
    p.add_argument("--url", required=True, metavar="URL", help="the target URL")
    p.add_argument("--secret", action="append", default=[], metavar="S",
                   help="a secret the call injects (repeat for more)")  # fmt: skip
    json_flag(p, 'print {"decision", "error", "rule", "message", "would_deny"}')
    p.set_defaults(handler=cmd_policy_test)
    p = actions.add_parser(
        "replay",
        help="decide recorded calls again under this (or a proposed) config; show changes",
        description="Every request on the record since --since whose decision policy made "
        "(allowed, or refused by a rule) is decided again under --config (default: the "
        "current config.toml), rates at the records' own times. Grants are not replayed "
        "(allowed then, needing a grant now, is no change); budgets are not replayed.",
    )
    p.add_argument("--since", default="7d", help="1h, 30m, 7d or 2026-11-21T10:00Z (default 7d)")
    p.add_argument("--config", metavar="FILE", help="a proposed config.toml")
    json_flag(p, 'print {"replayed", "changed", "now_blocked", "now_allowed", "changes": [...]}')
    p.set_defaults(handler=cmd_policy_replay)
