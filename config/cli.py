"""`blindkey config check`."""

from __future__ import annotations

import argparse
from pathlib import Path

from blindkey.config.arguments import Subcommands
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


def register(sub: Subcommands) -> None:
    config = sub.add_parser("config", help="validate the configuration")
    c = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = c.add_parser("check", help="validate config.toml (exit 1 with the reason if invalid)")
    p.add_argument("--config", metavar="FILE", help="file to check (default: the home's)")
    p.set_defaults(func=cmd_config_check, needs_home=False)
