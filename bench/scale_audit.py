"""The audit at scale: the audit tools' peak memory over a million records, and `proxy start`
over a full current audit file.

Each tool runs as a user runs it, a `blindkey` subprocess; its peak RSS is the kernel's own
count for that one process (wait4's ru_maxrss, taken by bench/peak.py), so a short peak
between two samples is not missed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from bench.audit_fill import fill
from bench.blindkey import CLI_MODULE, Home, make_values
from bench.tools import ROOT, BenchError, cpu_seconds, hwm_mb, log
from blindkey.config.paths import resolve_paths

TOOL_TIMEOUT = 600.0


def blindkey_measured(env: dict[str, str], out: Path, *args: str) -> dict[str, Any]:
    """`blindkey ARGS`, measured: see `measured`."""
    result = measured([sys.executable, "-m", CLI_MODULE, *args], env, out)
    result["command"] = f"blindkey {' '.join(args)}"
    return result


def measured(command: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    """`command` to its end, its output in `out` (and .err): exit status, wall seconds,
    and the peak RSS in MB of that command alone, through bench/peak.py (neither the
    bench's own memory nor the largest of its other children, as RUSAGE_CHILDREN says)."""
    report = out.with_suffix(".peak.json")
    with out.open("wb") as sink, out.with_suffix(".err").open("wb") as errors:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.peak", str(report), *command],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=errors,
            start_new_session=True,  # a timeout ends the command too, not only bench.peak
        )
        try:
            child.wait(TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise BenchError(f"{' '.join(command)} ran over {TOOL_TIMEOUT:.0f} s") from None
    try:
        result = json.loads(report.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{' '.join(command)}: no peak measured ({exc})") from None
    return {
        "exit": result["exit"],
        "wall_s": round(result["wall_s"], 3),
        "cpu_s": round(result.get("cpu_s", 0.0), 3),
        "peak_rss_mb": round(result["maxrss_kib"] / 1024, 1),
    }


def _call(home: Home, port: int, upstream: str) -> int:
    headers = home.headers(f"{upstream}/small")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/proxy", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()
        return int(answer.status)


def _start(home: Home) -> dict[str, Any]:
    """`proxy start` to healthy, and the proxy's peak RSS on the way (its VmHWM)."""
    running, seconds = home.start()
    return {
        "start_s": round(seconds, 3),
        "proxy_peak_rss_mb": round(hwm_mb(running.pid), 1),
        # What the start cost the proxy itself (wall time counts the machine's other load).
        "proxy_cpu_s": round(cpu_seconds([running.pid]), 3),
    }


def audit_rows(work: Path, upstream_port: int, records: int) -> dict[str, Any]:
    """A home that answered calls, then `records` more records and a full current file."""
    upstream = f"http://127.0.0.1:{upstream_port}"
    home = Home.create(work / "scale-audit", [upstream_port], make_values(5), route=False)
    audit_dir = resolve_paths(home.env).audit_dir
    try:
        fresh = _start(home)
        # A proxy that has answered a call: the broker's anchor and the flags' seen-file exist.
        status = _call(home, home.status().port, upstream)
        home.stop()
        # The same command over a few records: what Python's start and imports cost here.
        baseline = blindkey_measured(home.env, work / "logs0.out", "proxy", "logs", "--last", "10")
        log(f"audit: writing {records:,} chained records, then a full current file")
        filled = fill(audit_dir, records, full_current=True)
        log(f"audit: {filled.records:,} records in {filled.seconds:.0f} s; the tools over them")
        tools = {
            "verify": blindkey_measured(home.env, work / "verify.out", "audit", "verify", "--json"),
            "logs_last_10": blindkey_measured(
                home.env, work / "logs.out", "proxy", "logs", "--last", "10"
            ),
            "report": blindkey_measured(
                home.env, work / "report.out", "audit", "report", "--html", str(work / "r.html")
            ),
        }
        verdict = _verdict(work / "verify.out")
        full = _start(home)
        after = _call(home, home.status().port, upstream)
    finally:
        home.stop()
    result = {
        "filled": filled.as_json(),
        "tools": tools,
        "logs_last_10_fresh": baseline,
        "verify_ok": verdict.get("ok") is True and verdict.get("records", 0) >= records,
        "verify_records": verdict.get("records"),
        "start_fresh": fresh,
        "start_full_current": full,
        "calls_status": [status, after],
    }
    shutil.rmtree(home.path, ignore_errors=True)  # half a gigabyte
    return result


def _verdict(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as exc:
        raise BenchError(f"`audit verify --json` printed no verdict: {exc}") from None
    if not isinstance(value, dict):
        raise BenchError(f"`audit verify --json` printed {value!r}")
    return value
