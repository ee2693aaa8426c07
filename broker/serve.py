"""`blindkey broker serve` and `python -m blindkey.broker serve` (how the proxy spawns it):
the broker in the foreground on its socket. The module imports nothing of the proxy or the
CLI, so the broker process never loads the HTTP stack."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from blindkey.broker.home import ensure_home
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths, resolve_paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", help="socket path (default: the runtime directory)")
    p.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="also accept connections from this uid (repeatable)",
    )


def serve(paths: Paths, socket: str | None, allow_uid: Sequence[int]) -> int:
    from blindkey.broker.server import serve_broker

    try:
        settings = load_settings(paths.config_file)
    except BlindkeyError:
        if not socket:
            raise
        # Spawned by a proxy: serve anyway; the broker keeps reporting the bad file (ping)
        # and picks the file up once it is fixed.
        settings = Settings()
    socket_path = Path(socket) if socket else paths.broker_socket_at(settings.broker.socket)
    uids = frozenset({os.getuid(), *settings.broker.allowed_uids, *allow_uid})
    with contextlib.suppress(ImportError):  # uvloop is a dependency where it builds
        import uvloop

        uvloop.install()
    asyncio.run(serve_broker(paths, socket_path, uids))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blindkey.broker")
    actions = parser.add_subparsers(dest="action", required=True)
    add_arguments(actions.add_parser("serve", help="serve the broker socket in the foreground"))
    args = parser.parse_args(argv)
    paths = resolve_paths()
    try:
        ensure_home(paths)
        return serve(paths, args.socket, args.allow_uid)
    except BlindkeyError as exc:
        sys.stderr.write(f"blindkey: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
