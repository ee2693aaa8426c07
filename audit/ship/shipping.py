"""The destinations [audit.ship] names, each with its thread (audit/ship/shipper.py): made,
started, woken and stopped together, inside the shipping process (audit/ship/child.py)."""

from __future__ import annotations

from pathlib import Path

from blindkey.audit.ship.journald import JournaldSink
from blindkey.audit.ship.otlp import OtlpSink
from blindkey.audit.ship.shared import SharedSource
from blindkey.audit.ship.shipper import STOP_DEADLINE, Shipper, Sink
from blindkey.audit.ship.syslog import SyslogSink
from blindkey.config.outputs import ShipSettings

JOURNAL_SCHEME = "unix:"


def destinations(settings: ShipSettings) -> dict[str, str]:
    """Each configured destination's kind (its cursor's name) and URL."""
    found = {"syslog": settings.syslog, "otlp": settings.otlp}
    if settings.journald:
        found["journald"] = JOURNAL_SCHEME + settings.journal_socket
    return {kind: url for kind, url in found.items() if url}


def sink_for(kind: str, url: str, settings: ShipSettings) -> Sink:
    if kind == "journald":
        return JournaldSink(url.removeprefix(JOURNAL_SCHEME))
    return (SyslogSink if kind == "syslog" else OtlpSink)(url, settings.ca_file)


class Shippers:
    def __init__(self, audit_dir: Path, settings: ShipSettings, *, sync: bool = True) -> None:
        shared = SharedSource(audit_dir, sync=sync)
        self.shippers = [
            Shipper(kind, url, sink_for(kind, url, settings), audit_dir, source=shared)
            for kind, url in destinations(settings).items()
        ]

    def start(self) -> None:
        for shipper in self.shippers:
            shipper.start()

    def wake(self) -> None:
        for shipper in self.shippers:
            shipper.wake()

    def stop(self, within: float = STOP_DEADLINE) -> None:
        """Blocking, up to `within` (and the batch in flight)."""
        for shipper in self.shippers:
            shipper.request_stop(within)  # all of them finish at once, not one after another
        for shipper in self.shippers:
            shipper.stop(within)
