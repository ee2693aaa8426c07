"""`make bench`: blindkey side by side with the upstream, nginx and a bare aiohttp forwarder.

Everything runs on loopback in one go, interleaved round by round, so every ratio compares
runs made seconds apart on the same (shared, noisy) machine; then the scale rows
(bench/scale.py: allowlist size, 10,000 secrets, a million audit records). Results are
printed as Markdown tables and written to bench/results/bench-<UTC time>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench import (
    phases,
    proxy_mode,
    redaction,
    report,
    report_tables,
    rules,
    scale,
    scale_report,
    ship,
)
from bench.harness import Bench
from bench.tools import (
    RESULTS,
    ROOT,
    BenchError,
    OutOfTime,
    busy_percent,
    ensure_tools,
    log,
    machine,
    raise_fd_limit,
    tool_version,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark blindkey against the upstream, nginx and a minimal aiohttp "
        "forwarder on loopback; installs wrk, nginx and curl with apt-get when missing.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--sse-events", type=int, default=300, help="SSE events per path")
    parser.add_argument("--sse-interval-ms", type=float, default=5.0)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the big body")
    parser.add_argument("--idle", type=int, default=1000, help="idle keep-alive connections")
    parser.add_argument("--profile-seconds", type=float, default=6.0)
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy")
    parser.add_argument(
        "--budget",
        type=float,
        help="abort after this many seconds (default 480 for the main rows, 1,800 for the "
        "scale rows; --quick: 480 and 420)",
    )
    parser.add_argument(
        "--only",
        choices=("main", "scale", "rules"),
        help="run only these rows: `scale` is the allowlist, secrets and audit size rows "
        "(issue 24), `rules` the policy-per-request rows (issue 28), `main` all but scale",
    )
    parser.add_argument(
        "--scale-secrets", type=int, help="secrets of the scale rows (10,000; --quick 1,000)"
    )
    parser.add_argument(
        "--scale-records",
        type=int,
        help="audit records the scale rows run the audit tools over (1,000,000; --quick 100,000)",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run blindkey at commit REV beside this checkout (at 1 and 32 "
        "connections, same rounds) and report this build's cost against it",
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s runs: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.sse_events, args.big_mib = 1, 2.0, 100, 256
        args.idle, args.profile_seconds = 300, 3.0
    if args.scale_secrets is None:
        args.scale_secrets = 1_000 if args.quick else 10_000
    if args.scale_records is None:
        args.scale_records = 100_000 if args.quick else 1_000_000
    # The scale rows' own cost: importing 10,000 secrets took two to five minutes, writing
    # and reading a million audit records about six.
    # What the scale rows are likely to need, kept free of the main rows' retries (harness).
    args.scale_budget = 0.0 if args.only in ("main", "rules") else 420.0 if args.quick else 1800.0
    if args.budget is None:
        args.budget = (0.0 if args.only == "scale" else 480.0) + args.scale_budget
    return args


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime("the time budget ran out; stopping everything")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    tools = ensure_tools()
    raise_fd_limit()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(args.budget))
    work = Path(tempfile.mkdtemp(prefix="bk-bench-", dir="/var/tmp"))
    bench = Bench(args, tools, work)
    out: dict[str, Any] = bench.out
    out["machine"] = machine()
    out["machine"]["cpu_busy_before_start_pct"] = busy = busy_percent()
    if busy > 15:
        log(f"the machine is already {busy}% busy: expect noisy absolute figures")
    out["versions"] = {
        "wrk": tool_version([tools["wrk"], "-v"]),
        "nginx": tool_version([tools["nginx"], "-v"]),
    }
    out["settings"] = {k: v for k, v in vars(args).items() if k not in ("budget", "scale_budget")}
    out["code"] = code_state()
    failure: str | None = None
    try:
        if args.only == "rules":
            rules.alone(bench)
        if args.only in (None, "main"):
            main_rows(bench)
        if args.only in (None, "scale"):
            scale.scale(bench)
    except (BenchError, OSError) as exc:
        failure = str(exc)
        log(f"FAILED: {failure}")
    finally:
        signal.alarm(0)
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    out["elapsed_s"] = round(time.monotonic() - began, 1)
    out["loadavg_at_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    if failure:
        out["failure"] = failure
    return finish(out)


def main_rows(bench: Bench) -> None:
    """Everything but the scale rows: blindkey beside the others, then on its own."""
    out = bench.out
    bench.start_all()
    bench.preflight()
    phases.load_matrix(bench)
    rules.compare(bench)  # issue 28: the same proxy with rules on its secret, side by side
    phases.sse(bench)
    phases.big(bench)
    phases.idle_connections(bench)
    phases.long_values(bench)
    out["redaction_mib_s"] = redaction.rates()
    out["proxy_mode"] = proxy_mode.from_bench(bench)
    ship.ship(bench)
    phases.run_profile(bench)
    time.sleep(1.0)
    out["idle_rss_mb"]["after_load"] = bench.idle_rss(bench.blindkey)


def code_state() -> dict[str, object]:
    """The commit measured, and which of blindkey's files differed from it."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10
        )
        return result.stdout

    status = git(
        "status",
        "--porcelain",
        "--",
        "proxy",
        "broker",
        "audit",
        "config",
        "redact",
        "cli",
        "service",
    )
    changed = [line[3:] for line in status.splitlines() if len(line) > 3]
    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return {"commit": commit, "uncommitted": changed}


def finish(out: dict[str, Any]) -> int:
    out["summary"] = {"load": report.summarise_load(out.get("load", {}))}
    out["targets"] = report.targets(out) + ship.targets(out) if "load" in out else []
    if "scale" in out:
        out["scale"]["targets"] = scale_report.targets(out["scale"])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    tables = [report_tables.render(out)] if "load" in out else []
    if "scale" in out:
        tables.append(scale_report.render(out["scale"]))
    table = "\n\n".join(tables) or "(no results)"
    m = out["machine"]
    code = out["code"]
    dirty = f" + {len(code['uncommitted'])} uncommitted files" if code["uncommitted"] else ""
    header = (
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}; CPUs {m['cpu_busy_before_start_pct']}% busy before start, "
        f"load average at start {m['loadavg_at_start']}, at end "
        f"{out.get('loadavg_at_end', '?')}; {out['versions']['nginx']}; "
        f"{out['versions']['wrk'].split(' Copyright')[0]}; blindkey {code['commit']}{dirty}"
    )
    (RESULTS / f"bench-{stamp}.md").write_text(f"{header}\n\n{table}\n")
    print(header)
    print()
    print(table)
    print()
    print(f"written: {json_path.relative_to(ROOT)} (and .md); elapsed {out['elapsed_s']} s")
    return 1 if "failure" in out else 0


if __name__ == "__main__":
    raise SystemExit(main())
