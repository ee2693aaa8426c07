"""`blindkey proxy logs`, run as a user runs it, on audit files written here."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from blindkey.audit.record import rfc3339
from blindkey.audit.writer import audit_file
from blindkey.config.paths import Paths
from tests.audit.records import make_record
from tests.conftest import ROOT, RunCli

NOW = datetime.now(UTC)


def ts(moment: datetime) -> str:
    return rfc3339(moment.timestamp())


def rec(request_id: str, age: timedelta, **fields: Any) -> dict[str, Any]:
    return make_record(request_id, NOW - age, **fields)


RECORDS = [
    rec("r1", timedelta(days=3)),
    rec(
        "r2",
        timedelta(hours=5),
        agent="bob",
        secrets=["STRIPE_KEY"],
        url="https://api.stripe.com/v1",
    ),
    rec(
        "r3",
        timedelta(minutes=45),
        decision="blocked",
        reason="host_not_allowed",
        status=403,
        url="https://evil.example/steal",
        host="evil.example",
    ),
    rec("r4", timedelta(minutes=10), agent="bob", secrets=["GITHUB_TOKEN", "STRIPE_KEY"]),
    rec("r5", timedelta(minutes=1), decision="blocked", reason="secret_denied", status=403),
]


@pytest.fixture
def audit_path(home: Paths) -> Path:
    path = audit_file(home.audit_dir)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    return path


def logs_json(run_cli: RunCli, *args: str) -> list[str]:
    result = run_cli("proxy", "logs", "--json", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    parsed = json.loads(result.stdout)  # JSON only: nothing else on stdout
    assert isinstance(parsed, list)
    return [r["request_id"] for r in parsed]


def test_json_prints_the_records_unchanged_oldest_first(audit_path: Path, run_cli: RunCli) -> None:
    result = run_cli("proxy", "logs", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == RECORDS


def test_json_with_no_audit_file_is_an_empty_array(home: Paths, run_cli: RunCli) -> None:
    assert not audit_file(home.audit_dir).exists()
    result = run_cli("proxy", "logs", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["r1", "r2", "r3", "r4", "r5"]),
        (("--last", "2"), ["r4", "r5"]),
        (("--last", "100"), ["r1", "r2", "r3", "r4", "r5"]),
        (("--last", "0"), []),
        (("--secret", "STRIPE_KEY"), ["r2", "r4"]),
        (("--secret", "NOPE"), []),
        (("--agent", "bob"), ["r2", "r4"]),
        (("--status", "blocked"), ["r3", "r5"]),
        (("--status", "allowed"), ["r1", "r2", "r4"]),
        (("--since", "1h"), ["r3", "r4", "r5"]),
        (("--since", "30m"), ["r4", "r5"]),
        (("--since", "2d"), ["r2", "r3", "r4", "r5"]),
        (("--since", ts(NOW - timedelta(hours=6))[:16] + "Z"), ["r2", "r3", "r4", "r5"]),
        (("--agent", "alice", "--status", "blocked"), ["r3", "r5"]),
        (("--status", "blocked", "--last", "1"), ["r5"]),
        (("--secret", "GITHUB_TOKEN", "--since", "1h", "--last", "2"), ["r4", "r5"]),
    ],
    ids=[
        "all",
        "last-2",
        "last-more-than-there-are",
        "last-0",
        "secret",
        "secret-unknown",
        "agent",
        "blocked",
        "allowed",
        "since-1h",
        "since-30m",
        "since-2d",
        "since-rfc3339",
        "agent-and-status",
        "last-applies-after-filter",
        "three-filters-and-last",
    ],
)
def test_filters(
    audit_path: Path, run_cli: RunCli, args: tuple[str, ...], expected: list[str]
) -> None:
    assert logs_json(run_cli, *args) == expected


def test_table_output(audit_path: Path, run_cli: RunCli) -> None:
    result = run_cli("proxy", "logs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(RECORDS)
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)
    for line, record in zip(lines, RECORDS, strict=True):
        assert line.startswith(record["ts"])
        assert record["decision"] in line
        assert record["agent"] in line
        assert record["url"] in line
        assert "12.5ms" in line
    # An allowed line shows the status, a blocked one the reason.
    assert " 200 " in lines[0]
    assert "host_not_allowed" in lines[2]
    assert "GITHUB_TOKEN,STRIPE_KEY" in lines[3]


def test_table_with_filters(audit_path: Path, run_cli: RunCli) -> None:
    result = run_cli("proxy", "logs", "--agent", "bob", "--last", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert "https://api.github.com/r4" in lines[0]


def test_torn_last_line_is_skipped(audit_path: Path, run_cli: RunCli) -> None:
    with audit_path.open("ab") as handle:
        handle.write(orjson.dumps(rec("torn", timedelta(0)))[:50])
    assert logs_json(run_cli) == ["r1", "r2", "r3", "r4", "r5"]
    assert len(run_cli("proxy", "logs").stdout.splitlines()) == 5


@pytest.mark.parametrize(
    "args",
    [(), ("--since", "1h"), ("--secret", "GITHUB_TOKEN"), ("--agent", "alice")],
    ids=["all", "since", "secret", "agent"],
)
def test_lines_that_are_not_records_do_not_break_logs(
    audit_path: Path, run_cli: RunCli, args: tuple[str, ...]
) -> None:
    """The agent's user can append to the file; odd lines must not hide the real records."""
    odd = [
        b'{"ts": "garbage", "secrets": ["GITHUB_TOKEN"]}',
        b'{"request_id": "no-ts"}',
        b'{"ts": "2026-01-01T00:00:00Z", "secrets": null}',
        b"[1, 2]",
        orjson.dumps(rec("odd-types", timedelta(0), agent=["x"], decision={"a": 1})),
    ]
    with audit_path.open("ab") as handle:
        handle.write(b"\n".join(odd) + b"\n")
    result = run_cli("proxy", "logs", *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "https://api.github.com/r5" in result.stdout
    assert "r5" in logs_json(run_cli, *args)


def test_bad_since_is_a_usage_error(audit_path: Path, run_cli: RunCli) -> None:
    result = run_cli("proxy", "logs", "--since", "yesterday")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("blindkey: --since 'yesterday'")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [("--status", "maybe"), ("--last", "many"), ("--bogus",)],
    ids=["bad-status", "bad-last", "unknown-flag"],
)
def test_bad_arguments_exit_2(audit_path: Path, run_cli: RunCli, args: tuple[str, ...]) -> None:
    result = run_cli("proxy", "logs", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_logs_initialises_a_missing_home(home: Paths, run_cli: RunCli) -> None:
    shutil.rmtree(home.config_dir)
    result = run_cli("proxy", "logs", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert home.config_file.exists()


class Follower:
    """`blindkey proxy logs --follow` in a subprocess, its stdout read line by line."""

    def __init__(self, home: Paths, *args: str) -> None:
        env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "blindkey.cli", "proxy", "logs", "--follow", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def next_line(self, timeout: float = 5) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output from --follow within {timeout}s")

    def nothing_more(self, wait: float = 0.4) -> bool:
        try:
            extra = self.lines.get(timeout=wait)
        except queue.Empty:
            return True
        pytest.fail(f"unexpected extra output: {extra!r}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def follower(home: Paths) -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for f in started:
        f.stop()


def append(path: Path, *records: dict[str, Any]) -> None:
    with path.open("ab") as handle:
        handle.write(b"".join(orjson.dumps(r) + b"\n" for r in records))


def test_follow_prints_records_appended_after_it_started(
    home: Paths, audit_path: Path, follower: list[Follower]
) -> None:
    f = Follower(home, "--json", "--last", "1")
    follower.append(f)
    # The existing tail first; once it is out, the follower has fixed its start offset.
    assert orjson.loads(f.next_line())["request_id"] == "r5"
    append(audit_path, rec("new-1", timedelta(0)))
    line = f.next_line()
    assert orjson.loads(line) == rec("new-1", timedelta(0))
    append(audit_path, rec("new-2", timedelta(0)), rec("new-3", timedelta(0)))
    assert [orjson.loads(f.next_line())["request_id"] for _ in range(2)] == ["new-2", "new-3"]
    assert f.nothing_more()
    assert f.process.poll() is None  # still following


def test_follow_applies_filters_to_new_records(
    home: Paths, audit_path: Path, follower: list[Follower]
) -> None:
    f = Follower(home, "--json", "--agent", "bob", "--last", "1")
    follower.append(f)
    assert orjson.loads(f.next_line())["request_id"] == "r4"
    append(audit_path, rec("alice-new", timedelta(0)), rec("bob-new", timedelta(0), agent="bob"))
    assert orjson.loads(f.next_line())["request_id"] == "bob-new"
    assert f.nothing_more()


def test_follow_table_output(home: Paths, audit_path: Path, follower: list[Follower]) -> None:
    f = Follower(home, "--last", "1")
    follower.append(f)
    assert "https://api.github.com/r5" in f.next_line()
    append(audit_path, rec("tabled", timedelta(0), url="https://api.github.com/followed"))
    line = f.next_line()
    assert "https://api.github.com/followed" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
