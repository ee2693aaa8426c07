"""`blindkey proxy start` without --foreground: the daemon launched in its own session,
and the command back once it serves."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from blindkey.config.errors import USAGE_STATUS, BlindkeyError, UsageError
from blindkey.config.paths import Paths
from blindkey.proxy.lifecycle import READY_FD, Running, health, running

START_TIMEOUT = 15.0
# How long `proxy start` waits on the readiness pipe between its other checks (the child's
# exit, a broker error in the status file): the pipe wakes it as soon as the daemon serves.
READY_WAIT = 0.25


def start_detached(
    paths: Paths, host: str | None, port: int | None, allow_remote: bool = False
) -> Running:
    current = running(paths)
    if current is not None:
        raise BlindkeyError(
            f"the proxy is already running (pid {current.pid}); `blindkey proxy stop` first"
        )
    # Launched before anything else is read: the daemon loads config.toml and refuses a
    # --host or a file itself, in the words and with the exit status this command had
    # (taken from its log below), and the daemon's imports start 0.1 s sooner.
    command = [sys.executable, "-m", "blindkey.proxy"]
    if host is not None:
        command += ["--host", host]
    if allow_remote:
        command += ["--allow-remote"]
    if port is not None:
        command += ["--port", str(port)]
    log_fd = os.open(paths.proxy_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log_start = os.lseek(log_fd, 0, os.SEEK_END)
    ready, ready_w = os.pipe()
    try:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
            pass_fds=(ready_w,),
            env={**os.environ, READY_FD: str(ready_w)},
        )
    finally:
        os.close(log_fd)
        os.close(ready_w)
    try:
        return _until_healthy(paths, child, log_start, ready)
    finally:
        os.close(ready)


def _until_healthy(
    paths: Paths, child: subprocess.Popen[bytes], log_start: int, ready: int
) -> Running:
    """The proxy once /health answers: woken by the child's readiness pipe (or its end when
    the child dies), with the status file and /health checked as before every wait."""
    deadline = time.monotonic() + START_TIMEOUT
    signalled = False
    while time.monotonic() < deadline:
        if child.poll() is not None:
            said = _failure_line(paths, log_start)
            # 2: the daemon refused the command line (a --host it may not listen on).
            refused = UsageError if child.returncode == USAGE_STATUS else BlindkeyError
            raise refused(said or f"the proxy exited with status {child.returncode}")
        current = running(paths)
        port = current.status.get("port") if current is not None else None
        host = current.status.get("host") if current is not None else None
        if current is not None and port and host is not None:
            if health(host, int(port)):
                return current
            # Written by the /health just refused, when the broker cannot serve.
            broker_error = (running(paths) or current).status.get("broker_error")
            if broker_error:
                child.terminate()
                raise BlindkeyError(f"the proxy cannot serve: {broker_error}")
        if signalled:
            time.sleep(0.02)
        elif select.select([ready], [], [], READY_WAIT)[0]:
            os.read(ready, 1)  # a byte: serving; nothing: the child is gone
            signalled = True
    child.terminate()
    raise BlindkeyError(
        f"the proxy did not become healthy within {START_TIMEOUT:.0f}s; see {paths.proxy_log}"
    )


def _failure_line(paths: Paths, offset: int) -> str | None:
    try:
        with paths.proxy_log.open("rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        if line.startswith("blindkey: "):
            return line[len("blindkey: ") :]
    return lines[-1] if lines else None
