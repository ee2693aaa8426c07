"""The destinations [audit.ship] names, each with its thread: made, started and stopped
together by the proxy's composition, woken by its audit writer."""

from __future__ import annotations

from pathlib import Path

from blindkey.audit.ship.otlp import OtlpSink
from blindkey.audit.ship.shipper import Shipper
from blindkey.audit.ship.syslog import SyslogSink
from blindkey.config.outputs import ShipSettings


def destinations(settings: ShipSettings) -> dict[str, str]:
    """Each configured destination's kind (its cursor's name) and URL."""
    found = {"syslog": settings.syslog, "otlp": settings.otlp}
    return {kind: url for kind, url in found.items() if url}


class Shipping:
    def __init__(self, audit_dir: Path, settings: ShipSettings, *, sync: bool = True) -> None:
        self.shippers = []
        for kind, url in destinations(settings).items():
            sink = (SyslogSink if kind == "syslog" else OtlpSink)(url, settings.ca_file)
            self.shippers.append(Shipper(kind, url, sink, audit_dir, sync=sync))

    def start(self) -> None:
        for shipper in self.shippers:
            shipper.start()

    def wake(self) -> None:
        for shipper in self.shippers:
            shipper.wake()

    def stop(self) -> None:
        """Blocking, up to STOP_DEADLINE: run it off the event loop."""
        for shipper in self.shippers:
            shipper.request_stop()  # all of them finish at once, not one after another
        for shipper in self.shippers:
            shipper.stop()
