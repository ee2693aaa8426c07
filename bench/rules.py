"""The cost of policy per request (issue 28): req/s at 32 connections of the same proxy
with rules on its secret (methods, paths and a rate, which the broker decides on every
call since a counted call is never kept by the proxy) beside the bench's own proxy
without them, round by round, as the --against row does: the median of per-round ratios.

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
RULES = {"methods": ["GET"], "paths": ["/small", "/repos/acme/**"], "rate": "100000000/s"}


def compare(bench: Bench) -> None:
    """Start a second proxy whose config puts RULES on the injected secret; measure both."""
    home = bench.home.copy(bench.work / "home-rules")
    bench.homes.append(home)
    config = home.path / "config.toml"
    document = tomlkit.parse(config.read_text())
    secrets = document.setdefault("secrets", tomlkit.table(is_super_table=True))
    table = secrets.setdefault(INJECTED, tomlkit.table())
    for key, value in RULES.items():
        table[key] = value
    config.write_text(tomlkit.dumps(document))
    try:
        running = home.launch(audit_fsync=True)
    except BenchError as exc:
        log(f"no rules row: {exc}")
        bench.out["rules"] = {"skipped": str(exc)}
        return
    bench.running.append(running)
    name = "blindkey_rules"
    bench.urls[name] = running.url
    bench.headers[name] = bench.headers["blindkey"]
    bench.scripts[name] = write_script(bench.work / f"{name}.lua", bench.headers[name])
    bench.cpu_pids[name] = {"proxy": [running.pid], "broker": [running.broker_pid]}
    bench.wrk(name, CONNECTIONS, 1)  # warm-up
    runs: dict[str, list[dict[str, Any]]] = {"blindkey": [], name: []}
    for round_no in range(bench.args.rounds):
        order = ["blindkey", name] if round_no % 2 == 0 else [name, "blindkey"]
        for target in order:
            result = bench.quiet_wrk(target, CONNECTIONS, bench.args.duration)
            runs[target].append(result.as_json())
            log(f"rules round {round_no + 1} {target:<15} {result.rps:>8,.0f} req/s "
                f"p50 {result.latency_us['p50']:>7,.0f} us")  # fmt: skip
    bench.out["rules"] = summarise(runs, name)


def summarise(runs: dict[str, list[dict[str, Any]]], name: str) -> dict[str, Any]:
    ratios = [
        with_rules["rps"] / without["rps"]
        for without, with_rules in zip(runs["blindkey"], runs[name], strict=True)
        if without["rps"]
    ]
    return {
        "connections": CONNECTIONS,
        "rules": RULES,
        "rps": {k: statistics.median(r["rps"] for r in v) for k, v in runs.items()},
        "rules_vs_none": round(statistics.median(ratios), 3) if ratios else None,
        "runs": runs,
    }


def table_lines(report: dict[str, Any]) -> list[str]:
    """The Markdown row of bench/report_tables.py."""
    row = report.get("rules")
    if not row or "rps" not in row:
        return []
    with_rules, without = row["rps"]["blindkey_rules"], row["rps"]["blindkey"]
    return [
        f"| req/s @{row['connections']}, with rules on the secret (methods, paths, rate) / "
        f"without | {with_rules:,.0f} / {without:,.0f} ({row['rules_vs_none']}x) |"
    ]
