"""A real nginx on a free loopback port, serving a directory that PUT writes into (WebDAV):
the Range-capable store of the slice attacks. `.ci/run` needs nginx installed (apt)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONFIG = """
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    port: int
    www: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _accepting(port: int, process: asyncio.subprocess.Process) -> bool:
    """Wait until nginx accepts connections on `port`, or has exited (the port was taken)."""
    while process.returncode is None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return True
    return False


@contextlib.asynccontextmanager
async def running_nginx(root: Path) -> AsyncIterator[Nginx]:
    (root / "www").mkdir(parents=True)
    for _ in range(5):  # a free port can be taken by another process before nginx binds
        port = _free_port()
        config = root / "nginx.conf"
        config.write_text(CONFIG.format(root=root, port=port))
        process = await asyncio.create_subprocess_exec(
            NGINX, "-p", str(root), "-c", str(config), "-e", str(root / "error.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            if await asyncio.wait_for(_accepting(port, process), 20):
                yield Nginx(port, root / "www")
                return
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()
    raise AssertionError(f"nginx did not start: {(root / 'error.log').read_text()}")
