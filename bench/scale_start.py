"""`proxy start` to healthy over a full 64 MB current audit file, alone and repeatable:
`python -m bench.scale_start [--runs N] [--work DIR] [--out FILE]`.

A home with five secrets and an agent is started once, then its current audit file is
filled to the size at which it rotates (bench/audit_fill.py) and kept aside with the
broker's anchor: the first record a start writes rotates that file, so each of the N runs
of `proxy start --port 0` and `proxy stop` begins from the full file put back. Per start: wall seconds until the command returned
(healthy), and the CPU seconds of each process (the command; the daemon and its broker,
read from /proc once it serves). The load average before and after says whether another
tenant shared the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.audit_fill import fill
from bench.blindkey import CLI_MODULE, Home, make_values
from bench.tools import cpu_seconds
from blindkey.config.paths import resolve_paths

FILL_RECORDS = 10_000  # then topped up until the current file is full


ANCHOR = "audit-anchor.json"  # the broker's record of the chain's head, beside the audit


def prepared(work: Path) -> Home:
    home, kept = Home(work / "home"), work / "full"
    if not kept.exists():
        home = Home.create(work, [], make_values(5), route=False)
        home.start()
        home.stop()
        audit_dir = resolve_paths(home.env).audit_dir
        fill(audit_dir, FILL_RECORDS, full_current=True)
        shutil.copytree(audit_dir, kept / "audit")
        shutil.copy2(home.path / ANCHOR, kept / ANCHOR)
    return home


def put_back(home: Home, kept: Path) -> float:
    """The full current file and the anchor as they were after the fill; its size in MB."""
    audit_dir = resolve_paths(home.env).audit_dir
    shutil.rmtree(audit_dir)
    shutil.copytree(kept / "audit", audit_dir)
    shutil.copy2(kept / ANCHOR, home.path / ANCHOR)
    return (audit_dir / "audit.jsonl").stat().st_size / 2**20


def one_start(home: Home, kept: Path) -> dict[str, float]:
    current_mb = put_back(home, kept)
    env = home.env
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", CLI_MODULE, "proxy", "start", "--port", "0"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = home.status()
    row = {
        "current_audit_mb": round(current_mb, 1),
        "wall_s": round(wall, 3),
        "cli_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3),
        "proxy_cpu_s": round(cpu_seconds([running.pid]), 3),
        "broker_cpu_s": round(cpu_seconds([running.broker_pid]), 3),
    }
    home.stop()
    return row


def measure(home: Home, kept: Path, runs: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    rows = [one_start(home, kept) for _ in range(runs)]
    medians = {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}
    return {
        "runs": rows,
        "median": medians,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_start")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("/tmp/blindkey-bench-start"))
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args()
    result = measure(prepared(args.work), args.work / "full", args.runs)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
