"""`python -m blindkey.broker serve --socket PATH`: how the proxy spawns the broker.

A parser of its own keeps the broker from importing the proxy's HTTP stack.
"""

import argparse

from blindkey.broker.cli import cmd_broker_serve
from blindkey.config.paths import resolve_paths

parser = argparse.ArgumentParser(prog="python -m blindkey.broker")
actions = parser.add_subparsers(dest="action", required=True)
serve = actions.add_parser("serve")
serve.add_argument("--socket")
serve.add_argument("--allow-uid", type=int, action="append", default=[])
arguments = parser.parse_args()
raise SystemExit(cmd_broker_serve(resolve_paths(), arguments))
