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


def verify(
    audit_dir: Path,
    anchor: Head | None,
    progress: Callable[[int], None] | None = None,
) -> Verdict:
    verdict = Verdict()
    paths = [p for p in audit_files(audit_dir) if p.exists()]
    verdict.files = [str(p) for p in paths]
    try:
        key = load_key(audit_dir, create=False)
    except FileNotFoundError:
        key = b""
    except PermissionError:
        verdict.fail(0, f"cannot read {audit_dir / 'chain.key'}: run as the proxy's user")
        return verdict
    if not key:
        seqs = [line.seq for line in _lines(paths) if line.seq is not None]
        if seqs:
            verdict.fail(min(seqs), "the chain key is missing: records cannot be checked")
            return verdict
    pruned = read_pruned(audit_dir)
    head = pruned or Head()
    anchored_chain: str | None = None
    started = False
    for index, line in enumerate(_lines(paths)):
        if progress is not None and index % 10000 == 0:
            progress(index)
        expected = head.seq + 1
        if line.record is None:
            verdict.fail(
                expected,
                "a line that is not a whole record (edited, or torn by a power loss)",
                line.path,
                line.number,
            )
            return verdict
        if line.seq is None or split(line.raw) is None:
            if not started:
                verdict.unchained += 1  # written before chaining began
                continue
            verdict.fail(
                expected, "a record without seq and chain (inserted)", line.path, line.number
            )
            return verdict
        started = True
        seq = line.seq
        if seq != expected:
            if seq > expected and not _any_between(paths, expected, seq):
                reason = (
                    f"records before seq {seq} are missing (removed)"
                    if head.seq == 0 and pruned is None
                    else f"records seq {expected}..{seq - 1} are missing (removed)"
                )
            elif seq < expected:
                reason = f"seq {seq} comes after seq {head.seq} (inserted or reordered)"
            else:
                reason = f"seq {seq} comes where seq {expected} belongs (records reordered)"
            verdict.fail(expected, reason, line.path, line.number)
            return verdict
        body, chain = split(line.raw) or (b"", "")
        if not hmac.compare_digest(mac(key, head.chain, body).encode(), chain.encode()):
            verdict.fail(
                seq,
                "the record does not match its chain (edited, or not written by blindkey)",
                line.path,
                line.number,
            )
            return verdict
        head = Head(seq, chain)
        if line.record.get("event") == "gap":
            count = line.record.get("count")
            verdict.counted += count if isinstance(count, int) else 0
        verdict.records += 1
        verdict.first_seq = verdict.first_seq or seq
        verdict.last_seq = seq
        if anchor is not None and seq == anchor.seq:
            anchored_chain = chain
    if anchor is not None and anchor.seq:
        verdict.anchor = {"seq": anchor.seq, "chain": anchor.chain}
        if anchor.seq > head.seq:
            verdict.fail(
                head.seq + 1,
                f"records from seq {head.seq + 1} are missing: the broker's anchor is at seq "
                f"{anchor.seq} (the tail was cut)",
            )
        elif anchored_chain is not None and not hmac.compare_digest(
            anchored_chain.encode(), anchor.chain.encode()
        ):
            verdict.fail(anchor.seq, "the record differs from the one the broker anchored")
    return verdict
