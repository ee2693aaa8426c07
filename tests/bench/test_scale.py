"""The scale rows' own parts: the audit they write must be one `audit verify` accepts, the
peak RSS must be the measured child's, and a figure past its target must read as a miss."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench import scale_report
from bench.audit_fill import fill
from bench.scale_audit import blindkey_measured, measured
from blindkey.audit.store import audit_file, rotated_files
from blindkey.config.paths import Paths
from tests.conftest import RunCli

ROTATE = 256 << 10


def test_filled_audit_is_one_verify_accepts(home: Paths, run_cli: RunCli) -> None:
    """Records written straight through the audit's writer, across rotations and up to a
    full current file, are a chain `audit verify` accepts whole."""
    run_cli("allowlist", "add", "api.github.com")  # a record the CLI wrote first
    filled = fill(home.audit_dir, 10_000, full_current=True, rotate_bytes=ROTATE)

    assert filled.records >= 10_000
    assert len(rotated_files(home.audit_dir)) >= 3
    size = audit_file(home.audit_dir).stat().st_size
    assert ROTATE - 2048 < size < ROTATE  # full: one more batch would have rotated it
    result = run_cli("audit", "verify", "--json")
    verdict = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdict["ok"] is True
    assert verdict["records"] >= filled.records + 1


def test_filled_records_continue_a_chain_a_proxy_writes_after(home: Paths, run_cli: RunCli) -> None:
    """Writing on after the filler (as the CLI does next) keeps the chain whole."""
    fill(home.audit_dir, 500, rotate_bytes=ROTATE)
    run_cli("allowlist", "add", "api.github.com")
    last = audit_file(home.audit_dir).read_bytes().splitlines()[-1]

    assert json.loads(last)["event"] == "config"
    assert run_cli("audit", "verify").returncode == 0


def test_peak_rss_is_that_childs_own(tmp_path: Path) -> None:
    """A big child then a small one, measured from a parent that holds 300 MB itself: each
    peak is the child's own. Linux counts the memory of the process a child was forked
    from into its ru_maxrss, and RUSAGE_CHILDREN is the largest of all children."""
    env = dict(os.environ)
    held = bytearray(300 << 20)
    held[:: 1 << 12] = b"x" * len(held[:: 1 << 12])  # touched: resident, not just reserved
    grow = "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"
    big = measured([sys.executable, "-c", grow], env, tmp_path / "big.out")
    small = measured([sys.executable, "-c", "pass"], env, tmp_path / "small.out")
    del held

    assert big["exit"] == 0 and small["exit"] == 0
    assert 200 <= big["peak_rss_mb"] < 300
    assert small["peak_rss_mb"] < 100


def test_blindkey_measured_runs_the_cli(home: Paths, tmp_path: Path) -> None:
    env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir)}
    result = blindkey_measured(env, tmp_path / "v.out", "audit", "verify", "--json")

    assert result["exit"] == 0
    assert result["command"] == "blindkey audit verify --json"
    assert json.loads((tmp_path / "v.out").read_text())["ok"] is True
    assert 0 < result["peak_rss_mb"] < 500


def scale_result(first_call_s: float, verify_exit: int) -> dict[str, object]:
    tool = {"exit": 0, "wall_s": 0.2, "peak_rss_mb": 40.0, "command": "blindkey x"}
    call = {"seconds": first_call_s, "status": 200}
    return {
        "allowlist": {
            "connections": 32,
            "rps": {"allowlist_10": 4000.0, "allowlist_1000": 3900.0, "allowlist_10000": 3000.0},
            "ratio_largest_to_smallest": 0.75,
            "errors": 0,
        },
        "secrets": {
            "secrets": 10000,
            "import_s": 100.0,
            "start_s": 0.9,
            "first_call_after_start": call,
            "first_call_after_change": call,
            "next_call": call,
            "proxy_peak_rss_mb": 120.0,
            "broker_rss_mb": 40.0,
        },
        "audit": {
            "filled": {"records": 1_000_000, "current_file_mb": 63.9, "files": 9, "seconds": 40},
            "tools": {
                "verify": {**tool, "exit": verify_exit},
                "logs_last_10": tool,
                "report": tool,
            },
            "verify_ok": verify_exit == 0,
            "verify_records": 1_000_000,
            "start_fresh": {"start_s": 0.5, "proxy_peak_rss_mb": 50.0},
            "start_full_current": {"start_s": 0.7, "proxy_peak_rss_mb": 55.0},
        },
    }


def test_each_row_has_its_target_and_mark() -> None:
    scale = scale_result(first_call_s=4.0, verify_exit=1)
    scale["targets"] = checks = scale_report.targets(scale)
    by_name = {c["target"]: c for c in checks}

    assert by_name["req/s, 10000 entries / 10 entries"]["met"] is False  # 0.75 < 0.8
    assert by_name["10,000 secrets: first call after a change"]["met"] is False
    assert by_name["10,000 secrets: proxy peak RSS"]["met"] is True
    # Under its memory target, but a verify that failed is no pass.
    assert by_name["`audit verify` over 1,000,000 records: peak RSS"]["met"] is False
    assert by_name["`proxy start` over a 63.9 MB current audit file"]["met"] is True
    table = scale_report.render(scale)
    assert "| 10,000 secrets: first call after a change | 4 s | < 0.5 s | **miss** |" in table
    assert "| 10,000 secrets: proxy peak RSS | 120 MB | < 150 MB | pass |" in table


def test_a_row_that_could_not_run_is_a_miss() -> None:
    scale: dict[str, object] = {"secrets": {"failed": "import timed out"}}
    checks = scale_report.targets(scale)

    assert [c["met"] for c in checks] == [False]
    scale["targets"] = checks
    assert "secrets rows could not run: import timed out" in scale_report.render(scale)


def test_a_call_without_an_answer_is_a_miss_that_says_so() -> None:
    scale = scale_result(first_call_s=0.1, verify_exit=0)
    secrets = scale["secrets"]
    assert isinstance(secrets, dict)
    secrets["first_call_after_change"] = {"seconds": 300.0, "status": 0}
    by_name = {c["target"]: c for c in scale_report.targets(scale)}

    assert by_name["10,000 secrets: first call after a change (no answer)"]["met"] is False
    assert by_name["10,000 secrets: first call after `proxy start`"]["met"] is True
