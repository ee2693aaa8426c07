"""The broker's socket server: 0600 Unix socket, peer uid checked, pipelined frames."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import sys
from pathlib import Path

from broker.protocol import PUSH_ID, BrokerDenied, Message, ProtocolError, encode, read_frame
from broker.state import BrokerState
from config.paths import Paths, ensure_dir

log = logging.getLogger("blindkey.broker")
WATCH_INTERVAL = 0.2


def peer_uid(sock: socket.socket) -> int:
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    # macOS and the BSDs: LOCAL_PEERCRED (level 0, option 1) returns struct xucred.
    creds = sock.getsockopt(0, 1, struct.calcsize("2I"))
    return int(struct.unpack("2I", creds)[1])


class BrokerServer:
    def __init__(self, paths: Paths, socket_path: Path, allowed_uids: frozenset[int]) -> None:
        self.state = BrokerState(paths)
        self.socket_path = socket_path
        self.allowed_uids = allowed_uids
        self.writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.state.refresh()
        ensure_dir(self.socket_path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_client, path=self.socket_path
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self.state.refresh():
                self._push({"event": "invalidate", "generation": self.state.generation})

    def _push(self, message: Message) -> None:
        frame = encode({"id": PUSH_ID, **message})
        for writer in list(self.writers):
            if not writer.is_closing():
                writer.write(frame)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self.writers):
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock)
        if uid not in self.allowed_uids:
            log.warning("refused broker connection from uid %d", uid)
            writer.close()
            return
        self.writers.add(writer)
        try:
            while True:
                try:
                    request = await read_frame(reader)
                except (ProtocolError, ValueError) as exc:
                    log.warning("dropping client: %s", exc)
                    return
                if request is None:
                    return
                writer.write(encode(self.dispatch(request)))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    def dispatch(self, request: Message) -> Message:
        request_id = request.get("id")
        op = request.get("op")
        state = self.state
        try:
            if op == "ping":
                return {
                    "id": request_id,
                    "pid": os.getpid(),
                    "backend": state.settings.backend,
                    "env": state.settings.active_env,
                    "generation": state.generation,
                    "error_state": state.last_error,
                }
            if op == "resolve":
                token = request.get("token")
                names = request.get("names")
                host = request.get("host")
                if (
                    not isinstance(names, list)
                    or not all(isinstance(n, str) for n in names)
                    or not isinstance(host, str)
                    or not (token is None or isinstance(token, str))
                ):
                    return {
                        "id": request_id,
                        "error": "bad_request",
                        "message": "malformed resolve",
                    }
                result = state.resolve(token, names, host)
                reply: Message = {
                    "id": request_id,
                    "agent": result.agent,
                    "env": result.env,
                    "generation": state.generation,
                    "values": result.values,
                }
                if result.denied is not None:
                    reply["denied"] = {"error": result.denied.code, "message": str(result.denied)}
                return reply
            if op == "redaction_set":
                return {
                    "id": request_id,
                    "generation": state.generation,
                    "values": state.redaction_set(),
                }
            return {"id": request_id, "error": "bad_request", "message": f"unknown op {op!r}"}
        except BrokerDenied as exc:
            return {"id": request_id, "error": exc.code, "message": str(exc)}


async def serve_broker(paths: Paths, socket_path: Path, allowed_uids: frozenset[int]) -> None:
    server = BrokerServer(paths, socket_path, allowed_uids)
    await server.start()
    watcher = asyncio.create_task(server.watch(), name="broker-file-watch")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # The proxy that spawned us holds our stdin; when it dies, so do we.
        parent = os.getppid()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if os.getppid() != parent and os.environ.get("BLINDKEY_BROKER_SUPERVISED") == "1":
                break
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await server.close()
