"""`blindkey proxy stop|status|reload` and what `proxy start` checks: the running proxy
found by its pid file's lock, its /health, its status. The daemon itself is daemon.py."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.paths import Paths

# Loaded where used: `proxy start` imports this module before it launches the daemon, and the
# daemon before it launches its broker; neither needs the config model yet.
if TYPE_CHECKING:
    from blindkey.config.model import Settings

STOP_MARGIN = 15.0
EXIT_NOT_RUNNING = 3
# `proxy start` hands the daemon the write end of a pipe under this name (proxy/detach.py);
# the daemon (proxy/daemon.py) writes to it once it serves.
READY_FD = "BLINDKEY_READY_FD"
STATUS_LINE_MAX = 1024


@dataclass(frozen=True)
class Running:
    pid: int
    status: dict[str, Any]


def read_pid(paths: Paths) -> int | None:
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
        pid = read_pid(paths)
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


def bind_check(settings: Settings, host: str | None, allow_remote: bool) -> None:
    refused = None if allow_remote else settings.proxy.bind_error(host)
    if refused is not None:
        raise UsageError(f"--host {refused}")


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
