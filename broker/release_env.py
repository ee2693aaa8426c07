"""`blindkey env [--secret NAME]... -- CMD [ARG...]`: CMD runs with secret values as
environment variables, and everything it prints comes back redacted.

The values come from the broker (only secrets whose `release` includes `env`, for the
agent whose token is in BLINDKEY_AGENT_TOKEN, tiers applied), which writes the one audit
record with the argv and, once CMD ends, its exit status. CMD's stdout and stderr pass
through the proxy's redactor, a stream each, so a value split across writes is still
caught. With a terminal on both ends CMD gets a terminal of its own (a pty) whose output
is redacted the same way. blindkey exits as CMD did: its status, or its signal.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import pty
import select
import selectors
import signal
import subprocess
import sys
import termios
import tty
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.release import ReleaseLink
from blindkey.broker.release_exec import agent_token, broker_socket, denial_text
from blindkey.config.console import warn
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.model import SECRET_NAME
from blindkey.config.paths import Paths
from blindkey.redact.redactor import FLUSH_DELAY, Redactor, RedactStream

CHUNK = 65536
# Signals someone sends blindkey (kill, a supervisor) that are meant for CMD.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# Sent by a terminal to its whole foreground group, CMD included: forwarded only when
# CMD is not in that group already (it has a pty of its own, or no terminal is there).
FROM_TERMINAL = (signal.SIGINT, signal.SIGQUIT)
NOT_FOUND, NOT_EXECUTABLE = 127, 126


def _command(args: argparse.Namespace) -> list[str]:
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("env needs a command: blindkey env [--secret NAME]... -- CMD [ARG...]")
    return argv


def _names(args: argparse.Namespace) -> list[str] | None:
    for name in args.secret:
        if not SECRET_NAME.match(name):
            raise UsageError(f"--secret {name!r} is not a secret name")
    return list(dict.fromkeys(args.secret)) or None


def cmd_env(paths: Paths, args: argparse.Namespace) -> int:
    argv, names = _command(args), _names(args)
    with ReleaseLink(broker_socket(paths)) as link:
        try:
            answer = link.release(agent_token(), names, "env", argv)
        except BrokerDenied as exc:
            raise BlindkeyError(denial_text(exc)) from None
        if names is not None and answer.errors:
            link.released(None)  # recorded: released nothing, ran nothing
            name, error = next(iter(answer.errors.items()))
            raise BlindkeyError(f"{name}: {error['error']}: {error['message']}")
        for name, error in answer.errors.items():
            warn(f"{name} is not set: {error['error']}: {error['message']}")
        try:
            status = run(argv, answer.values)
        except BaseException:
            link.released(None)
            raise
        try:
            link.released(status)
        except BlindkeyError as exc:  # CMD ran: its status stands, the gap is reported
            warn(f"the broker did not confirm the env record: {exc}")
    return pass_through(status)


def pass_through(status: int) -> int:
    """CMD's exit status as ours; a signal that ended CMD ends blindkey the same way."""
    if status >= 0:
        return status
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
    return 128 - status  # the signal was ignored or blocked


def run(argv: list[str], values: Mapping[str, str]) -> int:
    """CMD's exit status (negative: the signal that ended it)."""
    env = {**os.environ, **values}
    redactor = Redactor(values)
    if sys.stdin.isatty() and sys.stdout.isatty():
        return _run_in_pty(argv, env, redactor)
    return _run_with_pipes(argv, env, redactor)


@contextlib.contextmanager
def _signals(
    send: Callable[[int], None], forwarded: tuple[int, ...], ignored: tuple[int, ...] = ()
) -> Iterator[None]:
    """While CMD runs: `forwarded` signals go to it, `ignored` ones blindkey lets pass."""

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            send(signum)

    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    previous.update({sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored})
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:  # a non-blocking descriptor we inherited: wait for room
            select.select([], [fd], [])


PIPE_FLUSH_DELAY = 1.0


def _run_with_pipes(argv: list[str], env: dict[str, str], redactor: Redactor) -> int:
    try:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        sys.stderr.write(f"blindkey: {argv[0]}: command not found\n")
        return NOT_FOUND
    except PermissionError:
        sys.stderr.write(f"blindkey: {argv[0]}: permission denied\n")
        return NOT_EXECUTABLE
    assert process.stdout is not None
    assert process.stderr is not None
    streams: dict[int, tuple[int, RedactStream]] = {
        process.stdout.fileno(): (sys.stdout.fileno(), redactor.stream()),
        process.stderr.fileno(): (sys.stderr.fileno(), redactor.stream()),
    }
    # With a terminal, CMD is in its foreground group and gets Ctrl-C from it directly.
    terminal = sys.stdin.isatty()
    forwarded = FORWARDED if terminal else FORWARDED + FROM_TERMINAL
    ignored = FROM_TERMINAL if terminal else ()
    with (
        _signals(process.send_signal, forwarded, ignored),
        selectors.DefaultSelector() as selector,
    ):
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while streams:
            # The redactor holds each stream's last bytes; a pause sends them. CMD holds the
            # values (no oracle to fear), so the pause is long: a value printed in parts
            # a moment apart is still joined.
            held = any(stream.tail for _, stream in streams.values())
            ready = selector.select(PIPE_FLUSH_DELAY if held else None)
            for out, stream in [] if ready else streams.values():
                _write_all(out, stream.flush())
            for key, _ in ready:
                fd = key.fd
                data = os.read(fd, CHUNK)
                out, stream = streams[fd]
                if data:
                    _write_all(out, stream.feed(data))
                    continue
                _write_all(out, stream.finish())
                selector.unregister(fd)
                del streams[fd]
        status = process.wait()
    process.stdout.close()
    process.stderr.close()
    return status


def _copy_window_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)


def _run_in_pty(argv: list[str], env: dict[str, str], redactor: Redactor) -> int:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    # Started before fork: a command that cannot start is reported like the pipe case.
    read_end, write_end = os.pipe()
    pid, master = pty.fork()
    if pid == 0:  # the child: a session and terminal of its own
        os.close(read_end)
        try:
            os.execvpe(argv[0], argv, env)  # noqa: S606 - CMD as given, no shell between
        except OSError as exc:
            os.write(write_end, str(exc.errno).encode())
        os._exit(NOT_FOUND)
    os.close(write_end)
    failed = os.read(read_end, 16)
    os.close(read_end)
    if failed:
        os.waitpid(pid, 0)
        os.close(master)
        code = int(failed)
        reason = "command not found" if code == errno.ENOENT else os.strerror(code).lower()
        sys.stderr.write(f"blindkey: {argv[0]}: {reason}\n")
        return NOT_FOUND if code == errno.ENOENT else NOT_EXECUTABLE
    _copy_window_size(stdout, master)
    stream = redactor.stream()
    saved = termios.tcgetattr(stdin)
    tty.setraw(stdin)

    def resize(signum: int, frame: FrameType | None) -> None:
        _copy_window_size(stdout, master)

    previous_winch = signal.signal(signal.SIGWINCH, resize)
    try:
        with (
            _signals(lambda sig: os.kill(pid, sig), FORWARDED + FROM_TERMINAL),
            selectors.DefaultSelector() as selector,
        ):
            selector.register(master, selectors.EVENT_READ)
            selector.register(stdin, selectors.EVENT_READ)
            while True:
                done = False
                ready = selector.select(FLUSH_DELAY if stream.tail else None)
                if not ready:
                    _write_all(stdout, stream.flush())
                for key, _ in ready:
                    if key.fd == stdin:
                        typed = os.read(stdin, CHUNK)
                        if typed:
                            _write_all(master, typed)
                        else:
                            selector.unregister(stdin)
                        continue
                    try:
                        data = os.read(master, CHUNK)
                    except OSError:  # EIO: the child's side of the terminal is closed
                        data = b""
                    if not data:
                        done = True
                        break
                    _write_all(stdout, stream.feed(data))
                if done:
                    break
            _write_all(stdout, stream.finish())
    finally:
        termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)
        signal.signal(signal.SIGWINCH, previous_winch)
        os.close(master)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)
