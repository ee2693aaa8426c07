"""The proxy process's parts, tied together in one place: each is handed what it tells or
asks the others through its constructor, so a reader (or a tool) follows every callback
from here.

    audit writer --on_state--> status file <--on_reloaded-- runtime
    audit writer --anchor----> broker (through the runtime's authoriser)
    audit writer --on_written--> audit shipping (records to send)
    runtime      --on_reloaded--> audit shipping ([audit.ship] as reloaded)
    supervisor   --on_state--> status file
    authoriser   --on_invalidate--> runtime (config.toml re-read)
    authoriser   --on_approval----> calls waiting for a human (runtime.waits)

The last two are wired by ProxyRuntime, which owns both ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from blindkey.audit.ship.process import Shipping
from blindkey.audit.writer import AuditWriter
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.proxy.broker_process import BrokerProcess
from blindkey.proxy.metrics import CallMetrics, observer
from blindkey.proxy.runtime import ProxyRuntime
from blindkey.proxy.status import ProxyStatus
from blindkey.proxy.supervisor import BrokerSupervisor, ExternalBroker


@dataclass(frozen=True)
class ProxyParts:
    audit: AuditWriter
    runtime: ProxyRuntime
    supervisor: BrokerSupervisor | ExternalBroker
    status: ProxyStatus
    calls: CallMetrics
    shipping: Shipping


def compose_proxy(
    paths: Paths, settings: Settings, host: str, broker: BrokerProcess | None = None
) -> ProxyParts:
    # The status file reads the runtime and the writer, which tell it when they change:
    # the closures below name parts made a line later, and run only once all exist.
    status = ProxyStatus(
        paths.status_file, host, lambda: {**runtime.status_fields(), "audit": audit.state()}
    )

    async def anchor(seq: int, chain: str) -> None:
        """Give the broker the chain's head: a tail cut off the file is then found."""
        await runtime.authoriser.broker.call("audit_anchor", seq=seq, chain=chain)

    audit_settings = settings.audit
    calls = CallMetrics()
    shipping = Shipping(paths.audit_dir, settings.audit_ship, sync=audit_settings.fsync)
    audit = AuditWriter(
        paths.audit_dir,
        fsync=audit_settings.fsync,
        rotate_mb=audit_settings.rotate_mb,
        keep_days=audit_settings.keep_days,
        checkpoint_every=audit_settings.checkpoint_every,
        on_state=status.write,
        anchor=anchor,
        observe=observer(settings.metrics.listen, calls),
        on_written=shipping.wake,
    )

    def reloaded() -> None:
        status.write()
        shipping.apply(runtime.settings.audit_ship)  # [audit.ship] applies at reload too

    runtime = ProxyRuntime(paths, settings, audit, on_reloaded=reloaded)
    socket_path = paths.broker_socket_at(settings.broker.socket)
    # A broker run as its own service (`[broker] socket`) is connected to, never spawned.
    supervisor: BrokerSupervisor | ExternalBroker = (
        ExternalBroker(socket_path, status.broker)
        if settings.broker.socket
        else BrokerSupervisor(socket_path, status.broker, broker)
    )
    return ProxyParts(audit, runtime, supervisor, status, calls, shipping)
