"""The cost of policy per request (issue 28): req/s at 32 connections of the same proxy
with rules on its secret beside the bench's own proxy without them, round by round, as
the --against row does (the median of per-round ratios). Two rule sets: methods and paths
(the proxy keeps the broker's answer per method and path), and the same with a rate (the
proxy spends calls the broker leases it: one socket round trip per lease, not per call;
broker/leases.py).

The rate is far above what the bench can send, so every call is allowed: what is measured
is deciding, not refusing.
"""

from __future__ import annotations

import statistics
from typing import Any

import tomlkit

from bench.blindkey import INJECTED
from bench.harness import Bench
from bench.tools import BenchError, log
from bench.wrk import write_script

CONNECTIONS = 32
PATHS: dict[str, Any] = {"methods": ["GET"], "paths": ["/small", "/repos/acme/**"]}
RULE_SETS: dict[str, dict[str, Any]] = {
    "blindkey_paths": PATHS,
    "blindkey_rules": {**PATHS, "rate": "100000000/s"},
}


def compare(bench: Bench) -> None:
    """A proxy per rule set on the injected secret, each measured beside the bench's own."""
    names = [name for name, rules in RULE_SETS.items() if _start(bench, name, rules)]
    if not names:
        return
    runs: dict[str, list[dict[str, Any]]] = {"blindkey": [], **{n: [] for n in names}}
    for name in names:
        bench.wrk(name, CONNECTIONS, 1)  # warm-up
    for round_no in range(bench.args.rounds):
        order = list(runs)[round_no % len(runs) :] + list(runs)[: round_no % len(runs)]
        for target in order:
            result = bench.quiet_wrk(target, CONNECTIONS, bench.args.duration)
            runs[target].append(result.as_json())
            log(f"rules round {round_no + 1} {target:<15} {result.rps:>8,.0f} req/s "
                f"p50 {result.latency_us['p50']:>7,.0f} us")  # fmt: skip
    bench.out["rules"] = {n: summarise(runs, n) for n in names}


def alone(bench: Bench) -> None:
    """`--only rules`: the bench's own proxy and upstreams, then these rows and no other."""
    bench.start_all()
    bench.preflight()
    compare(bench)


def _start(bench: Bench, name: str, rules: dict[str, Any]) -> bool:
    home = bench.home.copy(bench.work / f"home-{name}")
    bench.homes.append(home)
    config = home.path / "config.toml"
    document = tomlkit.parse(config.read_text())
    secrets = document.setdefault("secrets", tomlkit.table(is_super_table=True))
    table = secrets.setdefault(INJECTED, tomlkit.table())
    for key, value in rules.items():
        table[key] = value
    config.write_text(tomlkit.dumps(document))
    try:
        running = home.launch(audit_fsync=True)
    except BenchError as exc:
        log(f"no {name} row: {exc}")
        return False
    bench.running.append(running)
    bench.urls[name] = running.url
    bench.headers[name] = bench.headers["blindkey"]
    bench.scripts[name] = write_script(bench.work / f"{name}.lua", bench.headers[name])
    bench.cpu_pids[name] = {"proxy": [running.pid], "broker": [running.broker_pid]}
    return True


def summarise(runs: dict[str, list[dict[str, Any]]], name: str) -> dict[str, Any]:
    ratios = [
        with_rules["rps"] / without["rps"]
        for without, with_rules in zip(runs["blindkey"], runs[name], strict=True)
        if without["rps"]
    ]
    cpu = {k: [r["cpu_us_per_request"] for r in runs[k] if r["cpu_us_per_request"]]
           for k in ("blindkey", name)}  # fmt: skip
    return {
        "connections": CONNECTIONS,
        "rules": RULE_SETS[name],
        "rps": {k: statistics.median(r["rps"] for r in runs[k]) for k in ("blindkey", name)},
        "cpu_us_per_request": {k: statistics.median(v) if v else None for k, v in cpu.items()},
        "rules_vs_none": round(statistics.median(ratios), 3) if ratios else None,
        "runs": {k: runs[k] for k in ("blindkey", name)},
    }


def table_lines(report: dict[str, Any]) -> list[str]:
    """The Markdown rows of bench/report_tables.py."""
    lines = []
    for name, row in (report.get("rules") or {}).items():
        what = ", ".join(row["rules"])
        with_rules, without = row["rps"][name], row["rps"]["blindkey"]
        lines.append(
            f"| req/s @{row['connections']}, rules on the secret ({what}) / none | "
            f"{with_rules:,.0f} / {without:,.0f} ({row['rules_vs_none']}x) |"
        )
    return lines
