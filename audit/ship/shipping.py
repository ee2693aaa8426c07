"""The destinations [audit.ship] names, each with its thread (audit/ship/shipper.py): made,
started, woken and stopped together, inside the shipping process (audit/ship/child.py)."""

from __future__ import annotations

from pathlib import Path

from blindkey.audit.ship.shipper import STOP_DEADLINE, Shipper, Sink
from blindkey.config.outputs import ShipSettings

# The sinks and the shared reader are imported where they are made: the proxy imports this
# module for `destinations` alone, and the shipping process only the sinks it is given.

JOURNAL_SCHEME = "unix:"


def destinations(settings: ShipSettings) -> dict[str, str]:
    """Each configured destination's kind (its cursor's name) and URL."""
    found = {"syslog": settings.syslog, "otlp": settings.otlp}
    if settings.journald:
        found["journald"] = JOURNAL_SCHEME + settings.journal_socket
    return {kind: url for kind, url in found.items() if url}


def sink_for(kind: str, url: str, settings: ShipSettings) -> Sink:
    if kind == "journald":
        from blindkey.audit.ship.journald import JournaldSink

        return JournaldSink(url.removeprefix(JOURNAL_SCHEME))
    if kind == "syslog":
        from blindkey.audit.ship.syslog import SyslogSink

        return SyslogSink(url, settings.ca_file)
    from blindkey.audit.ship.otlp import OtlpSink

    return OtlpSink(url, settings.ca_file)


class Shippers:
    def __init__(self, audit_dir: Path, settings: ShipSettings, *, sync: bool = True) -> None:
        from blindkey.audit.ship.shared import SharedSource

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
