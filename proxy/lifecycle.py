"""`blindkey proxy start|stop|status|reload`: pid file, detaching, signals at the edge."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.paths import Paths

# Loaded where used: `proxy start` imports this module before it spawns the daemon, and the
# daemon before it spawns its broker; neither needs the event loop or the config model yet.
if TYPE_CHECKING:
    import asyncio

    from blindkey.config.model import Settings

STOP_MARGIN = 15.0
EXIT_NOT_RUNNING = 3
# `proxy start` hands the daemon the write end of a pipe under this name (proxy/detach.py);
# the daemon writes to it once it serves.
READY_FD = "BLINDKEY_READY_FD"
STATUS_LINE_MAX = 1024


@dataclass(frozen=True)
class Running:
    pid: int
    status: dict[str, Any]


def _lock_pid_file(paths: Paths) -> int:
    """Hold an exclusive lock on the pid file for the life of this process."""
    fd = os.open(paths.pid_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = _read_pid(paths)
        raise BlindkeyError(
            f"the proxy is already running (pid {pid}); `blindkey proxy stop` first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _read_pid(paths: Paths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def running(paths: Paths) -> Running | None:
    """The live proxy of this home, judged by its lock, not by a pid that may be reused."""
    try:
        fd = os.open(paths.pid_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(paths)
        if pid is None:
            return None
        try:
            status = orjson.loads(paths.status_file.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            status = {}
        return Running(pid=pid, status=status)
    finally:
        os.close(fd)
    return None


def health(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether GET /health answers 200: the status line alone, read off a plain socket
    (http.client and the email parser under it cost `proxy start` 40 ms to import)."""
    # A wildcard listener is reached over loopback.
    connect_host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    authority = f"[{connect_host}]:{port}" if ":" in connect_host else f"{connect_host}:{port}"
    request = f"GET /health HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((connect_host, port), timeout=timeout) as connection:
            connection.sendall(request.encode("ascii"))
            head = b""
            while b"\r\n" not in head and len(head) < STATUS_LINE_MAX:
                chunk = connection.recv(STATUS_LINE_MAX)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1] == b"200"


# Young-generation collections every GC_GEN0 allocations instead of CPython's 700: a proxied
# request allocates a few hundred objects, almost none in cycles, and the default made the
# collector run every couple of requests (bench: user CPU per request 75 -> 67 us at 32
# connections).
GC_GEN0 = 20_000


def tune_gc() -> None:
    """Once serving: start-up objects move out of the collector's way, collections thin out."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)


def bind_check(settings: Settings, host: str | None, allow_remote: bool) -> None:
    refused = None if allow_remote else settings.proxy.bind_error(host)
    if refused is not None:
        raise UsageError(f"--host {refused}")


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


def run_foreground(
    paths: Paths, host: str | None, port: int | None, allow_remote: bool = False
) -> int:
    import asyncio

    from blindkey.config.loader import load_settings

    ready = _ready_pipe(os.environ.pop(READY_FD, None))  # not passed on to the broker
    settings = load_settings(paths.config_file)
    bind_check(settings, host, allow_remote)
    lock_fd = _lock_pid_file(paths)
    try:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        asyncio.run(
            _serve_until_signal(
                paths,
                settings,
                host or settings.proxy.host,
                settings.proxy.port if port is None else port,
                allow_remote,
                ready,
            )
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            paths.pid_file.unlink()
        os.close(lock_fd)
    return 0


async def _serve_until_signal(
    paths: Paths,
    settings: Settings,
    host: str,
    port: int,
    allow_remote: bool,
    ready_fd: int | None = None,
) -> None:
    """`serve` with the process's signals: TERM and INT stop it, HUP reloads config.toml."""
    # The broker first, so it loads while this process imports its HTTP stack; nothing is
    # served before the supervisor has seen its socket (ProxyServer.start).
    from blindkey.proxy.supervisor import spawn_broker

    external = settings.broker.socket
    broker = None if external else await spawn_broker(paths.broker_socket_at(external))
    try:
        await _serve_with(paths, settings, host, port, allow_remote, ready_fd, broker)
    finally:
        if broker is not None and broker.returncode is None:  # never handed over
            broker.terminate()
            await broker.wait()


async def _serve_with(
    paths: Paths,
    settings: Settings,
    host: str,
    port: int,
    allow_remote: bool,
    ready_fd: int | None,
    broker: asyncio.subprocess.Process | None,
) -> None:
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


def stop(paths: Paths) -> int | None:
    """Stop the running proxy; return its pid, or None when nothing ran."""
    from blindkey.config.loader import load_settings
    from blindkey.config.model import LimitSettings

    current = running(paths)
    if current is None:
        return None
    try:
        drain = load_settings(paths.config_file).limits.drain_timeout
    except BlindkeyError:
        drain = LimitSettings().drain_timeout
    # The proxy drains, cuts what is left, flushes its audit and stops its broker: wait
    # longer than all of that, so a stop that is on its way is never reported as failed.
    patience = drain + STOP_MARGIN
    os.kill(current.pid, signal.SIGTERM)
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if running(paths) is None:
            return current.pid
        time.sleep(0.05)
    raise BlindkeyError(f"the proxy (pid {current.pid}) did not stop within {patience:.0f}s")


def reload(paths: Paths) -> dict[str, Any]:
    current = running(paths)
    if current is None:
        raise BlindkeyError("the proxy is not running; start it with `blindkey proxy start`")
    before = current.status.get("config_generation")
    os.kill(current.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = running(paths)
        if now is None:
            raise BlindkeyError("the proxy stopped while reloading")
        if now.status.get("config_generation") != before or now.status.get("config_error"):
            return now.status
    raise BlindkeyError("the proxy did not confirm the reload within 5s")


LOAD_ERROR_HINT = (
    "the broker refused a changed file and serves what it loaded before; restore that file "
    "from a backup or undo the change (`blindkey secrets` commands fail until then)"
)


def deployment(paths: Paths, settings: Settings) -> str:
    """`separate broker user` when the proxy talks to a broker whose socket another user
    owns (the hardened deployment), else `single-user`."""
    if settings.broker.socket:
        try:
            owner = paths.broker_socket_at(settings.broker.socket).stat().st_uid
        except OSError:
            owner = os.getuid()
        if owner != os.getuid():
            return "separate broker user"
    return "single-user"


def _live_audit(paths: Paths | None, audit: Any) -> Any:
    """The status file's audit state with the record count read from the file now: the
    status file is rewritten when the state changes, not per record."""
    from blindkey.audit.store import audit_file, head_of_file

    if paths is None or not isinstance(audit, dict):
        return audit
    head = head_of_file(audit_file(paths.audit_dir))
    return {**audit, "seq": head.seq} if head is not None else audit


def describe(
    current: Running, broker: dict[str, Any] | None = None, paths: Paths | None = None
) -> dict[str, Any]:
    """What `proxy status` shows; `broker` is the broker's ping answer when it was reached."""
    from blindkey.config.loader import load_settings

    status = current.status
    kind = None
    if paths is not None:
        try:
            kind = deployment(paths, load_settings(paths.config_file))
        except BlindkeyError:
            kind = None
    backend_error = (broker or {}).get("backend_error")
    load_error = (broker or {}).get("error_state")
    started = status.get("started")
    return {
        "running": True,
        "pid": current.pid,
        "host": status.get("host"),
        "port": status.get("port"),
        "uptime_s": round(time.time() - started, 1) if started else None,
        "broker": status.get("broker"),
        "broker_pid": status.get("broker_pid"),
        "backend": status.get("backend"),
        "env": status.get("env"),
        "config_error": status.get("config_error"),
        "broker_error": status.get("broker_error"),
        "backend_error": backend_error,
        # Files the broker refused to load (it serves what it had), and an approvals file
        # it cannot read (gated secrets refused): each names the file and what to do.
        "load_error": load_error,
        "load_error_hint": LOAD_ERROR_HINT if load_error else None,
        "approvals_error": (broker or {}).get("approvals_error"),
        "audit": _live_audit(paths, status.get("audit")),
        "deployment": kind,
        "healthy": bool(status.get("port"))
        and health(str(status.get("host")), int(status["port"])),
    }


def ask_broker(paths: Paths, timeout: float = 2.0) -> dict[str, Any] | None:
    """The broker's own ping answer (its backend's last error among it), or None when this
    user cannot reach it. Asked afresh: the proxy only notes whether the broker serves."""
    from blindkey.broker import link
    from blindkey.broker.protocol import BrokerUnavailable

    try:
        return link.ask(paths, "ping", timeout=timeout)
    except BrokerUnavailable:
        return None
