"""The systemd journal, by its native protocol: one datagram per record to journald's
socket, a field per line (`KEY=value`; a value with a newline as `KEY`, a newline, its
length as 64-bit little-endian, the value), as systemd's "Native Journal Protocol" says.
A record too large for a datagram goes in a sealed memfd whose descriptor is sent instead,
as sd_journal_send does.

MESSAGE is the record's line as chained (a copy can be checked record by record);
BLINDKEY_SEQ, BLINDKEY_EVENT, BLINDKEY_DECISION, BLINDKEY_AGENT, BLINDKEY_REQUEST_ID are
fields `journalctl BLINDKEY_EVENT=...` can select on. A datagram the kernel took is in
journald's queue: records are confirmed one by one, and a failure part way through a batch
says how many went (none of them is sent twice).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Sequence

from blindkey.audit.ship.source import Record
from blindkey.audit.ship.syslog import TIMEOUT, ShipError, describe
from blindkey.config.outputs import JOURNAL_SOCKET

IDENTIFIER = b"SYSLOG_IDENTIFIER=blindkey\n"
PRIORITY = {False: b"PRIORITY=6\n", True: b"PRIORITY=4\n"}  # info; warning: a blocked call
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
FIELDS = {
    "event": b"BLINDKEY_EVENT",
    "decision": b"BLINDKEY_DECISION",
    "agent": b"BLINDKEY_AGENT",
    "request_id": b"BLINDKEY_REQUEST_ID",
}


def _field(name: bytes, value: bytes) -> bytes:
    if b"\n" in value:
        return name + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return name + b"=" + value + b"\n"


def entry(record: Record) -> bytes:
    """One journal entry for `record`."""
    values = record.values
    parts = [
        _field(b"MESSAGE", record.line),
        IDENTIFIER,
        PRIORITY[values.get("decision") == "blocked"],
        b"BLINDKEY_SEQ=%d\n" % record.seq,
    ]
    for key, name in FIELDS.items():
        value = values.get(key)
        if isinstance(value, str):
            parts.append(_field(name, value.encode("utf-8", "surrogateescape")))
    return b"".join(parts)


class JournaldSink:
    def __init__(self, path: str = JOURNAL_SOCKET, *, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout  # a receiver that stops reading fills its queue: not forever
        self.sock: socket.socket | None = None

    def deliver(self, records: Sequence[Record]) -> None:
        for index, record in enumerate(records):
            try:
                self._send(entry(record))
            except OSError as exc:
                self.close()
                raise ShipError(f"{self.path}: {describe(exc)}", delivered=index) from exc

    def _send(self, data: bytes) -> None:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(self.path)
        try:
            self.sock.send(data)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_large(data)

    def _send_large(self, data: bytes) -> None:
        assert self.sock is not None
        fd = os.memfd_create("blindkey-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)  # journald takes a memfd only sealed
            rights = array.array("i", [fd]).tobytes()
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
