"""The proxy daemon in the foreground (`python -m blindkey.proxy`, `proxy start
--foreground`): its pid file held, its broker launched, signals at the edge.

The start is ordered for time: the broker is launched as soon as this process knows it
is to launch one (config.toml names no [broker] socket), before it imports the settings
model, the event loop and the HTTP stack, so the broker's start-up runs beside all of
the proxy's own; nothing is served before the supervisor has seen the broker's socket
(ProxyServer.start).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import stat
import sys
import tomllib
from typing import TYPE_CHECKING

from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths
from blindkey.proxy.broker_process import BrokerProcess, launch_broker
from blindkey.proxy.lifecycle import READY_FD, bind_check, read_pid

if TYPE_CHECKING:
    from blindkey.config.model import Settings

# Young-generation collections every GC_GEN0 allocations instead of CPython's 700: a proxied
# request allocates a few hundred objects, almost none in cycles, and the default made the
# collector run every couple of requests (bench: user CPU per request 75 -> 67 us at 32
# connections).
GC_GEN0 = 20_000


def run_foreground(
    paths: Paths, host: str | None, port: int | None, allow_remote: bool = False
) -> int:
    ready = _ready_pipe(os.environ.pop(READY_FD, None))  # not passed on to the broker
    lock_fd = _lock_pid_file(paths)  # first: a broker launched removes its socket's path
    broker = launch_broker(paths.broker_socket_at("")) if _launches_broker(paths) else None
    try:
        from blindkey.config.loader import load_settings

        settings = load_settings(paths.config_file)
        bind_check(settings, host, allow_remote)
        broker = _broker_for(paths, settings, broker)
        import asyncio

        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        asyncio.run(
            _serve_with(
                paths,
                settings,
                host or settings.proxy.host,
                settings.proxy.port if port is None else port,
                allow_remote,
                ready,
                broker,
            )
        )
    finally:
        if broker is not None:  # stopped by its supervisor, unless it never took it over
            broker.end()
        with contextlib.suppress(FileNotFoundError):
            paths.pid_file.unlink()
        os.close(lock_fd)
    return 0


def _launches_broker(paths: Paths) -> bool:
    """Whether config.toml leaves the broker to this proxy (no [broker] socket), read with
    the parser the settings use but before their model loads (0.05 s). A file that cannot
    say is no: the settings' load reports it, and a proxy that is to connect to a broker
    of its own service must never launch one."""
    try:
        data = tomllib.loads(paths.config_file.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not TOML
        return False
    table = data.get("broker", {})
    return isinstance(table, dict) and table.get("socket", "") == ""


def _broker_for(
    paths: Paths, settings: Settings, launched: BrokerProcess | None
) -> BrokerProcess | None:
    """The broker as the loaded settings want it: launched now if the early look could not
    tell, ended if the file changed in between to name a broker of its own service."""
    if settings.broker.socket:
        if launched is not None:
            launched.end()
        return None
    return launched or launch_broker(paths.broker_socket_at(""))


async def _serve_with(
    paths: Paths,
    settings: Settings,
    host: str,
    port: int,
    allow_remote: bool,
    ready_fd: int | None,
    broker: BrokerProcess | None,
) -> None:
    """`serve` with the process's signals: TERM and INT stop it, HUP reloads config.toml."""
    import asyncio

    # Here, not at the top: `proxy status` and `proxy stop` need no HTTP stack (0.3 s).
    from blindkey.proxy.server import ProxyServer, serve
    from blindkey.proxy.systemd import ServiceNotifier

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = ServiceNotifier()

    async def until_stopped() -> None:
        await stop.wait()
        await notifier.stopping()

    def on_ready(server: ProxyServer) -> None:
        def on_hup() -> None:
            task = loop.create_task(server.reload(), name="sighup-reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        sys.stderr.write(
            f"blindkey proxy listening on http://{host}:{server.port} (pid {os.getpid()})\n"
        )
        if server.allow_remote:
            sys.stderr.write(
                "blindkey: WARNING: calls from other machines are accepted: every caller needs "
                "an agent token, and remote callers must be in [proxy] allowed_peers\n"
            )
        sys.stderr.flush()
        notifier.ready(f"listening on {host}:{server.port}")
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"1")
                os.close(ready_fd)
        # After the word, not before: `proxy start` wakes and dials /health while this full
        # collection runs (the call is answered right after it: nothing is served meanwhile).
        tune_gc()

    await serve(
        paths,
        settings,
        host=host,
        port=port,
        allow_remote=allow_remote,
        shutdown_trigger=until_stopped,
        on_ready=on_ready,
        broker=broker,
    )


def tune_gc() -> None:
    """Once serving: start-up objects move out of the collector's way, collections thin out."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)


def _lock_pid_file(paths: Paths) -> int:
    """Hold an exclusive lock on the pid file for the life of this process."""
    fd = os.open(paths.pid_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = read_pid(paths)
        raise BlindkeyError(
            f"the proxy is already running (pid {pid}); `blindkey proxy stop` first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _ready_pipe(named: str | None) -> int | None:
    """The readiness pipe `proxy start` passed, if that is what the variable names: one
    left over in a user's environment must not make the daemon write to, and close, some
    other file it holds (its stdout is fd 1)."""
    if not named or not named.isdigit():
        return None
    try:
        return int(named) if stat.S_ISFIFO(os.fstat(int(named)).st_mode) else None
    except OSError:
        return None
