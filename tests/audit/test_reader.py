"""Reading audit records back: --since parsing, filters, and lines a crash or a hand left behind."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindkey.audit import reader
from blindkey.audit.reader import Filter, follow, parse_since, read_records
from blindkey.audit.store import ROTATED_PREFIX, AuditLog, rotated_files
from blindkey.audit.writer import audit_file
from blindkey.config.errors import UsageError
from tests.audit.records import make_record

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def rec(request_id: str, ts: datetime, **fields: Any) -> dict[str, Any]:
    return make_record(request_id, ts, **fields)


def write_lines(path: Path, records: list[dict[str, Any]], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + tail)


SAMPLE = [
    rec("r1", NOW - timedelta(days=3)),
    rec("r2", NOW - timedelta(hours=5), agent="bob", secrets=["STRIPE_KEY"]),
    rec(
        "r3",
        NOW - timedelta(minutes=45),
        decision="blocked",
        reason="host_not_allowed",
        status=403,
        url="https://evil.example/",
        host="evil.example",
    ),
    rec("r4", NOW - timedelta(minutes=10), agent="bob", secrets=["GITHUB_TOKEN", "STRIPE_KEY"]),
    rec("r5", NOW - timedelta(minutes=1), decision="blocked", reason="secret_denied", status=403),
]


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["request_id"] for r in records]


SINCE = [
    ("1h", NOW - timedelta(hours=1)),
    ("30m", NOW - timedelta(minutes=30)),
    ("2d", NOW - timedelta(days=2)),
    ("45s", NOW - timedelta(seconds=45)),
    (" 1h ", NOW - timedelta(hours=1)),
    ("2026-11-21T10:00Z", datetime(2026, 11, 21, 10, 0, tzinfo=UTC)),
    ("2026-11-21T10:00z", datetime(2026, 11, 21, 10, 0, tzinfo=UTC)),
    ("2026-11-21T10:00:30.5Z", datetime(2026, 11, 21, 10, 0, 30, 500000, tzinfo=UTC)),
    ("2026-11-21T12:00+02:00", datetime(2026, 11, 21, 10, 0, tzinfo=UTC)),
    ("2026-11-21T10:00", datetime(2026, 11, 21, 10, 0, tzinfo=UTC)),
    ("2026-11-21", datetime(2026, 11, 21, tzinfo=UTC)),
]


@pytest.mark.parametrize(("text", "expected"), SINCE, ids=[t for t, _ in SINCE])
def test_parse_since(text: str, expected: datetime) -> None:
    moment = parse_since(text, now=NOW)
    assert moment == expected
    assert moment.tzinfo is not None


def test_parse_since_defaults_to_now() -> None:
    before = datetime.now(UTC)
    moment = parse_since("1h")
    after = datetime.now(UTC)
    assert before - timedelta(hours=1) <= moment <= after - timedelta(hours=1)


BAD_SINCE = ["", "garbage", "1 hour", "1y", "-1h", "1.5h", "h", "2026-13-01T00:00Z", "yesterday"]


@pytest.mark.parametrize("text", BAD_SINCE, ids=[repr(t) for t in BAD_SINCE])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--since") as info:
        parse_since(text, now=NOW)
    assert "30m, 1h, 2d" in str(info.value)


FILTERS = [
    (Filter(), ["r1", "r2", "r3", "r4", "r5"], "none"),
    (Filter(secret="GITHUB_TOKEN"), ["r1", "r3", "r4", "r5"], "secret"),
    (Filter(secret="STRIPE_KEY"), ["r2", "r4"], "secret-in-list"),
    (Filter(secret="github_token"), [], "secret-is-case-sensitive"),
    (Filter(secret="NOPE"), [], "secret-unknown"),
    (Filter(agent="bob"), ["r2", "r4"], "agent"),
    (Filter(agent="alice"), ["r1", "r3", "r5"], "agent-other"),
    (Filter(status="allowed"), ["r1", "r2", "r4"], "allowed"),
    (Filter(status="blocked"), ["r3", "r5"], "blocked"),
    (Filter(since=NOW - timedelta(hours=1)), ["r3", "r4", "r5"], "since-1h"),
    (Filter(since=NOW - timedelta(minutes=10)), ["r4", "r5"], "since-inclusive"),
    (Filter(since=NOW), [], "since-now"),
    (Filter(agent="bob", secret="GITHUB_TOKEN"), ["r4"], "agent-and-secret"),
    (Filter(status="blocked", since=NOW - timedelta(minutes=5)), ["r5"], "blocked-since"),
    (Filter(agent="alice", status="allowed", secret="STRIPE_KEY"), [], "all-three-none"),
]


@pytest.mark.parametrize(
    ("selection", "expected"), [f[:2] for f in FILTERS], ids=[f[2] for f in FILTERS]
)
def test_filters(tmp_path: Path, selection: Filter, expected: list[str]) -> None:
    path = audit_file(tmp_path)
    write_lines(path, SAMPLE)
    assert ids(read_records(path, selection)[0]) == expected


def test_records_come_back_unchanged_oldest_first(tmp_path: Path) -> None:
    path = audit_file(tmp_path)
    write_lines(path, SAMPLE)
    assert read_records(path, Filter())[0] == SAMPLE


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_records(tmp_path / "absent.jsonl", Filter())[0] == []


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = audit_file(tmp_path)
    torn = orjson.dumps(rec("r6", NOW))[:40]
    write_lines(path, SAMPLE, tail=torn)
    assert ids(read_records(path, Filter())[0]) == ["r1", "r2", "r3", "r4", "r5"]


def test_torn_line_in_the_middle_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = audit_file(tmp_path)
    first = b"".join(orjson.dumps(r) + b"\n" for r in SAMPLE[:2])
    rest = b"".join(orjson.dumps(r) + b"\n" for r in SAMPLE[2:])
    path.write_bytes(first + b'{"ts": "2026-11\n\n   \n' + rest)
    assert ids(read_records(path, Filter())[0]) == ["r1", "r2", "r3", "r4", "r5"]


MALFORMED = [
    (b"[1, 2, 3]", "json-array"),
    (b'"just a string"', "json-string"),
    (b"42", "json-number"),
    (b"null", "json-null"),
    (b'{"request_id": "no-ts", "secrets": ["GITHUB_TOKEN"], "agent": "alice"}', "no-ts"),
    (b'{"ts": "garbage", "request_id": "x", "secrets": ["GITHUB_TOKEN"]}', "garbage-ts"),
    (b'{"ts": 5, "request_id": "x", "secrets": ["GITHUB_TOKEN"]}', "numeric-ts"),
    (b'{"ts": "2026-11-21T11:59:00Z", "request_id": "x", "secrets": null}', "null-secrets"),
    (
        b'{"ts": "2026-11-21T11:59:00Z", "request_id": "x", "secrets": "GITHUB_TOKEN"}',
        "string-secrets",
    ),
    (b'{"ts": "2026-11-21T11:59:00Z", "request_id": "x", "secrets": [1, 2]}', "int-secrets"),
    (b"\xff\xfe not even utf-8", "binary"),
]


@pytest.mark.parametrize("line", [m[0] for m in MALFORMED], ids=[m[1] for m in MALFORMED])
@pytest.mark.parametrize(
    "selection",
    [
        Filter(),
        Filter(secret="GITHUB_TOKEN"),
        Filter(agent="alice"),
        Filter(since=NOW - timedelta(days=7)),
    ],
    ids=["all", "secret", "agent", "since"],
)
def test_a_line_that_is_not_a_record_is_skipped_not_fatal(
    tmp_path: Path, line: bytes, selection: Filter
) -> None:
    """Anyone with write access to the file could add such a line; reading must go on."""
    path = audit_file(tmp_path)
    good = b"".join(orjson.dumps(r) + b"\n" for r in SAMPLE)
    path.write_bytes(line + b"\n" + good)
    expected = ids(read_records(audit_file(_only_good(tmp_path, good)), selection)[0])
    assert ids(read_records(path, selection)[0]) == expected


def _only_good(tmp_path: Path, good: bytes) -> Path:
    folder = tmp_path / "good"
    folder.mkdir(exist_ok=True)
    audit_file(folder).write_bytes(good)
    return folder


def test_timestamp_without_zone_counts_as_utc(tmp_path: Path) -> None:
    path = audit_file(tmp_path)
    naive = {**rec("naive", NOW), "ts": "2026-11-21T11:30:00"}
    write_lines(path, [*SAMPLE, naive])
    since = Filter(since=NOW - timedelta(hours=1))
    assert ids(read_records(path, since)[0]) == ["r3", "r4", "r5", "naive"]


def test_since_compares_instants_across_offsets(tmp_path: Path) -> None:
    path = audit_file(tmp_path)
    offset = {**rec("offset", NOW), "ts": "2026-11-21T13:30:00+02:00"}  # 11:30Z
    write_lines(path, [offset])
    assert ids(read_records(path, Filter(since=NOW - timedelta(hours=1)))[0]) == ["offset"]
    later = datetime(2026, 11, 21, 11, 45, tzinfo=timezone(timedelta(hours=-5)))  # 16:45Z
    assert ids(read_records(path, Filter(since=later))[0]) == []


def test_follow_yields_only_appended_complete_lines(tmp_path: Path) -> None:
    path = audit_file(tmp_path)
    write_lines(path, SAMPLE)
    start = path.stat().st_size
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def consume() -> None:
        for item in follow(path, Filter(agent="bob"), start, interval=0.01):
            got.append(item)
            if len(got) == 2:
                done.set()
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    new_alice = orjson.dumps(rec("n1", NOW)) + b"\n"
    new_bob = orjson.dumps(rec("n2", NOW, agent="bob")) + b"\n"
    last_bob = orjson.dumps(rec("n3", NOW, agent="bob")) + b"\n"
    with path.open("ab") as handle:
        handle.write(new_alice + new_bob + last_bob[:30])
        handle.flush()
        # The half-written line must wait for its end, not be dropped.
        threading.Event().wait(0.1)
        handle.write(last_bob[30:])
        handle.flush()
    assert done.wait(5)
    assert ids(got) == ["n2", "n3"]


def test_follow_waits_for_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = audit_file(tmp_path)
    got: list[str] = []
    done = threading.Event()

    def consume() -> None:
        for item in follow(path, Filter(), 0, interval=0.01):
            got.append(item["request_id"])
            done.set()
            return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    threading.Event().wait(0.05)
    write_lines(path, [rec("first", NOW)])
    assert done.wait(5)
    assert got == ["first"]


def test_offset_stops_before_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    complete = orjson.dumps(SAMPLE[0]) + b"\n"
    path.write_bytes(complete + b'{"ts": "2026-')
    records, offset = read_records(path, Filter())
    assert records == [SAMPLE[0]]
    assert offset == len(complete)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    block=st.integers(1, 300),
    count=st.integers(0, 25),
    bob_only=st.booleans(),
    torn=st.booleans(),
)
def test_streamed_and_backwards_reads_agree_with_a_whole_read(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    sizes: list[int],
    block: int,
    count: int,
    bob_only: bool,
    torn: bool,
) -> None:
    """Over rotated files and block sizes that cut lines anywhere: `iter_all` streams what a
    whole read finds, `last_records` finds its last N from the end, a torn tail is skipped."""
    monkeypatch.setattr(reader, "BLOCK", block)
    audit_dir = tmp_path_factory.mktemp("audit")
    everything: list[dict[str, Any]] = []
    files = [audit_dir / f"{ROTATED_PREFIX}{i:012d}.jsonl" for i in range(len(sizes) - 1)]
    files.append(audit_file(audit_dir))
    for index, (path, size) in enumerate(zip(files, sizes, strict=True)):
        records = [
            rec(f"f{index}r{n}", NOW, agent="bob" if n % 2 else "alice") for n in range(size)
        ]
        write_lines(path, records, b'{"torn' if torn and path == files[-1] else b"")
        everything += records
    selection = Filter(agent="bob") if bob_only else Filter()
    wanted = [r for r in everything if selection.accepts(r)]
    streamed, end = reader.iter_all(audit_dir, selection)
    assert ids(list(streamed)) == ids(wanted)
    assert end == len(files[-1].read_bytes()) - (len(b'{"torn') if torn else 0)
    last, last_end = reader.last_records(audit_dir, selection, count)
    assert ids(last) == ids(wanted[-count:] if count else [])
    assert last_end == end


def test_follow_goes_on_across_rotation(tmp_path: Path) -> None:
    """Issue 22 (audit readers): `proxy logs --follow` kept reading the renamed file and
    showed nothing more after the audit rotated. Now it reads the rest of the old file,
    then the new one from its start."""
    log = AuditLog(tmp_path, rotate_bytes=1200)  # a few records a file
    log.append([rec("before", NOW)])
    start = audit_file(tmp_path).stat().st_size
    got: list[str] = []
    done = threading.Event()
    following = follow(audit_file(tmp_path), Filter(), start, interval=0.01)

    def consume() -> None:
        for item in following:
            if item["event"] == "checkpoint":  # the one rotation signs (audit/checkpoint.py)
                continue
            got.append(item["request_id"])
            if len(got) == 12:
                done.set()
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    for i in range(12):
        log.append([rec(f"n{i}", NOW)])
    log.close()
    assert len(rotated_files(tmp_path)) >= 2
    assert done.wait(5), got
    assert got == [f"n{i}" for i in range(12)]
