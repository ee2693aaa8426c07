"""`audit verify --file`: a copy of the audit (shipped, exported, `proxy logs --json`)
checked without the HMAC key, against its signed checkpoints (audit/checkpoint.py).

What a copy must carry: every record as the JSON object the audit holds, fields in the
order written (any whitespace or escaping), with its `seq` and `hash`; one object per line
or one JSON array. Each record's `hash` is recomputed from the record and the `hash` of the
one before it; each checkpoint's signature is checked and the head it signs must be the
record just before it. So, up to the last checkpoint in the copy:
- an edited record is named (its hash no longer matches), and one whose following hashes
  were rewritten to match is found at the next checkpoint (the signed head differs);
- a removed record (or a cut between checkpoints) is named by the seq numbers missing,
  and one renumbered to hide it at the next checkpoint;
- a reordered record is named by where it stands.
Records after the last checkpoint are not signed yet, and what follows the copy's end is
out of its sight: the verdict says both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from blindkey.audit.chain import link
from blindkey.audit.checkpoint import EVENT, key_id, signature_ok

MAX_PROBLEMS = 100
_UNHASHED = ("hash", "chain")


@dataclass
class CopyVerdict:
    ok: bool = True
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0  # checkpoints whose signature and head hold
    signed_through: int | None = None  # the last seq a valid checkpoint covers
    unsigned: list[int] | None = None  # [first, last] seq after the last checkpoint
    unverified: list[int] = field(default_factory=list)  # seqs whose predecessor is absent
    unhashed: int = 0  # records written before records carried a hash
    key_id: str = ""
    problems: list[dict[str, Any]] = field(default_factory=list)
    more_problems: int = 0

    @property
    def bad_seq(self) -> int | None:
        return self.problems[0]["seq"] if self.problems else None

    def problem(self, seq: int | None, line: int, reason: str) -> None:
        self.ok = False
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"seq": seq, "line": line, "reason": reason})
        else:
            self.more_problems += 1

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _objects(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or position, value) for each record of a JSONL file or a JSON array."""
    with path.open("rb") as handle:
        start = handle.read(64).lstrip()
        handle.seek(0)
        if start.startswith(b"["):
            try:
                values = orjson.loads(handle.read())
            except orjson.JSONDecodeError:
                yield 1, None
                return
            yield from enumerate(values if isinstance(values, list) else [None], 1)
            return
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                yield number, orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield number, None


def _body(record: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in record.items() if k not in _UNHASHED})


def _seq(record: dict[str, Any]) -> int | None:
    seq = record.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class _CopyWalk:
    def __init__(self, path: Path, public: Ed25519PublicKey, verdict: CopyVerdict) -> None:
        self.path, self.public, self.verdict = path, public, verdict
        self.prev_seq = 0  # the highest seq so far
        self.prev_hash: str | None = ""  # its hash; None: unknown (the copy began later)
        self.hashing = False  # records carry hashes from here on
        self.last_checkpoint = 0

    def step(self, number: int, value: Any) -> None:
        verdict = self.verdict
        record = value if isinstance(value, dict) else None
        seq = _seq(record) if record is not None else None
        if record is None or seq is None:
            what = "a line that is not a record" if record is None else "a record without seq"
            verdict.problem(None, number, f"{what} (torn, edited or inserted)")
            return
        verdict.records += 1
        if verdict.first_seq is None:
            verdict.first_seq = seq
            self.prev_seq = seq - 1
            self.prev_hash = "" if seq == 1 else None
        hashed = record.get("hash")
        if not isinstance(hashed, str):
            if self.hashing:
                verdict.problem(seq, number, f"seq {seq} carries no hash (edited)")
            else:
                verdict.unhashed += 1  # written before records carried one
                self.prev_seq, self.prev_hash = seq, ""
            return
        self.hashing = True
        if seq <= self.prev_seq:
            reason = f"seq {seq} comes after seq {self.prev_seq} (reordered or inserted)"
            verdict.problem(seq, number, reason)
            return
        follows = seq == self.prev_seq + 1
        if not follows:
            verdict.problem(self.prev_seq + 1, number, self._jumped(seq))
        previous = self.prev_hash if follows else None
        if record.get("event") == EVENT:
            previous = self._checkpoint(seq, number, record, previous)
        if previous is None:
            verdict.unverified.append(seq)
        elif link(previous, _body(record)) != hashed:
            reason = f"seq {seq} does not match its hash (the record was edited)"
            verdict.problem(seq, number, reason)
        self.prev_seq, self.prev_hash = seq, hashed
        verdict.last_seq = seq

    def _jumped(self, seq: int) -> str:
        expected = self.prev_seq + 1
        if self._seen_later(expected, seq):
            return f"seq {seq} comes where seq {expected} belongs (records reordered)"
        if expected == seq - 1:
            return f"seq {expected} is missing (removed, or the copy was cut there)"
        return f"seq {expected}..{seq - 1} are missing (removed, or the copy was cut there)"

    def _seen_later(self, low: int, high: int) -> bool:
        """Whether a record with seq in [low, high) comes later: moved, not removed."""
        for _, value in _objects(self.path):
            seq = _seq(value) if isinstance(value, dict) else None
            if seq is not None and low <= seq < high:
                return True
        return False

    def _checkpoint(
        self, seq: int, number: int, record: dict[str, Any], previous: str | None
    ) -> str | None:
        """Check a checkpoint; the hash its own link starts from (the head it signs)."""
        verdict = self.verdict
        if not signature_ok(self.public, record):
            signer = record.get("key_id")
            why = (
                f"it was signed by key {signer}, not the public key given ({verdict.key_id})"
                if isinstance(signer, str) and signer != verdict.key_id
                else "forged or edited"
            )
            verdict.problem(seq, number, f"checkpoint seq {seq}: the signature fails ({why})")
            return previous
        head = record["head"]
        if head["seq"] != seq - 1:
            reason = f"checkpoint seq {seq} signs seq {head['seq']}, not the record before it"
            verdict.problem(seq, number, reason)
            return previous
        if previous is not None and previous != head["hash"]:
            since = self.last_checkpoint + 1
            verdict.problem(
                head["seq"],
                number,
                f"records seq {since}..{head['seq']} do not reach the head checkpoint seq "
                f"{seq} signed: one of them was edited, removed or moved and the hashes "
                "after it rewritten",
            )
        else:
            verdict.checkpoints += 1
            verdict.signed_through = head["seq"]
        self.last_checkpoint = seq
        return str(head["hash"])

    def finish(self) -> None:
        verdict = self.verdict
        if verdict.last_seq is None:
            verdict.problem(None, 0, "the copy holds no chained record")
            return
        if verdict.checkpoints == 0:
            verdict.problem(
                verdict.first_seq,
                0,
                "no valid signed checkpoint in the copy: nothing in it can be checked without "
                "the HMAC key",
            )
            return
        signed = verdict.signed_through or 0
        if verdict.last_seq > signed + 1:  # the checkpoint itself follows its head
            verdict.unsigned = [signed + 2, verdict.last_seq]


def verify_copy(path: Path, public: Ed25519PublicKey) -> CopyVerdict:
    """A copy's verdict, read a record at a time (a second pass only when one is out of
    place). Raises OSError when the file cannot be read."""
    verdict = CopyVerdict(key_id=key_id(public))
    walk = _CopyWalk(path, public, verdict)
    for number, value in _objects(path):
        walk.step(number, value)
    walk.finish()
    return verdict
