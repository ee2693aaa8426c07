"""AuditWriter: each record in the file before submit or commit returns (commit: one write
for a turn of the event loop), chained; fsyncs grouped; a full disk (a real tmpfs) holds
records and makes the writer unavailable until they land."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from blindkey.audit import writer as writer_module
from blindkey.audit.record import AuditRecord
from blindkey.audit.store import rotated_files
from blindkey.audit.verify import verify
from blindkey.audit.writer import AuditWriter, audit_file
from tests.audit.tmpfs import fill, small_tmpfs


def record(i: int, **extra: Any) -> dict[str, Any]:
    base = AuditRecord(request_id=f"req-{i}", method="GET", url=f"https://api.example.com/{i}")
    return {**base.finish(), **extra}


def lines_of(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file ends inside a line"
    return [orjson.loads(line) for line in data.splitlines()]


class FsyncCounter:
    """Wraps the real os.fsync: the disk is really synced, the calls are counted; with
    `only`, just the calls on that file (the chain key's fsync is no audit fsync)."""

    def __init__(self, real: Any, only: Path | None = None) -> None:
        self.real = real
        self.only = only
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        if self._counted(fd):
            with self.lock:
                self.calls += 1
        self.real(fd)

    def _counted(self, fd: int) -> bool:
        if self.only is None:
            return True
        try:
            return os.path.samestat(os.fstat(fd), self.only.stat())
        except FileNotFoundError:  # the key is made before the audit file exists
            return False


async def test_a_record_is_in_the_file_when_submit_returns(tmp_path: Path) -> None:
    """Handed to the kernel at once: a proxy killed right after answering keeps it."""
    writer = AuditWriter(tmp_path)
    await writer.start()
    for i in range(3):
        assert writer.submit(record(i))
        assert [r["request_id"] for r in lines_of(audit_file(tmp_path))][-1] == f"req-{i}"
    await writer.close()
    written = lines_of(audit_file(tmp_path))
    assert [r["seq"] for r in written] == [1, 2, 3]
    assert all(len(r["chain"]) == 64 and list(r)[-1] == "chain" for r in written)
    assert verify(tmp_path, None).ok


async def test_seal_finishes_flags_and_writes(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    rec = AuditRecord(request_id="r", method="GET", url="https://a.example/", host="a.example")
    rec.secrets = ["K"]
    assert writer.seal(rec) is None
    await writer.close()
    (line,) = lines_of(audit_file(tmp_path))
    assert line["event"] == "request" and line["flags"] == ["new_host"]
    assert line["complete"] is True


def request(i: int) -> AuditRecord:
    return AuditRecord(request_id=f"req-{i}", method="GET", url=f"https://api.example.com/{i}")


class AppendCounter:
    """Wraps the log's real append: the records are really written, the calls counted."""

    def __init__(self, writer: AuditWriter) -> None:
        self.real = writer.log.append
        self.calls = 0
        writer.log.append = self  # type: ignore[method-assign]

    def __call__(self, records: Any) -> list[bytes]:
        self.calls += 1
        return self.real(records)


async def test_commit_writes_a_turns_records_at_once_before_any_caller_goes_on(
    tmp_path: Path,
) -> None:
    """Calls ending in one turn of the loop share one write(), and each caller finds its
    record in the file when commit returns: the answer can only follow its record."""
    writer = AuditWriter(tmp_path)
    await writer.start()
    appends = AppendCounter(writer)

    async def call(i: int) -> None:
        assert await writer.commit(request(i)) is None
        written = {r["request_id"] for r in lines_of(audit_file(tmp_path))}
        assert f"req-{i}" in written

    await asyncio.gather(*(call(i) for i in range(20)))
    assert appends.calls == 1
    await asyncio.gather(*(call(i) for i in range(20, 25)))
    assert appends.calls == 2
    await writer.close()
    assert [r["seq"] for r in lines_of(audit_file(tmp_path))] == list(range(1, 26))
    assert verify(tmp_path, None).ok


async def test_a_caller_cancelled_while_waiting_leaves_its_record_written(
    tmp_path: Path,
) -> None:
    """An agent that hangs up (its handler cancelled) must not take its record, or the
    record of the call beside it, away."""
    writer = AuditWriter(tmp_path)
    await writer.start()
    gone = asyncio.create_task(writer.commit(request(1)))
    stays = asyncio.create_task(writer.commit(request(2)))
    await asyncio.sleep(0)  # both wait for the turn's write, which comes after this step
    gone.cancel()
    assert await stays is None
    with pytest.raises(asyncio.CancelledError):
        await gone
    await writer.close()
    assert [r["request_id"] for r in lines_of(audit_file(tmp_path))] == ["req-1", "req-2"]


async def test_close_writes_a_turn_still_waiting(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    waiting = asyncio.create_task(writer.commit(request(1)))
    await asyncio.sleep(0)  # the record is in the turn; its write is not yet run
    await writer.close()
    assert [r["request_id"] for r in lines_of(audit_file(tmp_path))] == ["req-1"]
    assert await waiting is None


async def test_a_turn_the_full_disk_refuses_is_held_in_order(tmp_path: Path) -> None:
    """Every caller of the turn hears that its record is held (so none answers as if it
    were written), and the records land in their order once space returns."""
    async with full_disk(tmp_path) as (writer, disk, i):
        audit_dir = disk / "audit"
        turn = await asyncio.gather(*(writer.commit(request(j)) for j in range(i, i + 5)))
        assert [held["request_id"] for held in turn if held] == [
            f"req-{j}" for j in range(i, i + 5)
        ]
        assert [r["request_id"] for r in writer.held][-5:] == [f"req-{j}" for j in range(i, i + 5)]
        (disk / "filler").unlink()
        await writer.close()
        written = [r["request_id"] for r in lines_of(audit_file(audit_dir))]
        assert written == [f"req-{n}" for n in range(i + 5)]
        assert verify(audit_dir, None).ok


async def test_files_are_private(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit")
    await writer.start()
    writer.submit(record(1))
    await writer.close()
    for name in ("audit.jsonl", "chain.key", "audit.lock"):
        assert stat.S_IMODE((tmp_path / "audit" / name).stat().st_mode) == 0o600, name


async def test_restart_continues_the_chain(tmp_path: Path) -> None:
    for round_ in range(3):
        writer = AuditWriter(tmp_path)
        await writer.start()
        for i in range(4):
            writer.submit(record(round_ * 10 + i))
        await writer.close()
    assert [r["seq"] for r in lines_of(audit_file(tmp_path))] == list(range(1, 13))
    assert verify(tmp_path, None).ok


async def test_fsyncs_are_grouped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the audit file's fsyncs count: the chain key made at start is fsync'd too, and
    counting it let a writer that never synced the audit pass."""
    counter = FsyncCounter(os.fsync, only=audit_file(tmp_path))
    monkeypatch.setattr(os, "fsync", counter)
    writer = AuditWriter(tmp_path)
    await writer.start()
    for i in range(500):
        writer.submit(record(i))
    await writer.flush()
    # The fsync thread syncs what came in the last GROUP_WINDOW while submits go on: a
    # handful of fsyncs for 500 records (one per record would be 500).
    assert 1 <= counter.calls <= 50
    await writer.close()
    assert len(lines_of(audit_file(tmp_path))) == 500


async def test_fsync_false_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = AuditWriter(tmp_path, fsync=False)
    await writer.start()
    counter = FsyncCounter(os.fsync)
    monkeypatch.setattr(os, "fsync", counter)
    for i in range(50):
        writer.submit(record(i))
    await writer.flush()
    monkeypatch.undo()
    await writer.close()
    assert counter.calls == 0


def place_of(audit_dir: Path) -> list[tuple[int, int]]:
    """Which directory and current file these are (device and inode), not just their names."""
    return [(p.stat().st_dev, p.stat().st_ino) for p in (audit_dir, audit_file(audit_dir))]


EVENT_WRITER = """
import sys
from pathlib import Path
from blindkey.audit.events import append_event
for i in range(int(sys.argv[2])):
    append_event(Path(sys.argv[1]), "config", {"change": f"{sys.argv[3]}-{i}"})
"""


async def test_other_processes_continue_the_same_chain(tmp_path: Path) -> None:
    """The broker and CLI commands append through the same lock; the proxy's writer, whose
    view of the file goes stale meanwhile, re-reads the last record before it appends."""
    writer = AuditWriter(tmp_path)
    await writer.start()
    place = place_of(tmp_path)
    others = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", EVENT_WRITER, str(tmp_path), "60", f"p{n}"
        )
        for n in range(2)
    ]
    i = 0
    finished = asyncio.gather(*(p.wait() for p in others))
    while not finished.done():
        writer.submit(record(i))
        i += 1
        await asyncio.sleep(0.0005)
    assert all(p.returncode == 0 for p in others)
    await writer.close()
    # Records missing from this file are lost only if it is still the file they went to:
    # a directory moved away meanwhile (an outside cleanup of temporary directories) is
    # re-created by the next writer, and only the records after that land in it.
    assert place_of(tmp_path) == place, "the audit directory or file was replaced meanwhile"
    assert not rotated_files(tmp_path)
    written = lines_of(audit_file(tmp_path))
    assert sum(r["event"] == "config" for r in written) == 120
    assert [r["seq"] for r in written] == list(range(1, len(written) + 1))
    verdict = verify(tmp_path, None)
    assert verdict.ok, verdict.reason


async def test_rotation_keeps_the_chain_and_prunes_old_files(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path, rotate_mb=2 / 1024)  # about 2 KiB a file
    await writer.start()
    for i in range(30):
        writer.submit(record(i))
    await writer.close()
    rotated = rotated_files(tmp_path)
    assert len(rotated) >= 5
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o400 for p in rotated)
    verdict = verify(tmp_path, None)
    # Each rotated file ends with its signed checkpoint (audit/checkpoint.py).
    assert verdict.ok and verdict.records == 30 + len(rotated)
    assert len(verdict.files) == len(rotated) + 1
    # Files older than keep_days go, oldest first; what is left still verifies.
    for old in rotated[:2]:
        os.utime(old, (1, 1))
    writer = AuditWriter(tmp_path, rotate_mb=2 / 1024, keep_days=1)
    await writer.start()
    for i in range(30, 40):
        writer.submit(record(i))
    await writer.close()
    assert not rotated[0].exists() and not rotated[1].exists()
    verdict = verify(tmp_path, None)
    assert verdict.ok, verdict.reason
    # Every rotation (the two pruned files' too) added its signed checkpoint.
    rotations = len(rotated_files(tmp_path)) + 2
    assert verdict.first_seq is not None and verdict.first_seq > 1
    assert verdict.last_seq == 40 + rotations
    # A rotated file removed from the middle is found.
    rotated_files(tmp_path)[1].unlink()
    verdict = verify(tmp_path, None)
    assert not verdict.ok and verdict.reason is not None and "missing" in verdict.reason


async def test_full_disk_holds_records_and_resumes(tmp_path: Path) -> None:
    """A real tmpfs filled up: records that do not fit are held in order, the writer says
    it is unavailable, and once space returns they land, chained, by themselves."""
    with small_tmpfs(tmp_path / "disk") as disk:
        audit_dir = disk / "audit"
        states: list[bool] = []
        resumed = asyncio.Event()
        writer = AuditWriter(audit_dir)

        def changed() -> None:
            states.append(writer.available)
            if writer.available:
                resumed.set()

        writer.on_state = changed
        await writer.start()
        writer.submit(record(0))
        fill(disk / "filler")
        i = 1
        while writer.available:
            writer.submit(record(i))
            i += 1
            assert i < 1000, "a full tmpfs took every record"
        assert writer.state()["state"] == "unavailable" and writer.error
        for j in range(i, i + 5):
            assert not writer.submit(record(j))  # held, behind the first held one
        held = [r["request_id"] for r in writer.held]
        assert held[-5:] == [f"req-{j}" for j in range(i, i + 5)]
        before = audit_file(audit_dir).read_bytes()
        assert before.endswith(b"\n")  # no half line left by the failed write
        (disk / "filler").unlink()
        async with asyncio.timeout(5):
            await resumed.wait()
        assert states == [False, True]
        await writer.close()
        written = [r["request_id"] for r in lines_of(audit_file(audit_dir))]
        assert written == [f"req-{n}" for n in range(i + 5)]
        verdict = verify(audit_dir, None)
        assert verdict.ok, verdict.reason


async def test_text_that_is_not_utf8_is_written_escaped(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    url = b"http://x.example/\xff\xfe".decode("utf-8", "surrogateescape")
    assert writer.submit({**record(1), "url": url, "secrets": ["A\udcff"]})
    await writer.close()
    (line,) = lines_of(audit_file(tmp_path))
    assert line["url"] == "http://x.example/\\xff\\xfe" and line["secrets"] == ["A\\xff"]
    assert verify(tmp_path, None).ok


async def test_a_torn_fragment_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    """A power loss can leave half a line; the next record starts on a line of its own."""
    writer = AuditWriter(tmp_path)
    await writer.start()
    writer.submit(record(1))
    await writer.close()
    with audit_file(tmp_path).open("ab") as handle:
        handle.write(b'{"ts": "2026-11-30T00:00:00.000Z", "requ')
    writer = AuditWriter(tmp_path)
    await writer.start()
    writer.submit(record(2))
    await writer.close()
    raw = audit_file(tmp_path).read_bytes().split(b"\n")
    assert orjson.loads(raw[2])["request_id"] == "req-2"
    assert orjson.loads(raw[2])["seq"] == 2


@contextlib.asynccontextmanager
async def full_disk(tmp_path: Path) -> AsyncIterator[tuple[AuditWriter, Path, int]]:
    """A writer on a real tmpfs that one record reached before the disk was filled, and
    committed to until it said it cannot write: (writer, disk, the next record's index)."""
    with small_tmpfs(tmp_path / "disk") as disk:
        writer = AuditWriter(disk / "audit")
        await writer.start()
        assert await writer.commit(request(0)) is None
        fill(disk / "filler")
        i = 1
        while writer.available:  # the free space a full tmpfs still had goes first
            await writer.commit(request(i))
            i += 1
            assert i < 1000, "a full tmpfs took every record"
        yield writer, disk, i


async def test_records_past_the_held_ones_are_counted_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue: an outage beyond MAX_HELD dropped records of answered calls and `audit verify`
    still said ok. Now they land as one `event: gap` record that verify reports."""
    monkeypatch.setattr(writer_module, "MAX_HELD", 5)
    async with full_disk(tmp_path) as (writer, disk, i):
        audit_dir = disk / "audit"
        for j in range(i, i + 20):
            refused = request(j)
            refused.decision, refused.reason = "blocked", "audit_unavailable"
            assert await writer.commit(refused) is not None  # held or counted, not written
        assert len(writer.held) == 5 and writer.gap.count == 20 - 5 + 1
        (disk / "filler").unlink()
        await writer.close()
        written = lines_of(audit_file(audit_dir))
        gap = written[-1]
        assert gap["event"] == "gap" and gap["count"] == 16
        assert gap["reasons"] == {"audit_unavailable": 16}
        assert len(written) == i + 20 - 16 + 1  # every record: whole, or in the count
        verdict = verify(audit_dir, None)
        assert verdict.ok and verdict.counted == 16


async def test_space_for_part_of_the_backlog_is_used_at_once(tmp_path: Path) -> None:
    """Issue: the retry wrote the whole backlog in one write(), so freeing less space than
    the backlog took left the proxy refusing calls for good. Now it writes what fits."""
    async with full_disk(tmp_path) as (writer, disk, i):
        audit_dir = disk / "audit"
        for j in range(i, i + 200):
            writer.submit(record(j))
        backlog = len(writer.held)
        told = asyncio.Event()
        writer.on_state = told.set  # each retry says how many records still wait

        async def until(done: Callable[[], bool]) -> None:
            while not done():
                told.clear()
                await told.wait()

        filler = disk / "filler"
        os.truncate(filler, filler.stat().st_size - 8192)  # room for some records, not all
        await until(lambda: len(writer.held) < backlog)  # the writer's own retry finds it
        assert not writer.available and 0 < len(writer.held) < backlog
        filler.unlink()
        await until(lambda: writer.available)
        await writer.close()
        written = [r["request_id"] for r in lines_of(audit_file(audit_dir))]
        assert written[-200:] == [f"req-{j}" for j in range(i, i + 200)]
        assert verify(audit_dir, None).ok


async def test_a_lost_chain_key_stops_writing_instead_of_starting_a_new_chain(
    tmp_path: Path,
) -> None:
    """Issue: a deleted chain.key was replaced by a new one at the next start, silently, and
    `audit verify` failed for good from there. Now the writer says why it cannot write (the
    status file shows it; calls are refused 503) and makes no key of its own."""
    writer = AuditWriter(tmp_path)
    await writer.start()
    assert writer.submit(record(1))
    await writer.close()
    (tmp_path / "chain.key").unlink()
    writer = AuditWriter(tmp_path)
    await writer.start()
    try:
        assert not writer.available
        assert "chain.key is missing while 1 records are chained" in str(writer.state()["error"])
        assert not writer.submit(record(2))
        assert not (tmp_path / "chain.key").exists()
    finally:
        await writer.close()


async def test_a_fresh_audit_makes_its_key(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit")
    await writer.start()
    assert writer.submit(record(1))
    await writer.close()
    assert (tmp_path / "audit" / "chain.key").stat().st_size == 32
