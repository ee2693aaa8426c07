"""Issue 30: signed checkpoints, and `audit verify --file` on a copy without the HMAC key.

An audit is written by the real writer (chained, checkpointed every 10 records), copied
out the ways a user copies it (`audit export --format jsonl`, `proxy logs --json`), then
tampered with as an attacker holding the copy would: every change is named by seq.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindkey.audit.checkpoint import PRIVATE_FILE, PUBLIC_FILE, load_public, signature_ok
from blindkey.audit.store import AuditLog, rotated_files
from blindkey.audit.writer import AuditWriter
from blindkey.config.paths import Paths
from tests.audit.records import make_record
from tests.conftest import RunCli

NOW = datetime.now(UTC)
EVERY = 10


def write_audit(paths: Paths, count: int = 35) -> None:
    log = AuditLog(paths.audit_dir, checkpoint_every=EVERY)
    try:
        for i in range(count):
            log.append([make_record(f"r{i}", NOW, status=200 + i)])
    finally:
        log.close()


def exported(paths: Paths, run_cli: RunCli, tmp_path: Path) -> list[dict[str, Any]]:
    target = tmp_path / "copy.jsonl"
    result = run_cli("audit", "export", "--format", "jsonl", "-o", str(target))
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in target.read_bytes().splitlines()]


def save(records: list[dict[str, Any]], path: Path) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def verify_json(run_cli: RunCli, path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("audit", "verify", "--file", str(path), "--json", *extra)
    return result.returncode, orjson.loads(result.stdout)


def reasons(verdict: dict[str, Any]) -> list[str]:
    return [p["reason"] for p in verdict["problems"]]


def rehash(records: list[dict[str, Any]], start: int) -> None:
    """What an attacker without the private key can do: recompute every hash after an edit."""
    previous = records[start - 1]["hash"] if start else ""
    for record in records[start:]:
        body = orjson.dumps({k: v for k, v in record.items() if k not in ("hash", "chain")})
        record["hash"] = previous = hashlib.sha256(previous.encode() + b"\n" + body).hexdigest()


def by_seq(records: list[dict[str, Any]], seq: int) -> int:
    return next(i for i, r in enumerate(records) if r["seq"] == seq)


def test_checkpoints_every_n_records_sign_the_head(home: Paths) -> None:
    write_audit(home)
    lines = (home.audit_dir / "audit.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    checkpoints = [r for r in records if r["event"] == "checkpoint"]
    assert [c["seq"] for c in checkpoints] == [11, 21, 31]
    public = load_public(home.audit_dir / PUBLIC_FILE)
    for checkpoint in checkpoints:
        before = records[checkpoint["seq"] - 2]
        assert checkpoint["head"] == {
            "seq": before["seq"], "hash": before["hash"], "chain": before["chain"]
        }  # fmt: skip
        assert checkpoint["cause"] == "interval" and signature_ok(public, checkpoint)
    # The checkpoint is a record of the chain like any other: the keyed verify walks it.
    assert all(r["seq"] == n for n, r in enumerate(records, 1))


def test_checkpoint_at_rotation(home: Paths) -> None:
    log = AuditLog(home.audit_dir, rotate_bytes=2000, checkpoint_every=10_000)
    try:
        for i in range(6):
            log.append([make_record(f"r{i}", NOW)])
    finally:
        log.close()
    rotated = rotated_files(home.audit_dir)
    assert rotated
    public = load_public(home.audit_dir / PUBLIC_FILE)
    for path in rotated:
        records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        last, before = records[-1], records[-2]
        assert last["event"] == "checkpoint" and last["cause"] == "rotation"
        assert last["head"]["seq"] == before["seq"] == last["seq"] - 1
        assert signature_ok(public, last)
        # The file's name says its last seq: the checkpoint is in the file it signs.
        assert path.name == f"audit-{last['seq']:012d}.jsonl"


async def test_key_files_private_and_public(home: Paths) -> None:
    """The proxy's writer makes the pair at start: the public half can be handed out before
    the first checkpoint is due."""
    previous = os.umask(0o077)  # a strict umask must not hide the public half
    try:
        writer = AuditWriter(home.audit_dir)
        await writer.start()
        await writer.close()
    finally:
        os.umask(previous)
    private, public = home.audit_dir / PRIVATE_FILE, home.audit_dir / PUBLIC_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.stat().st_uid == public.stat().st_uid == os.getuid()
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert b"PRIVATE" not in public.read_bytes()


def test_an_export_and_proxy_logs_json_verify(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    write_audit(home)
    records = exported(home, run_cli, tmp_path)
    code, verdict = verify_json(run_cli, tmp_path / "copy.jsonl")
    assert code == 0 and verdict["ok"], verdict
    assert verdict["checkpoints"] == 3 and verdict["signed_through"] == 30
    assert verdict["unsigned"] == [32, len(records)]  # after the last checkpoint
    logs = run_cli("proxy", "logs", "--json")
    (tmp_path / "logs.json").write_text(logs.stdout)
    code, verdict = verify_json(run_cli, tmp_path / "logs.json")
    assert code == 0 and verdict["checkpoints"] == 3, verdict
    text = run_cli("audit", "verify", "--file", str(tmp_path / "copy.jsonl"))
    assert text.returncode == 0 and "copy ok: 38 records" in text.stdout


def test_edited_record_is_named(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    write_audit(home)
    records = exported(home, run_cli, tmp_path)
    records[by_seq(records, 14)]["status"] = 599
    code, verdict = verify_json(run_cli, save(records, tmp_path / "edited.jsonl"))
    assert code == 1
    assert reasons(verdict) == ["seq 14 does not match its hash (the record was edited)"]
    text = run_cli("audit", "verify", "--file", str(tmp_path / "edited.jsonl"))
    assert text.returncode == 1
    assert text.stderr.strip() == (
        "blindkey: copy broken at seq 14: seq 14 does not match its hash (the record was edited)"
    )


def test_edit_with_rewritten_hashes_is_found_at_the_checkpoint(
    home: Paths, run_cli: RunCli, tmp_path: Path
) -> None:
    write_audit(home)
    records = exported(home, run_cli, tmp_path)
    at = by_seq(records, 14)
    records[at]["status"] = 599
    rehash(records, at)
    code, verdict = verify_json(run_cli, save(records, tmp_path / "rehashed.jsonl"))
    assert code == 1
    assert reasons(verdict)[0] == (
        "records seq 12..20 do not reach the head checkpoint seq 21 signed: one of them was "
        "edited, removed or moved and the hashes after it rewritten"
    )


def test_removed_record_is_named(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    write_audit(home)
    records = exported(home, run_cli, tmp_path)
    del records[by_seq(records, 15)]
    code, verdict = verify_json(run_cli, save(records, tmp_path / "removed.jsonl"))
    assert code == 1
    assert reasons(verdict) == ["seq 15 is missing (removed, or the copy was cut there)"]
    assert verdict["problems"][0]["seq"] == 15


def test_reordered_records_are_named(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    write_audit(home)
    records = exported(home, run_cli, tmp_path)
    at = by_seq(records, 5)
    records[at], records[at + 1] = records[at + 1], records[at]
    code, verdict = verify_json(run_cli, save(records, tmp_path / "reordered.jsonl"))
    assert code == 1
    assert reasons(verdict) == [
        "seq 6 comes where seq 5 belongs (records reordered)",
        "seq 5 comes after seq 6 (reordered or inserted)",
    ]


def test_cut_between_checkpoints_is_named(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    write_audit(home)
    records = exported(home, run_cli, tmp_path)
    cut = [r for r in records if not 13 <= r["seq"] <= 18]
    code, verdict = verify_json(run_cli, save(cut, tmp_path / "cut.jsonl"))
    assert code == 1
    assert reasons(verdict) == ["seq 13..18 are missing (removed, or the copy was cut there)"]
    # Renumbered and rehashed to hide the cut: the next signed head no longer matches.
    for record in cut[by_seq(cut, 19) :]:
        record["seq"] -= 6
    rehash(cut, by_seq(cut, 13))
    code, verdict = verify_json(run_cli, save(cut, tmp_path / "hidden-cut.jsonl"))
    assert code == 1
    assert any("checkpoint seq 15 signs seq 20, not the record before it" in r
               for r in reasons(verdict)), verdict  # fmt: skip


def test_forged_checkpoint_and_wrong_key_are_named(
    home: Paths, run_cli: RunCli, tmp_path: Path
) -> None:
    write_audit(home)
    records = exported(home, run_cli, tmp_path)
    at = by_seq(records, 21)
    records[at]["head"]["hash"] = "0" * 64
    code, verdict = verify_json(run_cli, save(records, tmp_path / "forged.jsonl"))
    assert code == 1
    assert "checkpoint seq 21: the signature fails (forged or edited)" in reasons(verdict)
    other = Ed25519PrivateKey.generate().public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "other.pub").write_bytes(pem)
    code, verdict = verify_json(
        run_cli, tmp_path / "copy.jsonl", "--public-key", str(tmp_path / "other.pub")
    )
    assert code == 1 and "not the public key given" in reasons(verdict)[0]


def test_a_copy_without_checkpoints_fails(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    write_audit(home)
    records = [r for r in exported(home, run_cli, tmp_path) if r["event"] != "checkpoint"]
    code, verdict = verify_json(run_cli, save(records[:5], tmp_path / "short.jsonl"))
    assert code == 1 and "no valid signed checkpoint" in reasons(verdict)[0]


@pytest.mark.parametrize("start", [1, 12])
def test_a_copy_starting_later_verifies(
    home: Paths, run_cli: RunCli, tmp_path: Path, start: int
) -> None:
    """A shipped copy may begin at any record: from the first checkpoint on, it checks."""
    write_audit(home)
    records = exported(home, run_cli, tmp_path)
    code, verdict = verify_json(run_cli, save(records[start:], tmp_path / "late.jsonl"))
    assert code == 0, verdict
    assert verdict["unverified"] == [start + 1]
    signature = base64.b64decode(records[10]["signature"])
    assert len(signature) == 64
