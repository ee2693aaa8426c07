"""`python -m blindkey.proxy [--host H] [--port P] [--allow-remote]`: the daemon as `proxy
start` launches it, in the foreground. The start path alone: without the CLI's command
tree, whose imports took a third of the proxy's time to start."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from blindkey.config.errors import reported
from blindkey.config.paths import resolve_paths
from blindkey.proxy.daemon import run_foreground


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blindkey.proxy")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--allow-remote", action="store_true")
    args = parser.parse_args(argv)
    return reported(
        lambda: run_foreground(resolve_paths(), args.host, args.port, args.allow_remote)
    )


if __name__ == "__main__":
    raise SystemExit(main())
