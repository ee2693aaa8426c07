"""The proxy's side of audit shipping: the shipping process (audit/ship/child.py) started,
woken, replaced at a reload that changes [audit.ship], restarted if it dies, and stopped.

A thread here owns the child's life (start, wait, start again), so nothing on the event
loop waits for a process. The wake-up pipe outlives the children: each one reads it as
its stdin, and the audit writer's wake() is one non-blocking write at most every
WAKE_EVERY (the child reads at least BATCH_DELAY after a wake-up, so a wake skipped inside
that window is covered by the one before it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from blindkey.audit.ship.shipper import BATCH_DELAY, MAX_BACKOFF, STOP_DEADLINE
from blindkey.audit.ship.shipping import destinations
from blindkey.config.outputs import ShipSettings

log = logging.getLogger("blindkey.audit")
WAKE_EVERY = BATCH_DELAY / 4
EXIT_GRACE = STOP_DEADLINE + 5.0  # then it is killed: a stop must end
FIRST_RESTART = 1.0


class Shipping:
    def __init__(self, audit_dir: Path, settings: ShipSettings, *, sync: bool = True) -> None:
        self.audit_dir, self.sync = audit_dir, sync
        self.settings = settings
        self._wake: tuple[int, int] | None = None  # the pipe (read end, write end), at start
        self._woken = 0.0
        self._lock = threading.Lock()  # the child and the settings, between the two threads
        self._changed = threading.Event()  # a new settings or a stop: the child ends
        self._stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self._keeper: threading.Thread | None = None

    def start(self) -> None:
        self._wake = os.pipe()
        os.set_blocking(self._wake[1], False)
        self._keeper = threading.Thread(target=self._keep, name="audit-ship", daemon=True)
        self._keeper.start()

    def wake(self) -> None:
        """From the audit writer, after an append: cheap, never blocks."""
        now, pipe = time.monotonic(), self._wake
        if now - self._woken < WAKE_EVERY or self._stopping or pipe is None:
            return
        self._woken = now
        # A full pipe holds wake-ups not read yet: one more adds nothing.
        with contextlib.suppress(BlockingIOError):
            os.write(pipe[1], b"w")

    def apply(self, settings: ShipSettings) -> None:
        """At a reload: the child is replaced when [audit.ship] changed (each destination
        resumes from its cursor; a removed one's cursor file stays for its return)."""
        with self._lock:
            if settings == self.settings or self._stopping:
                return
            self.settings = settings
            self._end_child(signal.SIGUSR1)  # after its batch in flight, not a drain

    def stop(self) -> None:
        """Blocking, up to EXIT_GRACE: run it off the event loop."""
        with self._lock:
            self._stopping = True
            self._end_child()
        if self._keeper is not None:
            self._keeper.join(EXIT_GRACE + 1)
        with self._lock:
            # Once only: a second stop (the server's is idempotent) must not close an fd
            # number that another file of this process may hold by now.
            pipe, self._wake = self._wake, None
        for fd in pipe or ():
            os.close(fd)

    def _end_child(self, how: signal.Signals = signal.SIGTERM) -> None:
        self._changed.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(how)
            # It sends what it can within STOP_DEADLINE; one that does not end is killed.
            timer = threading.Timer(EXIT_GRACE, _kill_if_alive, args=(child,))
            timer.daemon = True
            timer.start()

    def _keep(self) -> None:
        backoff = 0.0
        while True:
            with self._lock:
                if self._stopping:
                    return
                self._changed.clear()
                began = time.monotonic()
                ended: str | None = None
                try:
                    child = self.child = self._spawn(self.settings)
                except OSError as exc:  # no process to be had now (EAGAIN, ENOMEM): again later
                    child = self.child = None
                    ended = f"not started: {exc.strerror or exc}"
            if child is not None:
                ended = f"exit {child.wait()}"
            elif ended is None:  # no destination: nothing runs until a reload changes that
                self._changed.wait()
                continue
            if self._changed.is_set():
                backoff = 0.0
                continue
            log.error("audit shipping stopped (%s): starting it again", ended)
            # A child that keeps dying is started less and less often.
            steady = time.monotonic() - began > MAX_BACKOFF
            backoff = FIRST_RESTART if steady else min(MAX_BACKOFF, backoff * 2 or FIRST_RESTART)
            self._changed.wait(backoff)

    def _spawn(self, settings: ShipSettings) -> subprocess.Popen[bytes] | None:
        if not destinations(settings):
            return None
        from blindkey.audit.ship.child import spec  # what a proxy that ships needs alone

        command = [sys.executable, "-m", "blindkey.audit.ship"]
        command.append(spec(self.audit_dir, settings, sync=self.sync))
        assert self._wake is not None  # made by start()
        return subprocess.Popen(command, stdin=self._wake[0], close_fds=True)


def _kill_if_alive(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        log.error("audit shipping did not stop within %.0f s: killed", EXIT_GRACE)
        child.kill()
