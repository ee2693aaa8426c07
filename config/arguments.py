"""What every command line shares: the parser class and the argument types.

A bad value is refused by the parser with one line naming the flag and what it takes, and
exit 2, before anything is read or changed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TypeAlias


class CommandParser(argparse.ArgumentParser):
    """A parser whose sub-commands report their own usage errors.

    argparse hands arguments a sub-command does not know back to the top-level parser,
    which then prints the top-level usage; here the sub-command that received them says so
    with its own usage line.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def port(text: str) -> int:
    """A TCP port: 0 (pick a free one) to 65535."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range (0-65535)")
    return value


def count(text: str) -> int:
    """A count: 0 or more."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be 0 or more")
    return value


# What each package's `register` receives: the sub-command table of a CommandParser.
Subcommands: TypeAlias = "argparse._SubParsersAction[CommandParser]"


def positive(text: str) -> int:
    """A count of 1 or more."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more")
    return value


def json_flag(p: argparse.ArgumentParser, text: str = "print JSON only") -> None:
    p.add_argument("--json", action="store_true", help=text)


def action_group(sub: Subcommands, name: str, **kwargs: str) -> Subcommands:
    """A command whose actions are sub-commands (`blindkey NAME ACTION ...`)."""
    group = sub.add_parser(name, **kwargs)  # type: ignore[arg-type]
    return group.add_subparsers(dest="action", required=True, metavar="ACTION")
