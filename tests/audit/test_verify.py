"""`audit verify` finds every kind of tampering and names the first bad seq."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from blindkey.audit.anchor import ANCHOR_FILE
from blindkey.audit.chain import Head, load_key, seal
from blindkey.audit.events import append_event
from blindkey.audit.store import audit_file, head_of_file
from blindkey.audit.verify import verify
from blindkey.config.paths import Paths
from tests.conftest import RunCli

COUNT = 12


def written(audit_dir: Path) -> list[bytes]:
    for i in range(COUNT):
        append_event(audit_dir, "config", {"change": f"change {i}", "by": "alice"})
    return audit_file(audit_dir).read_bytes().splitlines(keepends=True)


def rewrite(audit_dir: Path, lines: list[bytes]) -> None:
    audit_file(audit_dir).write_bytes(b"".join(lines))


def test_an_untouched_audit_verifies(tmp_path: Path) -> None:
    written(tmp_path)
    verdict = verify(tmp_path, head_of_file(audit_file(tmp_path)))
    assert (
        verdict.ok
        and verdict.records == COUNT
        and (verdict.first_seq, verdict.last_seq)
        == (
            1,
            COUNT,
        )
    )


def test_an_edited_record_is_named(tmp_path: Path) -> None:
    lines = written(tmp_path)
    lines[4] = lines[4].replace(b'"by":"alice"', b'"by":"mallory"')
    rewrite(tmp_path, lines)
    verdict = verify(tmp_path, None)
    assert not verdict.ok and verdict.bad_seq == 5 and "edited" in (verdict.reason or "")
    assert verdict.line == 5


def test_a_removed_record_is_named(tmp_path: Path) -> None:
    lines = written(tmp_path)
    del lines[6]
    rewrite(tmp_path, lines)
    verdict = verify(tmp_path, None)
    assert not verdict.ok and verdict.bad_seq == 7 and "removed" in (verdict.reason or "")


def test_reordered_records_are_named(tmp_path: Path) -> None:
    lines = written(tmp_path)
    lines[3], lines[4] = lines[4], lines[3]
    rewrite(tmp_path, lines)
    verdict = verify(tmp_path, None)
    assert not verdict.ok and verdict.bad_seq == 4 and "reordered" in (verdict.reason or "")


def test_an_inserted_record_is_named(tmp_path: Path) -> None:
    """Forged with a key of the forger's own: its chain cannot match."""
    lines = written(tmp_path)
    forged, _ = seal(b"k" * 32, {"ts": "2026-11-30T00:00:00.000Z", "event": "config"}, Head(3, ""))
    rewrite(tmp_path, [*lines[:3], forged, *lines[3:]])
    verdict = verify(tmp_path, None)
    assert not verdict.ok and verdict.bad_seq == 4


def test_an_inserted_record_without_chain_is_named(tmp_path: Path) -> None:
    lines = written(tmp_path)
    plain = orjson.dumps({"ts": "2026-11-30T00:00:00.000Z", "event": "config"}) + b"\n"
    rewrite(tmp_path, [*lines[:8], plain, *lines[8:]])
    verdict = verify(tmp_path, None)
    assert not verdict.ok and verdict.bad_seq == 9 and "inserted" in (verdict.reason or "")


def test_a_renumbered_copy_of_a_record_is_named(tmp_path: Path) -> None:
    """Re-sealed with the right key after the fact would verify: this one is not."""
    lines = written(tmp_path)
    copy = lines[2].replace(b'"seq":3', b'"seq":4')
    rewrite(tmp_path, [*lines[:3], copy])
    verdict = verify(tmp_path, None)
    assert not verdict.ok and verdict.bad_seq == 4


def test_a_cut_tail_is_found_by_the_anchor(tmp_path: Path) -> None:
    lines = written(tmp_path)
    anchor = head_of_file(audit_file(tmp_path))
    rewrite(tmp_path, lines[:9])
    assert verify(tmp_path, None).ok  # without an anchor, a cut tail looks whole
    verdict = verify(tmp_path, anchor)
    assert not verdict.ok and verdict.bad_seq == 10 and "cut" in (verdict.reason or "")


def test_a_rewritten_tail_differs_from_the_anchor(tmp_path: Path) -> None:
    """Whoever holds the key could rewrite the file; the anchor still tells."""
    lines = written(tmp_path)
    anchor = head_of_file(audit_file(tmp_path))
    key = load_key(tmp_path, create=False)
    record = orjson.loads(lines[-1])
    record["by"] = "mallory"
    previous = orjson.loads(lines[-2])
    forged, _ = seal(key, record, Head(previous["seq"], previous["chain"]))
    rewrite(tmp_path, [*lines[:-1], forged])
    verdict = verify(tmp_path, anchor)
    assert not verdict.ok and verdict.bad_seq == COUNT and "anchored" in (verdict.reason or "")


def test_a_torn_line_is_named(tmp_path: Path) -> None:
    lines = written(tmp_path)
    rewrite(tmp_path, [*lines[:5], lines[5][:30] + b"\n", *lines[6:]])
    verdict = verify(tmp_path, None)
    assert not verdict.ok and verdict.bad_seq == 6


@pytest.mark.parametrize("as_json", [True, False])
def test_cli_names_the_first_bad_seq(home: Paths, run_cli: RunCli, as_json: bool) -> None:
    lines = written(home.audit_dir)
    ok = run_cli("audit", "verify", "--json")
    assert ok.returncode == 0 and orjson.loads(ok.stdout)["ok"] is True
    del lines[2]
    rewrite(home.audit_dir, lines)
    result = run_cli("audit", "verify", *(["--json"] if as_json else []))
    assert result.returncode == 1
    if as_json:
        verdict = orjson.loads(result.stdout)  # JSON only, nothing else on stdout
        assert verdict["ok"] is False and verdict["bad_seq"] == 3
    else:
        assert result.stderr.startswith("blindkey: audit broken at seq 3:")
        assert result.stdout == ""


def test_cli_reads_the_brokers_anchor_file_when_no_broker_runs(
    home: Paths, run_cli: RunCli
) -> None:
    lines = written(home.audit_dir)
    head = head_of_file(audit_file(home.audit_dir))
    assert head is not None
    (home.state_dir / ANCHOR_FILE).write_bytes(orjson.dumps({"seq": head.seq, "chain": head.chain}))
    rewrite(home.audit_dir, lines[:-2])
    result = run_cli("audit", "verify", "--json")
    verdict = orjson.loads(result.stdout)
    assert result.returncode == 1 and verdict["bad_seq"] == COUNT - 1
    assert verdict["anchor_from"] == "file"


def test_the_chain_is_standard_hmac_sha256(tmp_path: Path) -> None:
    """Anyone with the key can check a record with any HMAC tool, not only with blindkey."""
    import hashlib
    import hmac

    lines = written(tmp_path)
    key = load_key(tmp_path, create=False)
    first, second = (orjson.loads(line) for line in lines[:2])
    body = lines[1].rstrip(b"\n")[: -len(',"chain":"') - 64 - 2] + b"}"
    expected = hmac.new(key, first["chain"].encode() + b"\n" + body, hashlib.sha256).hexdigest()
    assert second["chain"] == expected
