"""Idle keep-alive connections: each has finished one request and stays open, as agents leave them."""

from __future__ import annotations

import contextlib
import socket

from bench.tools import BenchError

REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"


def _exchange(sock: socket.socket) -> bool:
    """One /health request on `sock`; True for a whole 200 answer."""
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 200")


def open_idle(port: int, count: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sockets.append(sock)
            if not _exchange(sock):
                raise BenchError(f"idle connection {len(sockets)} got no 200 from /health")
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def still_serving(sockets: list[socket.socket]) -> int:
    """How many of the idle connections still answer a request."""
    alive = 0
    for sock in sockets:
        with contextlib.suppress(OSError):
            alive += _exchange(sock)
    return alive


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()
