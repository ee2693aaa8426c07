"""`blindkey broker serve`: the secret broker in the foreground, run by a human or a service
manager (the proxy spawns it as `python -m blindkey.broker serve`, with the same flags)."""

from __future__ import annotations

import argparse

from blindkey.broker import serve
from blindkey.config.arguments import Subcommands, action_group
from blindkey.config.paths import Paths


def cmd_broker_serve(paths: Paths, args: argparse.Namespace) -> int:
    return serve.serve(paths, args.socket, args.allow_uid)


def add_commands(sub: Subcommands) -> None:
    actions = action_group(sub, "broker", help="run the secret broker yourself")
    p = actions.add_parser("serve", help="serve the broker socket in the foreground")
    serve.add_arguments(p)
    p.set_defaults(handler=cmd_broker_serve)
