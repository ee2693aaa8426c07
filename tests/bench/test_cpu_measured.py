"""The scale rows give each command's own CPU time beside its wall time: on this shared
machine the wall time of `proxy logs --last 10` or `proxy start` also counts the other
tenants' load, and only the CPU time says what the command cost."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench import scale_report
from bench.blindkey import Home
from bench.scale_audit import measured
from tests.bench.test_scale import scale_result

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"


def test_cpu_is_the_commands_own_and_not_its_wall(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    busy = measured([sys.executable, "-c", BURN], env, tmp_path / "busy.out")
    idle = measured([sys.executable, "-c", "import time; time.sleep(0.4)"], env, tmp_path / "i")
    assert busy["cpu_s"] >= 0.25
    assert idle["wall_s"] >= 0.4 and idle["cpu_s"] < 0.25


def test_the_notes_show_cpu_beside_wall() -> None:
    result: dict[str, Any] = scale_result(0.3, 0)
    audit = result["audit"]
    audit["tools"]["logs_last_10"] = {**audit["tools"]["logs_last_10"], "cpu_s": 0.15}
    audit["start_full_current"] = {**audit["start_full_current"], "proxy_cpu_s": 0.8}
    text = scale_report.render(result)
    assert "blindkey x 0.2 s (0.15 s CPU)" in text
    assert "0.7 s (0.8 s of proxy CPU)" in text


def test_commands_run_from_bytecode_as_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert "PYTHONDONTWRITEBYTECODE" not in Home(tmp_path).env
