"""Real receivers for audit shipping: Debian's rsyslogd (imtcp, plain or with the gtls
driver and a trustme CA) writing what it receives to a file, and an OTLP/HTTP receiver
decoding with the official opentelemetry-proto messages."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from blindkey.audit.store import audit_files

# Fields rsyslog parsed out of each RFC 5424 message, then the MSG as received.
FIELDS = "%syslogfacility%|%syslogseverity%|%app-name%|%procid%|%msgid%|%structured-data%"
RECEIVED = "received"


def audit_lines(audit_dir: Path) -> list[bytes]:
    """Every record line of the audit, oldest first, without newlines."""
    lines: list[bytes] = []
    for path in audit_files(audit_dir):
        if path.exists():
            lines += [line for line in path.read_bytes().split(b"\n") if line]
    return lines


async def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll `check` until true (the receivers give no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@dataclass
class Rsyslog:
    """rsyslogd as an unprivileged process: `start()` on a free port the first time, on
    the same port after `stop()` (a receiver back after an outage)."""

    workdir: Path
    tls: trustme.CA | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.workdir / "out.log"

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://127.0.0.1:{self.port}"

    def _config(self) -> str:
        work = self.workdir
        driver = ""
        if self.tls is not None:
            cert = self.tls.issue_cert("localhost", "127.0.0.1")
            self.tls.cert_pem.write_to_path(str(work / "ca.pem"))
            cert.private_key_pem.write_to_path(str(work / "key.pem"))
            cert.cert_chain_pems[0].write_to_path(str(work / "cert.pem"))
            driver = (
                f' DefaultNetstreamDriverCAFile="{work}/ca.pem"'
                f' DefaultNetstreamDriverCertFile="{work}/cert.pem"'
                f' DefaultNetstreamDriverKeyFile="{work}/key.pem"'
            )
        module = 'module(load="imtcp"'
        module += (
            ' StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")'
            if self.tls
            else ")"
        )
        return "\n".join(
            [
                f'global(workDirectory="{work}"{driver})',
                module,
                f'input(type="imtcp" port="{self.port}" listenPortFileName="{work}/port" '
                'ruleset="out")',
                f'template(name="fields" type="string" string="{FIELDS}|%msg%\\n")',
                # Direct: a message is in the file before rsyslogd reads on, so one it read is
                # not lost when it is killed; what it did not read is the sender's to resend.
                f'ruleset(name="out" queue.type="direct") {{ action(type="omfile" '
                f'file="{self.out}" template="fields") }}',
                "",
            ]
        )

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        conf = self.workdir / "rsyslog.conf"
        conf.write_text(self._config())
        self.process = await asyncio.to_thread(self._spawn, conf)
        if self.port:  # back on its port: rsyslogd names only a port it chose
            await wait_for(lambda: _listening(self.port), 20, "rsyslogd to listen")
            return
        await wait_for(
            lambda: port_file.exists() and port_file.read_text().strip() != "",
            20,
            "rsyslogd to listen",
        )
        self.port = int(port_file.read_text())

    async def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)  # a stopped one would never hear SIGTERM
        self.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.process.wait, 20)
        self.process = None

    def _spawn(self, conf: Path) -> subprocess.Popen[bytes]:
        with open(self.workdir / "rsyslogd.log", "ab") as errors:
            return subprocess.Popen(
                ["rsyslogd", "-n", "-f", str(conf), "-i", str(self.workdir / "pid")],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await asyncio.to_thread(self.process.wait, 20)
        self.process = None

    def unread(self) -> int:
        """Bytes waiting in rsyslogd's connections that it has not read (/proc/net/tcp)."""
        waiting = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, _, state, queues = line.split()[1:5]
            # Established, or closed by the sender (close-wait) with bytes still unread.
            if int(local.split(":")[1], 16) == self.port and state in ("01", "08"):
                waiting += int(queues.split(":")[1], 16)
        return waiting

    def received(self) -> list[list[str]]:
        """Each message as [facility, severity, app-name, procid, msgid, sd, msg]."""
        if not self.out.exists():
            return []
        text = self.out.read_text("utf-8")
        return [line.split("|", 6) for line in text.splitlines() if line]


@dataclass
class OtlpReceiver:
    """POST /v1/logs decoded with opentelemetry-proto; `down` answers 503, `stop()` closes
    the port, `start()` opens it again (the same port)."""

    port: int = 0
    requests: list[ExportLogsServiceRequest] = field(default_factory=list)
    answer: int = 200
    runner: web.AppRunner | None = None
    hold: Callable[[], Awaitable[None]] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _logs(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportLogsServiceRequest()
        message.ParseFromString(await request.read())
        if self.hold is not None:
            await self.hold()
        if self.answer != 200:
            return web.Response(status=self.answer, text="try later")
        self.requests.append(message)
        body = ExportLogsServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/logs", self._logs)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def bodies(self) -> list[bytes]:
        return [
            record.body.string_value.encode()
            for message in self.requests
            for resource in message.resource_logs
            for scope in resource.scope_logs
            for record in scope.log_records
        ]
