"""`audit verify`: walk every audit file, oldest first, and check that each record follows
the one before it (seq one more, chain = HMAC over the previous chain and this record),
then that the file reaches the anchor the broker holds. The first record that does not is
named, with why.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from blindkey.audit.chain import Head, load_key, mac, split
from blindkey.audit.store import audit_files, read_pruned


@dataclass
class Verdict:
    ok: bool = True
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    files: list[str] = field(default_factory=list)
    unchained: int = 0  # leading records written before the audit was chained
    counted: int = 0  # records an outage left known only by a count (`event: gap`)
    anchor: dict[str, Any] | None = None
    bad_seq: int | None = None
    reason: str | None = None
    file: str | None = None
    line: int | None = None

    def fail(
        self, seq: int, reason: str, file: Path | None = None, line: int | None = None
    ) -> None:
        self.ok, self.bad_seq, self.reason = False, seq, reason
        self.file, self.line = (str(file) if file else None), line

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Line:
    path: Path
    number: int
    raw: bytes
    record: dict[str, Any] | None
    seq: int | None


def _lines(paths: list[Path]) -> Iterator[_Line]:
    """Every line of every file, one at a time: memory stays flat over any audit size."""
    for path in paths:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            continue
        with handle:
            yield from _file_lines(path, handle)


def _file_lines(path: Path, handle: BinaryIO) -> Iterator[_Line]:
    for number, line in enumerate(handle, 1):
        raw = line[:-1] if line.endswith(b"\n") else line
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield _Line(path, number, raw, None, None)
            continue
        record = value if isinstance(value, dict) else None
        seq = record.get("seq") if record is not None else None
        ok_seq = isinstance(seq, int) and not isinstance(seq, bool)
        yield _Line(path, number, raw, record, seq if ok_seq else None)


def _any_between(paths: list[Path], low: int, high: int) -> bool:
    """Whether any record has a seq in [low, high): a second pass, taken only once a record
    is out of place, tells records removed from records moved."""
    return any(line.seq is not None and low <= line.seq < high for line in _lines(paths))


def _key(audit_dir: Path, paths: list[Path], verdict: Verdict) -> bytes | None:
    """The chain key; None (and the verdict says why) when the records cannot be checked."""
    try:
        key = load_key(audit_dir, create=False)
    except FileNotFoundError:
        key = b""
    except PermissionError:
        verdict.fail(0, f"cannot read {audit_dir / 'chain.key'}: run as the proxy's user")
        return None
    if not key:
        # The lowest seq, a line at a time: no list of every seq in memory.
        first = min((line.seq for line in _lines(paths) if line.seq is not None), default=None)
        if first is not None:
            verdict.fail(first, "the chain key is missing: records cannot be checked")
            return None
    return key


class _Walk:
    """The chain followed record by record; `step` is False at the first that breaks it."""

    def __init__(
        self, key: bytes, paths: list[Path], pruned: Head | None, verdict: Verdict
    ) -> None:
        self.key, self.paths, self.pruned, self.verdict = key, paths, pruned, verdict
        self.head = pruned or Head()
        self.started = False
        self.anchored_chain: str | None = None

    def step(self, line: _Line, anchor: Head | None) -> bool:
        verdict, expected = self.verdict, self.head.seq + 1
        if line.record is None:
            reason = "a line that is not a whole record (edited, or torn by a power loss)"
            verdict.fail(expected, reason, line.path, line.number)
            return False
        parts = split(line.raw) if line.seq is not None else None
        if line.seq is None or parts is None:
            if not self.started:
                verdict.unchained += 1  # written before chaining began
                return True
            reason = "a record without seq and chain (inserted)"
            verdict.fail(expected, reason, line.path, line.number)
            return False
        self.started = True
        seq = line.seq
        if seq != expected:
            verdict.fail(expected, self._out_of_place(seq), line.path, line.number)
            return False
        body, chain = parts
        if not hmac.compare_digest(mac(self.key, self.head.chain, body).encode(), chain.encode()):
            reason = "the record does not match its chain (edited, or not written by blindkey)"
            verdict.fail(seq, reason, line.path, line.number)
            return False
        self.head = Head(seq, chain)
        if line.record.get("event") == "gap":
            count = line.record.get("count")
            verdict.counted += count if isinstance(count, int) else 0
        verdict.records += 1
        verdict.first_seq = verdict.first_seq or seq
        verdict.last_seq = seq
        if anchor is not None and seq == anchor.seq:
            self.anchored_chain = chain
        return True

    def _out_of_place(self, seq: int) -> str:
        head, expected = self.head, self.head.seq + 1
        if seq > expected and not _any_between(self.paths, expected, seq):
            if head.seq == 0 and self.pruned is None:
                return f"records before seq {seq} are missing (removed)"
            return f"records seq {expected}..{seq - 1} are missing (removed)"
        if seq < expected:
            return f"seq {seq} comes after seq {head.seq} (inserted or reordered)"
        return f"seq {seq} comes where seq {expected} belongs (records reordered)"

    def reaches(self, anchor: Head | None) -> None:
        """The file reaches the broker's anchor, with the chain the broker holds."""
        if anchor is None or not anchor.seq:
            return
        verdict, head = self.verdict, self.head
        verdict.anchor = {"seq": anchor.seq, "chain": anchor.chain}
        if anchor.seq > head.seq:
            verdict.fail(
                head.seq + 1,
                f"records from seq {head.seq + 1} are missing: the broker's anchor is at seq "
                f"{anchor.seq} (the tail was cut)",
            )
        elif self.anchored_chain is not None and not hmac.compare_digest(
            self.anchored_chain.encode(), anchor.chain.encode()
        ):
            verdict.fail(anchor.seq, "the record differs from the one the broker anchored")


def verify(
    audit_dir: Path,
    anchor: Head | None,
    progress: Callable[[int], None] | None = None,
) -> Verdict:
    """Every record of every file, a line at a time: memory stays flat over any number of
    files and records."""
    verdict = Verdict()
    paths = [p for p in audit_files(audit_dir) if p.exists()]
    verdict.files = [str(p) for p in paths]
    key = _key(audit_dir, paths, verdict)
    if key is None:
        return verdict
    walk = _Walk(key, paths, read_pruned(audit_dir), verdict)
    for index, line in enumerate(_lines(paths)):
        if progress is not None and index % 10000 == 0:
            progress(index)
        if not walk.step(line, anchor):
            return verdict
    walk.reaches(anchor)
    return verdict
