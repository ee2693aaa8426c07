"""The command tree of `blindkey env` and `blindkey exec`: values released to a command's
environment or to OpenClaw's exec provider protocol.

Their handlers live in broker/ (they are the release channels' use cases) and are named
here as strings, imported when chosen.
"""

from __future__ import annotations

import argparse

from blindkey.config.arguments import Subcommands


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser(
        "env",
        help="run CMD with secrets as environment variables, its output redacted",
        description="Only secrets whose release includes env. CMD's stdout and stderr come "
        "back with every value redacted; blindkey exits with CMD's status.",
    )
    p.add_argument(
        "--secret",
        metavar="NAME",
        action="append",
        default=[],
        help="a secret to set (repeatable; default: every secret released to env)",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(handler="blindkey.broker.release_env:cmd_env")
    p = sub.add_parser(
        "exec",
        help="OpenClaw exec provider (protocol v1 on stdin/stdout)",
        description='Reads {"protocolVersion": 1, "provider": P, "ids": [...]} on stdin; only '
        "secrets whose release includes exec are answered.",
    )
    p.set_defaults(handler="blindkey.broker.release_exec:cmd_exec")
