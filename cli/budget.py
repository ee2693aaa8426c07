"""The handlers of `blindkey budget ...`: what each agent spent on priced LLM calls this
UTC day and month, against its `[agents.NAME] budget` (the tree is in cli/main.py)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import emit_json, say, table
from blindkey.config.paths import Paths


def status_rows(paths: Paths) -> list[dict[str, Any]]:
    """The broker's word when it runs (it counts); else its file, read here."""
    from blindkey.broker.budget import Budgets
    from blindkey.broker.budget import status_rows as rows_of
    from blindkey.broker.link import NotRunning, ask
    from blindkey.config.errors import BlindkeyError
    from blindkey.config.loader import load_settings

    settings = load_settings(paths.config_file)
    try:
        reply = ask(paths, "budget", settings=settings)
    except NotRunning:
        caps = {name: policy.budget for name, policy in settings.agents.items()}
        return rows_of(Budgets(paths.state_dir / "budget.json", time.time), caps)
    if "error" in reply:
        raise BlindkeyError(str(reply.get("message", reply["error"])))
    return list(reply["agents"])


def _usd(spent: float, cap: float | None) -> str:
    return f"${spent:.4f}" + ("" if cap is None else f" / ${cap:g}")


def _row(r: dict[str, Any]) -> list[object]:
    above = r["approve_above_usd"]
    return [
        r["agent"],
        _usd(r["day_usd"], r["daily_usd"]),
        _usd(r["month_usd"], r["monthly_usd"]),
        "-" if above is None else f"${above:g}",
        r["calls"],
        r["unpriced_calls"],
        r["state"],
    ]


def cmd_budget_status(paths: Paths, args: argparse.Namespace) -> int:
    rows = status_rows(paths)
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        say("no agent has a budget or a priced call yet; set one with [agents.NAME] budget")
        return 0
    table(
        [_row(r) for r in rows],
        ["AGENT", "TODAY (UTC)", "THIS MONTH", "APPROVE ABOVE", "CALLS", "UNPRICED", "STATE"],
    )
    if any(r["unpriced_calls"] for r in rows):
        say('unpriced: calls of a model with no [prices."MODEL"] table; they count nothing')
    return 0


def add_commands(sub: Subcommands) -> None:
    actions = action_group(
        sub, "budget", help="what agents spent on LLM calls, against their budgets"
    )
    p = actions.add_parser(
        "status",
        help="each agent's spend this UTC day and month, its caps and whether it is past them",
        description='Spend is priced from [prices."MODEL"] (USD per million tokens) and '
        "counted by the broker per UTC day and month; [agents.NAME] budget = { daily_usd, "
        "monthly_usd, approve_above_usd } caps it (429 budget_exceeded; above "
        "approve_above_usd each secret needs a grant).",
    )
    json_flag(
        p,
        'print a list of {"agent", "day", "day_usd", "daily_usd", "month", "month_usd", '
        '"monthly_usd", "approve_above_usd", "calls", "unpriced_calls", "state"}',
    )
    p.set_defaults(handler=cmd_budget_status)
