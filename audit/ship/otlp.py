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

import functools
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
    if value < 0x4000:
        return _SHORT[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encoded(value: int) -> bytes:
    return bytes((value,)) if value < 0x80 else bytes((value & 0x7F | 0x80, value >> 7))


# Every varint of one or two bytes, made once: the lengths and small numbers of a record
# (its line's length among them) are looked up, not encoded byte by byte.
_SHORT = [_encoded(n) for n in range(0x4000)]


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


@functools.lru_cache(maxsize=64)
def _second(text: str) -> int:
    return int(datetime.fromisoformat(text + "+00:00").timestamp())


def _nanos(ts: str) -> int:
    """RFC 3339 as the audit writes it (2026-12-07T14:57:07.171Z); any other form parsed
    in full. Per record: the second is looked up, only the milliseconds read."""
    if len(ts) == 24 and ts[19] == "." and ts[23] == "Z" and ts[20:23].isdigit():
        return _second(ts[:19]) * 1_000_000_000 + int(ts[20:23]) * 1_000_000
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


# The parts that are the same in every record, encoded once.
_TIME = _varint(1 << 3 | 1)
_OBSERVED = _varint(11 << 3 | 1)
_SEVERITY = {
    False: _varint(2 << 3) + _varint(SEVERITY_INFO) + _string(3, "INFO"),
    True: _varint(2 << 3) + _varint(SEVERITY_WARN) + _string(3, "WARN"),
}
_BODY = _varint(5 << 3 | 2)
_SEQ_KEY = _string(1, "blindkey.seq")
_KEYS = {name: _string(1, f"blindkey.{name}") for name in ATTRIBUTES}


@functools.lru_cache(maxsize=1024)
def _repeated(name: str, value: str) -> bytes:
    return _encode_attribute(name, value)


def _encode_attribute(name: str, value: str) -> bytes:
    pair = _KEYS[name] + _length_delimited(2, _string(1, value))
    return b"\x32" + _varint(len(pair)) + pair


def log_record(record: Record, observed: bytes) -> bytes:
    """`observed`: observed_time_unix_nano, encoded once per batch. Per record this is
    the shipping process's largest cost: parts are joined once, not copied at each level."""
    values = record.values
    line = record.line  # UTF-8 as written: the AnyValue's string_value as it is
    size = _varint(len(line))
    number = b"\x18" + _varint(record.seq & 0xFFFF_FFFF_FFFF_FFFF)  # AnyValue.int_value
    seq = _SEQ_KEY + b"\x12" + _SHORT[len(number)] + number
    decision = values.get("decision")
    parts = [
        _TIME,
        _PACK(_nanos(values["ts"])),
        _SEVERITY[decision == "blocked"],
        _BODY,  # body (5): AnyValue{string_value (1)}
        _varint(1 + len(size) + len(line)),
        b"\x0a",
        size,
        line,
        b"\x32",  # attributes (6)
        _SHORT[len(seq)],
        seq,
    ]
    event, agent, request_id = values.get("event"), values.get("agent"), values.get("request_id")
    if type(event) is str:
        parts.append(_repeated("event", event))
    if type(decision) is str:
        parts.append(_repeated("decision", decision))
    if type(agent) is str:
        parts.append(_repeated("agent", agent))
    if type(request_id) is str:
        parts.append(_encode_attribute("request_id", request_id))
    parts.append(observed)
    return b"".join(parts)


_PACK = struct.Struct("<Q").pack


def _version() -> str:
    try:
        return metadata.version("blindkey")
    except metadata.PackageNotFoundError:
        return "unknown"


def export_request(records: Sequence[Record], hostname: str, version: str) -> bytes:
    """ExportLogsServiceRequest{resource_logs: [ResourceLogs{resource, scope_logs}]}."""
    observed = _OBSERVED + struct.pack("<Q", time.time_ns())
    resource = _length_delimited(1, _attribute("service.name", "blindkey"))
    resource += _length_delimited(1, _attribute("host.name", hostname))
    scope = _string(1, "blindkey.audit") + _string(2, version)
    encoded = [log_record(record, observed) for record in records]
    scope_logs = _length_delimited(1, scope) + b"".join(
        [part for one in encoded for part in (b"\x12", _varint(len(one)), one)]  # 2: a record
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
