"""OpenTelemetry logs over HTTP (OTLP/HTTP, protobuf body, POST /v1/logs).

The four messages of an ExportLogsServiceRequest are encoded here by hand: protobuf's wire
format is a few lines (a varint key, then a varint, 8 bytes or a length and bytes), and the
protobuf runtime would be a dependency of the daemon for them. The tests decode what is
sent with the official opentelemetry-proto package.

One record is one LogRecord: its time, INFO or WARN (blocked calls), the chained line as
the body (a copy can be checked record by record), and seq, event, decision, agent and
request id as attributes a query can use. A batch is confirmed by a 2xx answer.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata

from blindkey.audit.ship.source import Record
from blindkey.audit.ship.syslog import TIMEOUT, ShipError, describe

SEVERITY_INFO, SEVERITY_WARN = 9, 13
ATTRIBUTES = ("event", "decision", "agent", "request_id")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _string(field: int, text: str) -> bytes:
    return _length_delimited(field, text.encode("utf-8", "surrogateescape"))


def _fixed64(field: int, value: int) -> bytes:
    return _varint(field << 3 | 1) + struct.pack("<Q", value)


def _attribute(key: str, value: str | int) -> bytes:
    """A KeyValue: key = 1, value = 2 (AnyValue: string_value = 1, int_value = 3)."""
    if isinstance(value, int):
        any_value = _varint(3 << 3) + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    else:
        any_value = _string(1, value)
    return _string(1, key) + _length_delimited(2, any_value)


def _nanos(ts: str) -> int:
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def log_record(record: Record, observed: int) -> bytes:
    values = record.values
    blocked = values.get("decision") == "blocked"
    parts = [
        _fixed64(1, _nanos(values["ts"])),  # time_unix_nano
        _varint(2 << 3) + _varint(SEVERITY_WARN if blocked else SEVERITY_INFO),
        _string(3, "WARN" if blocked else "INFO"),
        _length_delimited(5, _string(1, record.line.decode("utf-8", "surrogateescape"))),
        _length_delimited(6, _attribute("blindkey.seq", record.seq)),
    ]
    for name in ATTRIBUTES:
        value = values.get(name)
        if isinstance(value, str):
            parts.append(_length_delimited(6, _attribute(f"blindkey.{name}", value)))
    parts.append(_fixed64(11, observed))  # observed_time_unix_nano
    return b"".join(parts)


def _version() -> str:
    try:
        return metadata.version("blindkey")
    except metadata.PackageNotFoundError:
        return "unknown"


def export_request(records: Sequence[Record], hostname: str, version: str) -> bytes:
    """ExportLogsServiceRequest{resource_logs: [ResourceLogs{resource, scope_logs}]}."""
    observed = time.time_ns()
    resource = _length_delimited(1, _attribute("service.name", "blindkey"))
    resource += _length_delimited(1, _attribute("host.name", hostname))
    scope = _string(1, "blindkey.audit") + _string(2, version)
    scope_logs = _length_delimited(1, scope) + b"".join(
        _length_delimited(2, log_record(record, observed)) for record in records
    )
    resource_logs = _length_delimited(1, resource) + _length_delimited(2, scope_logs)
    return _length_delimited(1, resource_logs)


class OtlpSink:
    def __init__(self, url: str, ca_file: str = "", *, timeout: float = TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname is not None  # config checked it
        assert parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self.path = parts.path if parts.path not in ("", "/") else "/v1/logs"
        self.context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.context = ssl.create_default_context(cafile=ca_file or None)
        self.timeout = timeout
        self.hostname = socket.gethostname()
        self.version = _version()
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            if self.context is None:
                self.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
            else:
                self.connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.context
                )
        return self.connection

    def deliver(self, records: Sequence[Record]) -> None:
        body = export_request(records, self.hostname, self.version)
        headers = {"Content-Type": "application/x-protobuf"}
        try:
            connection = self._connect()
            connection.request("POST", self.path, body=body, headers=headers)
            answer = connection.getresponse()
            text = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ShipError(f"{self.host}:{self.port}: {describe(exc)}") from exc
        if not 200 <= answer.status < 300:
            self.close()
            said = text[:200].decode("utf-8", "replace")
            raise ShipError(f"{self.host}:{self.port} answered {answer.status} {said}".rstrip())

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
