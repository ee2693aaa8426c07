"""RFC 5424 syslog over TCP or TLS, octet-counted (RFC 6587 3.4.1, RFC 5425 4.3).

One audit record per message: the record's line, exactly as chained, is the MSG, so a
copy can be checked record by record. `[meta sequenceId]` (RFC 5424 7.3.1) carries the
record's seq while it fits the field's range.

A batch is one connection: sent, then half-closed, then confirmed by the receiver closing
its side. A receiver closes its side (FIN) only after reading to our end; one that stops
with bytes unread resets the connection instead, and the batch is sent again. So records a
receiver stopped before reading are not lost, and a batch it read whole is not repeated.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Sequence

from blindkey.audit.ship.source import Record

FACILITY = 13  # "log audit" (RFC 5424 table 1)
INFO, WARNING = 6, 4
APP_NAME = "blindkey"
MAX_SEQUENCE_ID = 2**31 - 1
TIMEOUT = 10.0


class ShipError(Exception):
    """A batch was not confirmed; it is sent again after a pause. `delivered`: how many of
    its first records were (a destination that takes records one by one), not sent again."""

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def _printable(text: str, limit: int) -> str:
    """A header field: PRINTUSASCII (33-126), at most `limit` characters, or "-"."""
    if len(text) <= limit and _PRINTABLE.fullmatch(text):
        return text  # what the audit writes: checked at C speed
    kept = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return kept or "-"


def message(record: Record, hostname: str, procid: str) -> bytes:
    """One RFC 5424 message for `record` (without its octet count)."""
    values = record.values
    severity = WARNING if values.get("decision") == "blocked" else INFO
    event = _printable(str(values.get("event") or "request"), 32)
    seq = record.seq
    data = f'[meta sequenceId="{seq}"]' if 0 < seq <= MAX_SEQUENCE_ID else "-"
    header = (
        f"<{FACILITY * 8 + severity}>1 {_printable(values['ts'], 64)} {hostname} "
        f"{APP_NAME} {procid} {event} {data} "
    )
    return header.encode("ascii") + record.line


def frames(records: Sequence[Record], hostname: str, procid: str) -> bytes:
    parts: list[bytes] = []
    for record in records:
        body = message(record, hostname, procid)
        parts += (str(len(body)).encode(), b" ", body)
    return b"".join(parts)


class SyslogSink:
    def __init__(self, url: str, ca_file: str = "", *, timeout: float = TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname is not None  # config checked it
        assert parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self.context: ssl.SSLContext | None = None
        if parts.scheme == "tls":
            self.context = ssl.create_default_context(cafile=ca_file or None)
        self.timeout = timeout
        self.hostname = _printable(socket.gethostname(), 255)
        self.procid = str(os.getpid())

    def deliver(self, records: Sequence[Record]) -> None:
        payload = frames(records, self.hostname, self.procid)
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ShipError(f"cannot connect to {self.host}:{self.port}: {describe(exc)}") from exc
        try:
            if self.context is None:
                raw.sendall(payload)
                raw.shutdown(socket.SHUT_WR)
                _await_close(raw)
            else:
                self._deliver_tls(raw, payload)
        except (OSError, ssl.SSLError) as exc:
            raise ShipError(f"{self.host}:{self.port}: {describe(exc)}") from exc
        finally:
            raw.close()

    def close(self) -> None:
        """Nothing stays open between batches."""

    def _deliver_tls(self, raw: socket.socket, payload: bytes) -> None:
        assert self.context is not None
        secure = self.context.wrap_socket(raw, server_hostname=self.host)  # owns the fd now
        try:
            secure.sendall(payload)
            try:
                # close_notify, then the receiver's: it has read (and checked) every record.
                plain = secure.unwrap()
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return  # it closed without close_notify, after reading all: a reset is not EOF
            with plain:
                plain.shutdown(socket.SHUT_WR)
                _await_close(plain)
        finally:
            secure.close()


def _await_close(sock: socket.socket) -> None:
    """Read until the receiver closes: EOF (it read everything) or a reset (it did not)."""
    while sock.recv(4096):
        pass  # a syslog receiver says nothing; anything it does send is not ours to read


def describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
