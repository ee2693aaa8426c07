"""`blindkey service broker`: `broker serve` as blindkey-broker.service runs it, speaking
systemd's notify protocol: READY=1 once its socket accepts a connection, WATCHDOG=1 from
its event loop, STOPPING=1 when it ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from pathlib import Path

from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.proxy.systemd import ServiceNotifier

LISTEN_POLL = 0.02


def cmd_service_broker(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    socket_path = (
        Path(args.socket) if args.socket else paths.broker_socket_at(settings.broker.socket)
    )
    uids = frozenset({os.getuid(), *settings.broker.allowed_uids, *args.allow_uid})
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve_notified(paths, socket_path, uids, ServiceNotifier()))
    return 0


async def serve_notified(
    paths: Paths, socket_path: Path, uids: frozenset[int], notifier: ServiceNotifier
) -> None:
    from blindkey.broker.server import serve_broker

    serving = asyncio.get_running_loop().create_task(
        serve_broker(paths, socket_path, uids), name="broker-serve"
    )
    try:
        if await _listening(socket_path, serving):
            notifier.ready(f"serving {socket_path}")
        await serving
    finally:
        await notifier.stopping()


async def _listening(socket_path: Path, serving: asyncio.Task[None]) -> bool:
    """True once the socket accepts a connection; False if the broker ended first.

    A connect, not the file's existence: a socket file left by a previous run exists
    before the new broker listens."""
    while not serving.done():
        try:
            _, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError:
            await asyncio.wait({serving}, timeout=LISTEN_POLL)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False
