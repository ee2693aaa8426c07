"""Prometheus metrics on an opt-in loopback listener (`[metrics] listen`): the text format
(version 0.0.4) at `/metrics`, written here (a few dozen lines; prometheus_client would
bring a registry, a thread and a process collector the proxy has no use for).

Counted from the audit records as they are finished (every call has exactly one, so the
metrics and the audit agree), read from the parts that keep their own counts (connection
guard, held calls, the audit writer), and asked of the broker at scrape time (pending
approvals, active grants). Labels are fixed words (decision, error code, status); no
secret's name or value, agent or URL is ever a label.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from blindkey.audit.writer import AuditWriter
from blindkey.config.errors import BlindkeyError
from blindkey.proxy.connections import ConnectionGuard
from blindkey.proxy.runtime import ProxyRuntime

log = logging.getLogger("blindkey.proxy")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a call through blindkey is milliseconds to minutes (a held call waits for a human).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BROKER_TIMEOUT = 1.0


class CallMetrics:
    """Counts of finished calls, fed by the audit writer (`observe`)."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str, str], int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last: above every bound (+Inf only)
        self.duration_sum = 0.0
        self.redactions = 0
        self.cut = 0

    def observe(self, record: dict[str, Any]) -> None:
        if record.get("event", "request") != "request":
            return
        count = record.get("count") or 1
        key = (str(record["decision"]), str(record["reason"] or "ok"), str(record["status"]))
        self.calls[key] = self.calls.get(key, 0) + count
        seconds = record["duration_ms"] / 1000
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += count
        self.duration_sum += seconds * count
        self.redactions += record["redactions"]
        if not record["complete"]:
            self.cut += count


@dataclass(frozen=True)
class Sources:
    """The proxy's parts the metrics read at scrape time (the guard exists once started)."""

    audit: AuditWriter
    runtime: ProxyRuntime
    guard: Callable[[], ConnectionGuard | None]
    broker_state: Callable[[], str]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exposition:
    """The text format, one family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        if labels:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            name = f"{name}{{{inner}}}"
        text = str(int(value)) if float(value).is_integer() else repr(float(value))
        self.lines.append(f"{name} {text}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def _calls(out: Exposition, calls: CallMetrics) -> None:
    out.family("blindkey_calls_total", "counter", "Calls answered, by decision, code and status.")
    for (decision, code, status), count in sorted(calls.calls.items()):
        out.sample("blindkey_calls_total", count, decision=decision, code=code, status=status)
    name = "blindkey_call_duration_seconds"
    out.family(name, "histogram", "Time from a call's arrival to its record, held calls included.")
    running = 0
    for bound, count in zip(BUCKETS, calls.buckets, strict=False):
        running += count
        out.sample(f"{name}_bucket", running, le=repr(bound))
    total = running + calls.buckets[-1]
    out.sample(f"{name}_bucket", total, le="+Inf")
    out.sample(f"{name}_sum", calls.duration_sum)
    out.sample(f"{name}_count", total)
    out.one("blindkey_redactions_total", "counter", "Secret values replaced in answers.",
            calls.redactions)  # fmt: skip
    out.one("blindkey_calls_cut_total", "counter", "Answers cut before their end.", calls.cut)


def _guard(out: Exposition, server: Sources) -> None:
    guard = server.guard()
    if guard is None:
        return
    out.one("blindkey_connections_open", "gauge", "Agent connections open.", guard.active)
    out.one("blindkey_calls_in_flight", "gauge", "Calls under way.", guard.in_flight)
    for name, value, what in (
        ("refused", guard.refused, "refused at the connection limit"),
        ("timed_out", guard.timed_out, "closed for sending no request in time"),
        ("evicted", guard.evicted, "idle ones closed to admit a new one at the limit"),
    ):
        out.one(f"blindkey_connections_{name}_total", "counter", f"Connections {what}.", value)


def _audit(out: Exposition, server: Sources) -> None:
    lag = server.audit.lag()
    out.one("blindkey_audit_seq", "gauge", "The audit chain's last seq.", lag["seq"])
    out.one("blindkey_audit_writes_total", "counter", "Audit write() calls.", lag["writes"])
    out.one("blindkey_audit_writes_synced_total", "counter",
            "Audit write() calls covered by an fsync (the lag is writes minus these).",
            lag["synced"])  # fmt: skip
    out.one("blindkey_audit_waiting_records", "gauge",
            "Records waiting for the disk (the audit is unavailable).", lag["waiting"])  # fmt: skip
    out.one("blindkey_audit_available", "gauge", "1 while the audit can be written.",
            1 if server.audit.available else 0)  # fmt: skip


async def _broker(out: Exposition, server: Sources) -> None:
    runtime = server.runtime
    up = 1 if server.broker_state() == "running" and runtime.broker_error is None else 0
    out.one("blindkey_broker_up", "gauge", "1 while the broker serves.", up)
    out.one("blindkey_held_calls", "gauge", "Calls held for a human's approval.",
            runtime.waits.waiting)  # fmt: skip
    for action, name, what in (
        ("requests", "blindkey_pending_approvals", "Approval requests waiting for a human."),
        ("grants", "blindkey_active_grants", "Grants in force."),
    ):
        rows = await _ask(server, action)
        if rows is not None:  # the broker refused or is away: better no number than a wrong one
            out.one(name, "gauge", what, len(rows))


async def _ask(server: Sources, action: str) -> list[Any] | None:
    with contextlib.suppress(BlindkeyError, TimeoutError):
        async with asyncio.timeout(BROKER_TIMEOUT):
            reply = await server.runtime.authoriser.broker.call(
                "approvals", action=action, params={}
            )
        result = reply.get("result")
        return result if isinstance(result, list) else None
    return None


async def exposition(server: Sources, calls: CallMetrics) -> bytes:
    out = Exposition()
    _calls(out, calls)
    _guard(out, server)
    _audit(out, server)
    await _broker(out, server)
    return out.text()


@dataclass
class MetricsListener:
    """`GET /metrics` on its own loopback socket, apart from the agents' port."""

    server: Sources
    calls: CallMetrics
    runner: web.ServerRunner | None = None
    port: int = 0

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if "Origin" in request.headers:  # a web page (DNS rebinding) has no business here
            return web.Response(status=403, text="browser requests are refused\n")
        if request.path != "/metrics" or request.method not in ("GET", "HEAD"):
            return web.Response(status=404, text="metrics are at GET /metrics\n")
        body = await exposition(self.server, self.calls)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self.runner = web.ServerRunner(web.Server(self._handle, access_log=None))
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, int(port), reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise BlindkeyError(
                f"[metrics] listen = {listen!r}: cannot listen there ({exc.strerror})"
            ) from exc
        self.port = int(self.runner.addresses[0][1])
        log.info("metrics at http://%s/metrics", listen)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def observer(listen: str, calls: CallMetrics) -> Callable[[dict[str, Any]], None] | None:
    """What the audit writer tells of each record: nothing to do while metrics are off."""
    return calls.observe if listen else None
