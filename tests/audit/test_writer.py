"""AuditWriter: whole JSON lines, nothing lost on close, group commit, survives a full disk."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from blindkey.audit.record import AuditRecord
from blindkey.audit.writer import AuditWriter, audit_file


def record(i: int, **extra: Any) -> dict[str, Any]:
    base = AuditRecord(request_id=f"req-{i}", method="GET", url=f"https://api.example.com/{i}")
    return {**base.finish(), **extra}


def lines_of(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file ends inside a line"
    return [orjson.loads(line) for line in data.splitlines()]


def descriptors_on(path: Path) -> list[int]:
    """This process's open descriptors on the file `path` names (symlinks followed): how a
    test finds the writer's descriptor from outside, as `ls -l /proc/PID/fd` would."""
    target = path.stat()
    found = []
    for name in os.listdir("/dev/fd"):
        try:
            opened = os.fstat(int(name))
        except OSError:
            continue  # the descriptor listdir read /dev/fd through, closed by now
        if (opened.st_dev, opened.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(name))
    return found


async def flushed(writer: AuditWriter) -> None:
    """Everything submitted so far is written (or counted as failed) by a live writer task;
    a writer task that died never finishes the queue, and this fails instead of hanging."""
    async with asyncio.timeout(5):
        await writer.flush()


class FsyncCounter:
    """Wraps the real os.fsync: the disk is really synced, the calls are counted."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.calls += 1
        self.real(fd)


async def test_one_json_object_per_line(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    submitted = [record(i) for i in range(5)]
    for item in submitted:
        writer.submit(item)
    await writer.close()
    raw = audit_file(tmp_path).read_bytes().split(b"\n")
    assert raw[-1] == b""
    assert len(raw) == 6
    assert [orjson.loads(line) for line in raw[:-1]] == submitted


async def test_record_submitted_after_the_answer_is_queued_once_the_step_ends(
    tmp_path: Path,
) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    finished = AuditRecord(request_id="req-late", method="GET", url="https://api.example.com/")
    writer.submit_after_answer(finished)
    # Nothing yet: the handler's step (in which aiohttp writes the answer) is still running.
    assert writer.queue.empty()
    assert finished.ts == ""
    await asyncio.sleep(0)
    assert writer.queue.qsize() == 1
    await writer.close()
    (written,) = lines_of(audit_file(tmp_path))
    assert written["request_id"] == "req-late"
    assert written["ts"] == finished.ts != ""


async def test_file_is_private_and_appended_to(tmp_path: Path) -> None:
    path = audit_file(tmp_path)
    path.write_bytes(orjson.dumps(record(0)) + b"\n")
    path.chmod(0o600)
    writer = AuditWriter(tmp_path)
    await writer.start()
    writer.submit(record(1))
    await writer.close()
    assert [r["request_id"] for r in lines_of(path)] == ["req-0", "req-1"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_new_file_is_0600(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    await writer.close()
    assert stat.S_IMODE(audit_file(tmp_path).stat().st_mode) == 0o600


async def test_everything_submitted_is_on_disk_after_close(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    for i in range(3000):  # more than one batch (MAX_BATCH)
        writer.submit(record(i))
    await writer.close()
    ids = [r["request_id"] for r in lines_of(audit_file(tmp_path))]
    assert ids == [f"req-{i}" for i in range(3000)]


async def test_close_twice_and_close_without_start(tmp_path: Path) -> None:
    never_started = AuditWriter(tmp_path / "nowhere")
    await never_started.close()
    writer = AuditWriter(tmp_path)
    await writer.start()
    writer.submit(record(1))
    await writer.close()
    await writer.close()
    assert len(lines_of(audit_file(tmp_path))) == 1


async def test_concurrent_tasks_never_interleave_or_tear(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    # Large records, so a torn or interleaved write could not go unnoticed.
    padding = {f"task{t}": "x" * (2000 + 37 * t) for t in range(50)}

    async def producer(task: int) -> None:
        for i in range(40):
            writer.submit(record(task * 1000 + i, pad=padding[f"task{task}"], task=task, seq=i))
            if i % 3 == 0:
                await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        for task in range(50):
            group.create_task(producer(task), name=f"producer-{task}")
    await writer.close()
    written = lines_of(audit_file(tmp_path))
    assert len(written) == 50 * 40
    for item in written:
        assert item["pad"] == padding[f"task{item['task']}"]
    for task in range(50):
        # Each task's records are in the order it submitted them.
        assert [r["seq"] for r in written if r["task"] == task] == list(range(40))


async def test_submit_from_running_tasks_while_writer_drains(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()

    async def trickle(base: int) -> None:
        for i in range(20):
            writer.submit(record(base + i))
            await asyncio.sleep(0.001)

    await asyncio.gather(*(trickle(b * 100) for b in range(10)))
    await writer.close()
    ids = {r["request_id"] for r in lines_of(audit_file(tmp_path))}
    assert ids == {f"req-{b * 100 + i}" for b in range(10) for i in range(20)}


async def test_group_commit_uses_few_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = FsyncCounter(os.fsync)
    monkeypatch.setattr(os, "fsync", counter)
    writer = AuditWriter(tmp_path)
    await writer.start()
    for i in range(1000):
        writer.submit(record(i))
    await writer.close()
    monkeypatch.undo()
    assert len(lines_of(audit_file(tmp_path))) == 1000
    assert 1 <= counter.calls <= 10, counter.calls


async def test_group_commit_under_concurrent_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = FsyncCounter(os.fsync)
    monkeypatch.setattr(os, "fsync", counter)
    writer = AuditWriter(tmp_path)
    await writer.start()

    async def producer(task: int) -> None:
        for i in range(10):
            writer.submit(record(task * 100 + i))
            await asyncio.sleep(0)

    await asyncio.gather(*(producer(t) for t in range(100)))
    await writer.close()
    monkeypatch.undo()
    assert len(lines_of(audit_file(tmp_path))) == 1000
    # Records that queue while an fsync runs share the next one.
    assert 1 <= counter.calls < 200, counter.calls


async def test_fsync_false_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FsyncCounter(os.fsync)
    monkeypatch.setattr(os, "fsync", counter)
    writer = AuditWriter(tmp_path, fsync=False)
    await writer.start()
    for i in range(10):
        writer.submit(record(i))
    await writer.close()
    monkeypatch.undo()
    assert counter.calls == 0
    assert len(lines_of(audit_file(tmp_path))) == 10


async def test_submit_only_queues_and_the_writer_task_writes(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path)
    await writer.start()
    path = audit_file(tmp_path)
    for i in range(2000):
        writer.submit(record(i))
    # No disk I/O on the caller's time: until the caller yields, nothing has been written.
    assert path.stat().st_size == 0
    await flushed(writer)
    assert [r["request_id"] for r in lines_of(path)] == [f"req-{i}" for i in range(2000)]
    await writer.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_full_disk_is_counted_and_later_records_land(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real ENOSPC: the audit file is /dev/full; then the "disk" frees up.

    The writer's descriptor is pointed at a real file with dup2, as if space came back,
    and the records submitted after that must land there.
    """
    audit_file(tmp_path).symlink_to("/dev/full")
    writer = AuditWriter(tmp_path)
    await writer.start()
    (writers_descriptor,) = descriptors_on(audit_file(tmp_path))
    with caplog.at_level(logging.ERROR, logger="blindkey.audit"):
        for i in range(3):
            writer.submit(record(i))
        await flushed(writer)
    assert writer.failures == 3
    assert any("audit write failed" in r.getMessage() for r in caplog.records)
    assert any("No space left on device" in r.getMessage() for r in caplog.records)

    recovered = tmp_path / "recovered.jsonl"
    fd = os.open(recovered, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.dup2(fd, writers_descriptor)
    finally:
        os.close(fd)
    for i in range(3, 6):
        writer.submit(record(i))
    await flushed(writer)  # the writer task outlived the failures
    assert [r["request_id"] for r in lines_of(recovered)] == ["req-3", "req-4", "req-5"]
    await writer.close()
    assert writer.failures == 3
    assert [r["request_id"] for r in lines_of(recovered)] == ["req-3", "req-4", "req-5"]


async def test_write_error_mocked_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This mocks a full disk (os.write raising ENOSPC for the writer's descriptor only).

    A partial fill of a real filesystem cannot be produced here; the /dev/full test above
    covers the real error path. Here the failure comes and goes, as on a real disk.
    """
    real_write = os.write
    failing = threading.Event()
    failing.set()
    writer = AuditWriter(tmp_path)
    await writer.start()
    (audit_descriptor,) = descriptors_on(audit_file(tmp_path))

    def flaky_write(fd: int, data: Any) -> int:
        if fd == audit_descriptor and failing.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky_write)
    writer.submit(record(1))
    writer.submit(record(2))
    await flushed(writer)
    assert writer.failures == 2
    failing.clear()
    writer.submit(record(3))
    await flushed(writer)  # the writer task outlived the failure
    assert [r["request_id"] for r in lines_of(audit_file(tmp_path))] == ["req-3"]
    await writer.close()
    monkeypatch.undo()
    assert writer.failures == 2


async def test_start_on_missing_directory_fails_loudly(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        await writer.start()


async def test_unserialisable_record_does_not_stop_the_writer(tmp_path: Path) -> None:
    """One bad record is counted and dropped; the task lives on and close() does not raise."""
    writer = AuditWriter(tmp_path)
    await writer.start()
    writer.submit(record(1))
    writer.submit({"request_id": "bad", "url": b"raw bytes are not JSON"})
    writer.submit(record(2))
    await flushed(writer)
    assert writer.failures == 1
    writer.submit(record(3))
    await flushed(writer)  # the writer task outlived the bad record
    await writer.close()
    assert writer.failures == 1
    assert [r["request_id"] for r in lines_of(audit_file(tmp_path))] == ["req-1", "req-2", "req-3"]


async def test_partial_write_does_not_swallow_the_next_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This mocks a disk that fills mid-write (half a batch lands, then ENOSPC).

    A filesystem that fills at an exact byte cannot be produced here. The half line must
    stay alone on its line, so the next record still reads back.
    """
    real_write = os.write
    writer = AuditWriter(tmp_path)
    await writer.start()
    (audit_descriptor,) = descriptors_on(audit_file(tmp_path))
    calls: list[int] = []

    def filling_write(fd: int, data: Any) -> int:
        if fd != audit_descriptor:
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:  # as write(2) does when space runs out: a short count...
            return real_write(fd, bytes(data[: len(data) // 2]))
        if len(calls) == 2:  # ...then ENOSPC on the retry for the rest
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", filling_write)
    writer.submit(record(1))
    await flushed(writer)
    writer.submit(record(2))
    await writer.close()
    monkeypatch.undo()
    assert writer.failures == 1
    readable = []
    for line in audit_file(tmp_path).read_bytes().splitlines():
        try:
            readable.append(orjson.loads(line)["request_id"])
        except orjson.JSONDecodeError:
            continue
    assert readable == ["req-2"]


async def test_text_that_is_not_utf8_is_written_escaped(tmp_path: Path) -> None:
    """An agent's header bytes that are not UTF-8 reach the record as surrogates."""
    writer = AuditWriter(tmp_path)
    await writer.start()
    url = b"http://x.example/\xff\xfe".decode("utf-8", "surrogateescape")
    writer.submit({**record(1), "url": url, "secrets": ["A\udcff"]})
    await writer.close()
    assert writer.failures == 0
    (line,) = lines_of(audit_file(tmp_path))
    assert line["url"] == "http://x.example/\\xff\\xfe" and line["secrets"] == ["A\\xff"]
