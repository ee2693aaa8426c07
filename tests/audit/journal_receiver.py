"""A receiver of systemd's native journal protocol on a Unix datagram socket the test binds
at a path of its own (no journald needed): each datagram, or the sealed memfd a large entry
comes in, decoded field by field, including the binary-safe form (`KEY`, a newline, a
64-bit little-endian length, the value)."""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
from pathlib import Path


def decode(data: bytes) -> dict[str, bytes]:
    fields: dict[str, bytes] = {}
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            at = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n", "no newline after a value"
            at = end + 10 + size
        assert name.decode("ascii") not in fields, f"{name!r} twice"
        fields[name.decode("ascii")] = value
    return fields


class JournalReceiver:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, bytes]] = []
        self.by_memfd = 0
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        sock = self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.thread = threading.Thread(target=self._receive, args=(sock,), daemon=True)
        self.thread.start()

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            except OSError:
                return  # closed: stop()
            if not data and not ancillary:
                return  # stop() woke it
            for level, kind, payload in ancillary:
                assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
                fd = array.array("i", payload[:4])[0]
                try:
                    data = os.pread(fd, os.fstat(fd).st_size, 0)
                finally:
                    os.close(fd)
                self.by_memfd += 1
            self.entries.append(decode(data))

    def stop(self) -> None:
        """Gone: the socket file removed, its datagrams refused (an outage)."""
        if self.sock is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", str(self.path))  # recvmsg returns: the thread ends
        assert self.thread is not None
        self.thread.join(10)
        self.sock.close()
        self.sock = None
        self.path.unlink(missing_ok=True)

    def messages(self) -> list[bytes]:
        return [entry["MESSAGE"] for entry in self.entries]
