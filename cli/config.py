"""`blindkey config check|approve`: validate config.toml, and a human's consent to a
hand-edited config.toml that widens the approved policy."""

from __future__ import annotations

import argparse
from pathlib import Path

from blindkey.cli.approvals import approver_code, exit_for_refusal
from blindkey.config.arguments import Subcommands, action_group
from blindkey.config.console import say
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths


def cmd_config_check(paths: Paths, args: argparse.Namespace) -> int:
    file = Path(args.config) if args.config else paths.config_file
    settings = load_settings(file)
    say(
        f"{file}: ok ({len(settings.allowlist.entries)} allowlist entries, "
        f"{len(settings.secrets)} secret policies, backend {settings.backend}, "
        f"environment {settings.active_env})"
    )
    return 0


@exit_for_refusal
def cmd_config_approve(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.notify import put_in_force
    from blindkey.broker.policy_link import accept, record

    result = accept(paths, "approve", None, args.by, args.code)
    record(
        paths,
        "reload",
        result.get("names") or [],
        result.get("before"),
        result.get("after"),
        result.get("approver"),
        via="approve",
    )
    put_in_force(paths, None, "config.toml is approved", config=True)
    widened = result.get("widened") or []
    say("config.toml approved" + (f": {'; '.join(widened)}" if widened else " (nothing widened)"))
    return 0


def add_commands(sub: Subcommands) -> None:
    actions = action_group(sub, "config", help="validate the configuration")
    p = actions.add_parser("check", help="validate config.toml (exit 1 with the reason if invalid)")
    p.add_argument("--config", metavar="FILE", help="file to check (default: the home's)")
    p.set_defaults(handler=cmd_config_check, needs_home=False)
    p = actions.add_parser(
        "approve", help="accept a hand-edited config.toml that widens the approved policy"
    )
    approver_code(p)
    p.set_defaults(handler=cmd_config_approve)
