"""The status file `proxy status` reads: the proxy's address, its broker's state, and what
the runtime and the audit writer report, rewritten whenever one of them changes."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from blindkey.config.atomic import write_atomic


class ProxyStatus:
    def __init__(self, path: Path, host: str, parts: Callable[[], dict[str, Any]]) -> None:
        """`parts`: the fields the runtime and the audit writer report, read at each write."""
        self.path = path
        self.host = host
        self.parts = parts
        self.port = 0  # known once the proxy listens
        self.started = time.time()
        self.broker_state = "starting"
        self.broker_pid: int | None = None

    def broker(self, state: str, pid: int | None) -> None:
        """The broker supervisor's report."""
        self.broker_state, self.broker_pid = state, pid
        self.write()

    def write(self) -> None:
        status = {
            "pid": os.getpid(),
            "host": self.host,
            "port": self.port,
            "started": self.started,
            "broker": self.broker_state,
            "broker_pid": self.broker_pid,
            **self.parts(),
        }
        with contextlib.suppress(OSError):
            write_atomic(self.path, orjson.dumps(status))

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
