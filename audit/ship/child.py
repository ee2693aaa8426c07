"""The shipping process: `python -m blindkey.audit.ship SPEC`, a child of the proxy.

Reading, encoding and sending records is CPU the proxy's event loop would otherwise share
(and, in threads of its own process, a GIL it would wait for): here it runs beside the
proxy, niced, so under load the proxy's calls come first and shipping catches up as the
load eases. Its standard input is the proxy's wake-up pipe (a byte: records were
written); SIGTERM, or the pipe's end (the proxy is gone), stops it after it has sent what
it can within STOP_DEADLINE; SIGUSR1 (replaced at a reload) after the batch in flight, so
records written after the reload go where the new [audit.ship] says. Cursors make it
restartable at any point.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.ship.shipper import STOP_DEADLINE
from blindkey.audit.ship.shipping import Shippers
from blindkey.config.outputs import ShipSettings

# The lowest priority: under full load the proxy's calls come first and shipping catches up
# as the load eases (its lag is in `audit ship status`).
NICE = 19


def spec(audit_dir: Path, settings: ShipSettings, *, sync: bool) -> str:
    """The child's one argument."""
    fields = {key: getattr(settings, key) for key in ShipSettings.__dataclass_fields__}
    return orjson.dumps({"audit_dir": str(audit_dir), "sync": sync, "ship": fields}).decode()


def _read(text: str) -> tuple[Path, ShipSettings, bool]:
    data: dict[str, Any] = orjson.loads(text)
    return Path(data["audit_dir"]), ShipSettings(**data["ship"]), bool(data["sync"])


def _wakes(shippers: Shippers, done: threading.Event) -> None:
    """Each byte on stdin wakes the shippers; its end (no proxy any more) stops them."""
    while True:
        try:
            data = os.read(0, 256)
        except OSError:
            data = b""
        if not data:
            done.set()
            return
        shippers.wake()


def main(argv: list[str] | None = None) -> None:
    audit_dir, settings, sync = _read((argv or sys.argv[1:])[0])
    with contextlib.suppress(OSError):
        os.nice(NICE)
    done = threading.Event()
    within = [STOP_DEADLINE]

    def replaced(*_: object) -> None:
        within[0] = 0.0
        done.set()

    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGUSR1, replaced)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy's Ctrl-C is the proxy's to handle
    shippers = Shippers(audit_dir, settings, sync=sync)
    shippers.start()
    threading.Thread(target=_wakes, args=(shippers, done), daemon=True).start()
    while not done.wait(1.0):  # a timeout: the signal handlers run between waits
        pass
    shippers.stop(within[0])
