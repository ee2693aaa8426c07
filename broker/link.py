"""The one synchronous client of the broker: every CLI command that asks the broker
anything (approvals, policy, a change to put in force, a release for `env`, `exec` or
`mcp`, the audit anchor, `proxy status`) asks through here, so each way of failing to
reach it is told apart, and worded, once.

A Link is one connection to the broker this user's settings name (its own, or an
external `[broker] socket`). Requests on it are framed and numbered; frames that are not
the answer (invalidations the broker pushes) are passed over. Failures are
BrokerUnavailable subclasses, so a caller that only needs "no answer" catches that:

    NotRunning    nothing listens at the socket (no such file, connection refused)
    NotPermitted  the socket is another user's and this user may not open it
    NoAnswer      the broker took no connection or gave no answer in time
    BrokeOff      the connection ended or went out of step before the answer (closed,
                  reset, a frame that is not one: a broker that turned this uid away,
                  or something at the socket that is no broker)
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import TracebackType

from blindkey.broker.protocol import (
    ACK_TIMEOUT,
    BrokerDenied,
    BrokerUnavailable,
    FrameDecoder,
    Message,
    ProtocolError,
    encode,
)
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths

DEFAULT_TIMEOUT = 10.0
# A change is answered once every proxy acknowledged it (the broker waits ACK_TIMEOUT for
# them): waiting longer lets the broker's own word about a late proxy arrive.
CHANGE_TIMEOUT = ACK_TIMEOUT + 3.0
READ_SIZE = 65536
BROKE_OFF = "the broker's answer broke off"


class NotRunning(BrokerUnavailable):
    """Nothing listens at the broker's socket."""


class NotPermitted(BrokerUnavailable):
    """The socket is another user's (a broker run as its own user) and not open to this one."""


class NoAnswer(BrokerUnavailable):
    """The broker took no connection, or gave no answer, within the timeout."""


class BrokeOff(BrokerUnavailable):
    """The connection ended or went out of step before the answer came."""


def socket_path(paths: Paths, settings: Settings | None = None) -> Path:
    """The socket of the broker these settings name (None: this home's config.toml, or
    the defaults when it cannot be read, as an agent's user may be unable to)."""
    if settings is None:
        try:
            settings = load_settings(paths.config_file)
        except (BlindkeyError, OSError):
            settings = Settings()
    return paths.broker_socket_at(settings.broker.socket)


def _unreachable(path: Path, exc: OSError, timeout: float) -> BrokerUnavailable:
    reason = exc.strerror or str(exc)
    if isinstance(exc, PermissionError):
        return NotPermitted(
            f"this user may not open the broker's socket {path} ({reason}): it belongs "
            "to the broker's user"
        )
    # A broker whose queue of connections is full is running: it is busy, not absent.
    if isinstance(exc, BlockingIOError):
        return NoAnswer(f"the broker takes no more connections now ({reason})")
    if isinstance(exc, TimeoutError):
        return NoAnswer(f"the broker did not accept a connection within {timeout:g}s")
    return NotRunning(
        f"the secret broker is not running ({reason}); start it with `blindkey proxy start`"
    )


class Link:
    """One connection to the broker; requests on it one after another."""

    def __init__(self, path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._frames = FrameDecoder()
        self._last_id = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError as exc:
            self._sock.close()
            raise _unreachable(path, exc, timeout) from exc

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def ask(self, op: str, **fields: object) -> Message:
        """The broker's reply to one request, an `error` in it included."""
        self._last_id += 1
        request_id = self._last_id
        # The whole answer within the timeout: pushes trickling in do not extend it.
        deadline = time.monotonic() + self.timeout
        try:
            self._sock.sendall(encode({"id": request_id, "op": op, **fields}))
            while True:
                self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
                data = self._sock.recv(READ_SIZE)
                if not data:
                    raise BrokeOff(f"{BROKE_OFF} (the broker closed the connection)")
                for reply in self._frames.feed(data):
                    if reply.get("id") == request_id:
                        return reply
        except TimeoutError as exc:
            raise NoAnswer(f"the broker did not answer within {self.timeout:g}s") from exc
        except (OSError, ProtocolError) as exc:
            raise BrokeOff(f"{BROKE_OFF} ({exc})") from exc

    # A stream (`approvals.watch`): send once, then receive its frames as they come,
    # waiting on fileno() with select/selectors between reads.
    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, op: str, **fields: object) -> int:
        """Send a request; its id (the frames of its stream carry it)."""
        self._last_id += 1
        try:
            self._sock.sendall(encode({"id": self._last_id, "op": op, **fields}))
        except OSError as exc:
            raise BrokeOff(f"{BROKE_OFF} ({exc})") from exc
        return self._last_id

    def receive(self) -> list[Message]:
        """The frames one read brings (pushes included: callers pick theirs by id)."""
        try:
            data = self._sock.recv(READ_SIZE)
            if not data:
                raise BrokeOff(f"{BROKE_OFF} (the broker closed the connection)")
            return self._frames.feed(data)
        except TimeoutError as exc:
            raise NoAnswer(f"the broker sent nothing within {self.timeout:g}s") from exc
        except (OSError, ProtocolError) as exc:
            raise BrokeOff(f"{BROKE_OFF} ({exc})") from exc

    def call(self, op: str, **fields: object) -> Message:
        """The reply to a request the broker granted; its refusal as BrokerDenied."""
        reply = self.ask(op, **fields)
        error = reply.get("error")
        if error is not None:
            raise BrokerDenied(str(error), str(reply.get("message", error)))
        return reply


def connect(
    paths: Paths, settings: Settings | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> Link:
    """A Link to the broker of these settings (see socket_path)."""
    return Link(socket_path(paths, settings), timeout=timeout)


def ask(
    paths: Paths,
    op: str,
    *,
    settings: Settings | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **fields: object,
) -> Message:
    """One request on a connection of its own: the broker's reply, `error` included."""
    with connect(paths, settings, timeout=timeout) as link:
        return link.ask(op, **fields)
