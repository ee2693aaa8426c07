"""`audit summary`, `audit export`, `proxy logs --flagged` and event records, run as a
user runs them, on an audit written through the writer (chained, rotated)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.events import append_event
from blindkey.audit.store import AuditLog
from blindkey.config.paths import Paths
from tests.audit.records import make_record
from tests.conftest import RunCli

NOW = datetime.now(UTC)


def write(paths: Paths) -> list[dict[str, Any]]:
    records = [
        make_record("r1", NOW - timedelta(hours=5), duration_ms=10.0, flags=["new_host"]),
        make_record("r2", NOW - timedelta(hours=2), agent="bob", secrets=["STRIPE_KEY"],
                    host="api.stripe.com", duration_ms=30.0, flags=[]),
        make_record("r3", NOW - timedelta(minutes=30), decision="blocked",
                    reason="host_not_allowed", status=403, host="evil.example",
                    url="=HYPERLINK(\"https://evil.example\")", duration_ms=1.0,
                    flags=["denied_streak"]),
        make_record("r4", NOW - timedelta(minutes=5), duration_ms=20.0, flags=[]),
    ]  # fmt: skip
    log = AuditLog(paths.audit_dir, rotate_bytes=1200)  # a file or two per record
    log.append(records[:2])
    log.append(records[2:])
    log.close()
    append_event(paths.audit_dir, "grant", {"secret": "STRIPE_KEY", "approver": "ann"})
    return records


def test_summary_json(home: Paths, run_cli: RunCli) -> None:
    write(home)
    result = run_cli("audit", "summary", "--json")
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    checkpoints = summary["events"].pop("checkpoint")  # one per rotation (audit/checkpoint.py)
    assert checkpoints >= 1 and summary["events"] == {"request": 4, "grant": 1}
    token = summary["by_secret"]["GITHUB_TOKEN"]
    assert (token["calls"], token["allowed"], token["blocked"]) == (3, 2, 1)
    assert token["refusals"] == {"host_not_allowed": 1}
    assert (token["p50_ms"], token["p99_ms"]) == (10.0, 20.0)
    assert summary["by_agent"]["bob"]["calls"] == 1
    assert set(summary["by_host"]) == {"api.github.com", "api.stripe.com", "evil.example"}
    recent = orjson.loads(run_cli("audit", "summary", "--since", "1h", "--json").stdout)
    assert recent["requests"]["calls"] == 2


def test_summary_text(home: Paths, run_cli: RunCli) -> None:
    write(home)
    result = run_cli("audit", "summary")
    assert result.returncode == 0
    assert "GITHUB_TOKEN" in result.stdout and "host_not_allowed 1" in result.stdout


def test_export_csv_with_filters_to_a_file(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    write(home)
    target = tmp_path / "out.csv"
    result = run_cli("audit", "export", "--format", "csv", "--secret", "GITHUB_TOKEN",
                     "--since", "3h", "-o", str(target))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["request_id"] for r in rows] == ["r3", "r4"]
    assert rows[0]["flags"] == "denied_streak" and rows[0]["seq"] == "3"
    assert rows[0]["url"].startswith("'=")  # a spreadsheet shows it, never runs it


def test_export_jsonl_flagged_and_until(home: Paths, run_cli: RunCli) -> None:
    write(home)
    result = run_cli("audit", "export", "--format", "jsonl", "--flagged", "--until", "1h")
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [r["request_id"] for r in lines] == ["r1"]
    assert lines[0]["chain"] and lines[0]["seq"] == 1


def test_logs_flagged_and_event_records(home: Paths, run_cli: RunCli) -> None:
    write(home)
    flagged = orjson.loads(run_cli("proxy", "logs", "--flagged", "--json").stdout)
    assert [r["request_id"] for r in flagged] == ["r1", "r3"]
    lines = run_cli("proxy", "logs").stdout.splitlines()
    table = [line for line in lines if "checkpoint" not in line]  # rotations sign the head
    assert len(table) == 5  # every file, rotated ones included
    assert "grant" in table[-1] and "approver=ann" in table[-1]
    assert "[denied_streak]" in table[2]
    bob = orjson.loads(run_cli("proxy", "logs", "--agent", "bob", "--json").stdout)
    assert [r["request_id"] for r in bob] == ["r2"]


def test_people_read_times_and_fields_without_python_reprs(home: Paths, run_cli: RunCli) -> None:
    """Issue: `audit summary` printed `2026-12-07 06:43:38.499000+00:00` and `proxy logs`
    printed `approvers=['default', 'bob'] ... request=None` for event records."""
    write(home)
    append_event(
        home.audit_dir, "grant", {"secret": "K", "approvers": ["default", "bob"], "request": None}
    )
    summary = run_cli("audit", "summary").stdout.splitlines()[0]
    assert re.fullmatch(r"from \S+T\S+\.\d{3}Z to \S+T\S+\.\d{3}Z", summary), summary
    logs = run_cli("proxy", "logs", "--last", "1").stdout
    assert "approvers=default,bob" in logs
    assert "None" not in logs and "[" not in logs.split("grant", 1)[1]


def test_faults_on_the_way_are_their_own_column(home: Paths, run_cli: RunCli) -> None:
    log = AuditLog(home.audit_dir)
    log.append([make_record("u", NOW, decision="blocked", reason="upstream_error", status=502)])
    log.close()
    text = run_cli("audit", "summary").stdout
    header = next(line for line in text.splitlines() if line.startswith("secret"))
    row = next(line for line in text.splitlines() if line.startswith("GITHUB_TOKEN"))
    columns = dict(zip(header.split()[1:6], row.split()[1:6], strict=True))
    assert columns == {"calls": "1", "allowed": "0", "blocked": "0", "failed": "1", "bytes": "100"}


def test_the_report_lists_changes_approvals_and_releases(
    home: Paths, run_cli: RunCli, tmp_path: Path
) -> None:
    """Issue: grants, lockouts, raw releases and config changes were only "N other events"."""
    write(home)
    append_event(home.audit_dir, "config", {"change": "allowlist_add", "names": ["evil.example"]})
    append_event(home.audit_dir, "exec", {"agent": "openclaw", "secrets": ["K"]})
    page_file = tmp_path / "report.html"
    assert run_cli("audit", "report", "--html", str(page_file)).returncode == 0
    page = page_file.read_text()
    section = page.split("Changes, approvals and releases (3)", 1)[1]
    assert "approver=ann" in section and "secret=STRIPE_KEY" in section
    assert "change=allowlist_add" in section and "names=evil.example" in section
    assert "secrets=K" in section
