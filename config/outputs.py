"""Where blindkey tells others: approvers' notices (`[notify]`), Prometheus metrics
(`[metrics]`) and copies of the audit for a SIEM (`[audit.ship]`). Declared like every other
table (config/fields.py); config/model.py puts them in Settings."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from blindkey.config.addresses import is_loopback_host
from blindkey.config.fields import Invalid, setting
from blindkey.config.values import BOOL, Kind, choice, text, toml_value

NOTIFY_FORMATS = ("json", "slack")
JOURNAL_SOCKET = "/run/systemd/journal/socket"


@dataclass(frozen=True)
class NotifySettings:
    """How approvers are told that a call waits for them (broker/approvals/notify_approver.py)."""

    desktop: bool = setting(BOOL, True, "notify-send / osascript where present")
    webhook: str = setting(
        text("a URL"),
        "",
        'URL: POST {"event","approval_id","agent","secret","host","method","path","approve"}',
    )
    format: str = setting(
        choice(NOTIFY_FORMATS),
        "json",
        'json: the fields above; slack: {"text": ...} for Slack incoming webhooks',
    )

    def checked(self) -> NotifySettings:
        if self.webhook:
            try:
                parts = urlsplit(self.webhook)
                parts.port  # noqa: B018 -- a bad port raises here, not at the first notice
            except ValueError as exc:
                raise Invalid("webhook", f"not a URL: {exc}") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise Invalid("webhook", "an absolute http(s) URL is required")
        return self


def _metrics_listen(value: object) -> str:
    """`[metrics] listen`: empty (off) or a loopback `host:port` (metrics are not for other
    machines: scrape them through a local agent)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string like 127.0.0.1:9465, got {value!r}")
    if not value:
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port such as 127.0.0.1:9465, got {value!r}")
    if not is_loopback_host(host):
        raise ValueError(
            f"{value!r} is not a loopback address: the metrics listener serves this machine "
            "only (use 127.0.0.1 or [::1])"
        )
    return value


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = setting(
        Kind(_metrics_listen, toml_value, "loopback `host:port`"),
        "",
        "e.g. 127.0.0.1:9465: Prometheus text at /metrics (loopback only)",
        doc="where the proxy serves Prometheus metrics at `/metrics` (empty: off); a "
        "loopback address only, read at start",
    )


def _ship_url(key: str, url: str, schemes: tuple[str, ...]) -> None:
    if not url:
        return
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Invalid(key, f"{url!r}: {exc}") from exc
    if parts.scheme not in schemes or not parts.hostname or port is None:
        raise Invalid(
            key, f"expected {' or '.join(f'{s}://HOST:PORT' for s in schemes)}, got {url!r}"
        )


@dataclass(frozen=True)
class ShipSettings:
    """Where audit records are copied, from the audit file, each exactly once (audit/ship/)."""

    syslog: str = setting(
        text("a URL"), "", "tcp://H:P or tls://H:P: RFC 5424, octet-counted (RFC 6587/5425)"
    )
    otlp: str = setting(text("a URL"), "", "http://H:P (or https://): OTLP/HTTP logs")
    ca_file: str = setting(
        text("a file path"), "", "CA bundle for tls:// and https:// (default: the system's)"
    )
    journald: bool = setting(
        BOOL,
        False,
        "each record to the systemd journal (MESSAGE = the record, BLINDKEY_* fields)",
        doc="send each record to the systemd journal by its native protocol: MESSAGE is the "
        "record's line, SYSLOG_IDENTIFIER=blindkey, PRIORITY 6 (4: a blocked call), and "
        "BLINDKEY_SEQ, BLINDKEY_EVENT, BLINDKEY_DECISION, BLINDKEY_AGENT, "
        "BLINDKEY_REQUEST_ID to select on (`journalctl SYSLOG_IDENTIFIER=blindkey`)",
    )
    journal_socket: str = setting(
        text("a socket path"),
        JOURNAL_SOCKET,
        "journald's native socket (another path: a relay that speaks the same protocol)",
    )

    def checked(self) -> ShipSettings:
        _ship_url("syslog", self.syslog, ("tcp", "tls"))
        _ship_url("otlp", self.otlp, ("http", "https"))
        if self.journald and not self.journal_socket.startswith("/"):
            raise Invalid(
                "journal_socket", f"an absolute path is required, got {self.journal_socket!r}"
            )
        if self.ca_file and not Path(self.ca_file).expanduser().is_file():
            raise Invalid("ca_file", f"no such file {self.ca_file!r}")
        return self
