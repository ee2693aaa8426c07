"""`ProxyServer`: start in a fixed order, reload in place, shut down in the reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from blindkey.audit.coalesce import INTERVAL, Coalescer
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.proxy.compose import compose_proxy
from blindkey.proxy.connections import ConnectionGuard, GuardedConnection
from blindkey.proxy.metrics import MetricsListener, Sources
from blindkey.proxy.request.edge import Front
from blindkey.proxy.runtime import FileStamp
from blindkey.proxy.site import GuardedSite
from blindkey.proxy.tls.connect import Door

if TYPE_CHECKING:  # proxy mode's CA loads cryptography.x509: at the first CONNECT (_leaves)
    from blindkey.proxy.broker_process import BrokerProcess
    from blindkey.proxy.tls.ca import LeafCache

log = logging.getLogger("blindkey.proxy")
CONFIG_POLL = 0.25
# After the drain, calls are cut; what aiohttp then waits for is already ending.
RUNNER_SHUTDOWN_TIMEOUT = 2.0
KEEPALIVE_TIMEOUT = 75.0


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BlindkeyError(
                f"port {port} on {host} is already in use; stop what holds it or choose "
                "another with --port"
            ) from exc
        raise BlindkeyError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def settled(
    stamp: FileStamp, applied: FileStamp | None, seen: FileStamp | None
) -> tuple[bool, FileStamp | None]:
    """One poll of config.toml: (reload now?, the stamp to compare with next poll).

    A file is applied once it changed and then stayed the same for one poll: an editor saving
    in place writes in steps, and a half-written file must not apply.
    """
    if stamp == applied:
        return False, None
    if stamp != seen:
        return False, stamp  # changed: look again next poll
    return True, None


class ProxyServer:
    def __init__(
        self,
        paths: Paths,
        settings: Settings,
        *,
        host: str,
        port: int,
        allow_remote: bool = False,
        clock: Callable[[], float] | None = None,
        broker: BrokerProcess | None = None,
    ) -> None:
        refused = None if allow_remote else settings.proxy.bind_error(host)
        if refused is not None:
            raise BlindkeyError(f"refusing to listen on {refused}")
        self.paths = paths
        self.host = host
        self.allow_remote = allow_remote or settings.proxy.allow_remote
        self.requested_port = port
        self.port = port
        self.clock = clock  # the connection guard's, unless the loop's
        parts = compose_proxy(paths, settings, host, broker)  # broker: spawned early
        self.audit, self.runtime = parts.audit, parts.runtime
        self.supervisor, self.status = parts.supervisor, parts.status
        self.calls = parts.calls
        self.metrics: MetricsListener | None = None
        self.shipping = parts.shipping
        self._runner: web.ServerRunner | None = None
        self.guard: ConnectionGuard | None = None
        # How long the calls of an unidentified caller are counted before their summary.
        self.refusal_interval = INTERVAL
        self.refusals: Coalescer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.warming: asyncio.Task[None] | None = None
        self.leaf_cache: LeafCache | None = None

    def _door(
        self, connection: GuardedConnection, make_handler: Callable[[], RequestHandler]
    ) -> Door:
        return Door(self.runtime, connection, self._leaves, make_handler)

    def _leaves(self) -> LeafCache:
        """Leaf certificates for intercepted tunnels, from the CA `init` made (read once)."""
        from blindkey.proxy.tls.ca import LeafCache, load_ca

        if self.leaf_cache is None:
            self.leaf_cache = LeafCache(load_ca(self.paths), self.paths.runtime_dir)
        return self.leaf_cache

    @property
    def broker_state(self) -> str:
        return self.status.broker_state

    @property
    def broker_pid(self) -> int | None:
        return self.status.broker_pid

    async def start(self) -> None:
        sock = bind_socket(self.host, self.requested_port)
        self.port = self.status.port = sock.getsockname()[1]
        self.runtime.set_port(self.port)
        try:
            await self.audit.start()
            self.shipping.start()
            await self.supervisor.start()
            await self.runtime.check_broker()
            self.runtime.open_upstream()
            limits = self.runtime.settings.limits
            guard = self.guard = ConnectionGuard(
                limits.max_connections,
                limits.header_read_timeout,
                limits.keepalive_idle_timeout,
                clock=self.clock,
            )
            refusals = self.refusals = Coalescer(self.audit, interval=self.refusal_interval)
            server = web.Server(
                Front(self.runtime, self.host, guard, refusals, allow_remote=self.allow_remote),
                handler_cancellation=True,
                access_log=None,
                keepalive_timeout=KEEPALIVE_TIMEOUT,
                max_line_size=limits.max_header_size,
                max_field_size=limits.max_header_size,
                max_headers=limits.max_headers,
            )
            self._runner = web.ServerRunner(server, shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT)
            await self._runner.setup()
            await GuardedSite(self._runner, sock, guard, refusals, self._door).start()
            await self._start_metrics()
        except BaseException:
            sock.close()
            await self._stop_parts()
            raise
        if self.allow_remote:
            log.warning(
                "accepting calls from other machines on %s:%d: agent tokens are required "
                "and remote callers must be in [proxy] allowed_peers",
                self.host,
                self.port,
            )
        self._tasks.append(asyncio.create_task(self._watch_config(), name="config-watch"))
        # The redactor before the first call needs it: thousands of values take seconds.
        self.warming = asyncio.create_task(self.runtime.authoriser.warm(), name="redactor-warm")
        self._tasks.append(self.warming)
        self.write_status()

    async def _start_metrics(self) -> None:
        listen = self.runtime.settings.metrics.listen
        if listen:
            sources = Sources(
                self.audit, self.runtime, lambda: self.guard, lambda: self.broker_state
            )
            self.metrics = MetricsListener(sources, self.calls)
            await self.metrics.start(listen)

    async def _watch_config(self) -> None:
        seen: FileStamp | None = None
        while True:
            await asyncio.sleep(CONFIG_POLL)
            apply, seen = settled(self.runtime.file_stamp(), self.runtime.applied_stamp, seen)
            if apply:
                await self.reload()

    async def reload(self) -> bool:
        return await self.runtime.reload()

    def write_status(self) -> None:
        self.status.write()

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests, stop the broker, flush the audit."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._drain(self._runner)
            await self._runner.cleanup()
            self._runner = None
        await self._stop_parts()
        self.status.remove()

    async def _drain(self, runner: web.ServerRunner) -> None:
        """Stop accepting, give calls in flight `drain_timeout`, then cut what is left.

        aiohttp's own shutdown waits its timeout for a handler, then asks it to stop and
        waits as long again without cancelling it: a stream outlived twice the drain.
        """
        for site in list(runner.sites):
            await site.stop()
        # A call waiting for a human waits for no network: answer it now rather than let
        # it hold the drain up for drain_timeout.
        self.runtime.waits.release()
        guard = self.guard
        if guard is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.runtime.settings.limits.drain_timeout):
                await guard.drained()
        cut = guard.cut_in_flight()
        if cut:
            log.warning("drain time over: cut %d call(s) still in flight", cut)

    async def _stop_parts(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self.guard is not None:
            self.guard.close()
        if self.refusals is not None:
            self.refusals.flush()
        with contextlib.suppress(Exception):
            await self.audit.anchor_now()  # the broker keeps the last head, then stops
        await self.supervisor.stop()
        await self.runtime.close()
        await self.audit.close()
        await asyncio.to_thread(self.shipping.stop)  # what the audit took, shipped if it can be


async def serve(
    paths: Paths,
    settings: Settings,
    *,
    host: str,
    port: int,
    allow_remote: bool = False,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_ready: Callable[[ProxyServer], None] | None = None,
    broker: BrokerProcess | None = None,
) -> None:
    """Run the proxy until `shutdown_trigger` returns (forever without one), then stop in
    order: stop accepting, drain, stop the broker, flush the audit. Signals are the
    caller's business (lifecycle.py maps them to the trigger)."""
    server = ProxyServer(
        paths, settings, host=host, port=port, allow_remote=allow_remote, broker=broker
    )
    await server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        if shutdown_trigger is None:
            await asyncio.Event().wait()
        else:
            await shutdown_trigger()
    finally:
        await server.stop()
