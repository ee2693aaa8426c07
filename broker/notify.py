"""Tell a running broker that the CLI changed something, and wait until it has applied it.

The broker also notices changed files by itself within a fraction of a second; this makes
the change take effect before the command returns, so no request that starts afterwards
can use an old value. No broker, or one we may not reach: nothing to tell.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import orjson

from blindkey.broker.protocol import MAX_FRAME, PUSH_ID, encode
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths
from blindkey.config.settings import Settings, load_settings

TIMEOUT = 2.0


def broker_socket(paths: Paths, settings: Settings) -> Path:
    return Path(settings.broker.socket) if settings.broker.socket else paths.broker_socket


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def notify_broker(
    paths: Paths, settings: Settings | None, changed: Iterable[tuple[str, str]] = ()
) -> bool:
    """True when a broker applied the change before answering."""
    if settings is None:
        try:
            settings = load_settings(paths.config_file)
        except BlindkeyError:
            # The change itself is made; a broken config must not make it look failed.
            settings = Settings()
    request = {"id": 1, "op": "refresh", "changed": [[env, name] for env, name in changed]}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(broker_socket(paths, settings)))
            sock.sendall(encode(request))
            while True:
                size = int.from_bytes(_read_exactly(sock, 4), "big")
                if size > MAX_FRAME:
                    return False
                reply = orjson.loads(_read_exactly(sock, size))
                # Invalidations pushed to every client arrive here too.
                if isinstance(reply, dict) and reply.get("id") != PUSH_ID:
                    return reply.get("id") == 1 and "error" not in reply
    except (OSError, orjson.JSONDecodeError):
        return False
