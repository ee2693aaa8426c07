"""Issue 23, item 12: an agent forges audit lines and drives the reader's terminal with
CR/LF and ANSI escapes, through MCP's `http_request` and through what any caller can put
in a record; and a CSV export that a spreadsheet would run as a formula."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import orjson
import pytest

from blindkey.audit.record import AuditRecord
from blindkey.audit.store import audit_file
from blindkey.audit.writer import AuditWriter
from blindkey.cli.mcp import http_request
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths
from tests.conftest import RunCli
from tests.proxy.conftest import open_env

# A record of its own on the reader's screen, a retitled terminal and a cleared line.
FORGED = "\r\n2026-01-01T00:00:00.000Z  allowed  200  admin  \x1b]0;pwned\x07\x1b[2K\x9b31m"


def audit_lines(paths: Paths) -> list[dict[str, object]]:
    path = audit_file(paths.audit_dir)
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    ("method", "url", "inject"),
    [
        ("GET", "http://127.0.0.1:1/x" + FORGED, {"bearer": "GITHUB_TOKEN"}),
        ("GET", "http://127.0.0.1:1/\x9b2J", {"bearer": "GITHUB_TOKEN"}),  # C1 CSI alone
        ("GET", "http://127.0.0.1:1/", {"bearer": "GITHUB\x1b[2KTOKEN"}),
        ("GET", "http://127.0.0.1:1/", {"header:X-A\r\nB": "GITHUB_TOKEN"}),
        ("GE\x1bT", "http://127.0.0.1:1/", {"bearer": "GITHUB_TOKEN"}),
    ],
)
async def test_mcp_http_request_is_refused_before_anything_is_recorded(
    home: Paths, monkeypatch: pytest.MonkeyPatch, method: str, url: str, inject: dict[str, str]
) -> None:
    async with open_env(home) as env:
        monkeypatch.setenv("BLINDKEY_AGENT_TOKEN", env.token)
        before = len(audit_lines(home))
        with pytest.raises(BlindkeyError):
            # The tool's own function, in a thread as `mcp serve` runs it, against the real
            # broker and proxy of this home.
            await asyncio.to_thread(http_request, home, method, url, inject)
        await env.server.audit.flush()
    written = audit_lines(home)[before:]
    assert [r for r in written if r.get("event") == "mcp"] == []
    assert "\x1b" not in orjson.dumps(written).decode()


def write_hostile_record(paths: Paths) -> None:
    async def write() -> None:
        writer = AuditWriter(paths.audit_dir, fsync=False)
        await writer.start()
        record = AuditRecord(request_id="r1", method="GET", url="http://a.example/" + FORGED)
        record.agent, record.host = "agent\x1b[31m", "a.example\x1b]0;x\x07"
        record.secrets = ["GITHUB_TOKEN"]
        record.block("host_not_allowed\r\nforged", 403)
        writer.seal(record)
        await writer.close()

    asyncio.run(write())


def assert_inert(text: str) -> None:
    for char in ("\x1b", "\r", "\x07", "\x9b"):
        assert char not in text, repr(char)


def test_human_printers_show_controls_instead_of_obeying_them(
    home: Paths, run_cli: RunCli, tmp_path: Path
) -> None:
    write_hostile_record(home)
    logs = run_cli("proxy", "logs")
    assert logs.returncode == 0, logs.stderr
    assert_inert(logs.stdout)
    assert len(logs.stdout.splitlines()) == 1  # one record, one line: nothing forged
    assert "\\r\\n2026-01-01" in logs.stdout and "\\x1b]0;pwned\\x07" in logs.stdout
    summary = run_cli("audit", "summary")
    assert summary.returncode == 0, summary.stderr
    assert_inert(summary.stdout)
    assert "agent\\x1b[31m" in summary.stdout
    exported = run_cli("audit", "export", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    assert_inert(exported.stdout)
    page = tmp_path / "report.html"
    report = run_cli("audit", "report", "--html", str(page))
    assert report.returncode == 0, report.stderr
    assert_inert(page.read_text())
    # JSON needs nothing: its encoder escapes controls, and the record stays as it was.
    as_json = run_cli("proxy", "logs", "--json")
    assert_inert(as_json.stdout)
    assert orjson.loads(as_json.stdout)[0]["agent"] == "agent\x1b[31m"


@pytest.mark.parametrize("lead", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_export_neutralises_a_leading_formula_character(
    home: Paths, run_cli: RunCli, lead: str
) -> None:
    async def write() -> None:
        writer = AuditWriter(home.audit_dir, fsync=False)
        await writer.start()
        record = AuditRecord(request_id="r1", method="GET", url="http://a.example/")
        record.agent = lead + "cmd|' /C calc'!A0"
        writer.seal(record)
        await writer.close()

    asyncio.run(write())
    exported = run_cli("audit", "export", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert rows[0]["agent"].startswith("'")
