"""The scale rows (issue 24): how blindkey's cost grows with the allowlist, the number of
secrets and the size of the audit. `--only scale` runs these alone; `--quick` runs a
smaller form (fewer secrets and records, one round).

- req/s at 32 connections with 10, 1,000 and 10,000 allowlist entries: three proxies run
  side by side, interleaved round by round like the load matrix, the target's own entry
  last in each list (an entry-by-entry match pays for every entry before it);
- 10,000 secrets (`secrets import`): the first call after `proxy start` (the first start:
  the matcher is compiled), the first after a change (`secrets set` of one more, then a
  call that injects it: it can only succeed once the proxy has the change), the first
  after a restart (the matcher read back from its sealed cache), and the proxy's peak RSS;
- the audit: see bench/scale_audit.py.
"""

from __future__ import annotations

import secrets
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from bench import nginx, scale_audit
from bench.blindkey import Home, cli, make_values
from bench.harness import Bench
from bench.phases import in_turn
from bench.tools import BenchError, OutOfTime, hwm_mb, log, rss_mb
from bench.wrk import write_script

ALLOWLIST_SIZES = (10, 1_000, 10_000)
CONNECTIONS = 32
CHANGED = "SCALE_CHANGED"
# A first call that builds a matcher for 10,000 values took 25 s, and 61 s on a machine other
# tenants kept busy: past this, the call is a miss that says so, not a row that failed.
CALL_TIMEOUT = 300.0


def scale(bench: Bench) -> None:
    args = bench.args
    port = _upstream(bench)
    out: dict[str, Any] = {
        "secrets_count": args.scale_secrets,
        "records": args.scale_records,
    }
    bench.out["scale"] = out
    # Noisy allowlist runs may be repeated within the first part of the scale rows' budget.
    bench.retry_until = time.monotonic() + args.scale_budget * 0.15
    rows: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("allowlist", lambda: allowlist_rows(bench, port)),
        ("secrets", lambda: secrets_rows(bench, port)),
        ("audit", lambda: scale_audit.audit_rows(bench.work, port, args.scale_records)),
    ]
    for key, row in rows:
        try:
            out[key] = row()
        except OutOfTime:
            raise
        except (BenchError, OSError, urllib.error.URLError) as exc:
            # One row that cannot run leaves the others to measure.
            log(f"scale {key}: FAILED: {exc}")
            out[key] = {"failed": str(exc)}


def _upstream(bench: Bench) -> int:
    """The small-answer nginx of the load runs; started here under `--only scale`."""
    port = getattr(bench, "small_port", None)
    if isinstance(port, int):
        return port
    service, port = nginx.start_upstream(bench.tools["nginx"], bench.work / "nginx")
    bench.services.append(service)
    bench.small_port = port
    return port


def fillers(count: int) -> list[str]:
    """Allowlist entries the bench's calls never match: exact hosts and wildcards alike."""
    return [
        f"api-{i}.bench-scale.example" if i % 2 else f"*.svc{i}.bench-scale.example"
        for i in range(count)
    ]


def allowlist_rows(bench: Bench, port: int) -> dict[str, Any]:
    upstream = f"http://127.0.0.1:{port}"
    log(f"allowlist: proxies with {', '.join(f'{n:,}' for n in ALLOWLIST_SIZES)} entries")
    base = Home.create(bench.work / "scale-allow", [], make_values(5), route=False, bulk=True)
    homes: dict[str, Home] = {}
    started = []
    for size in ALLOWLIST_SIZES:
        name = f"allowlist_{size}"
        home = base.copy(bench.work / f"scale-allow-{size}")
        if size > 1:
            cli(home.env, "allowlist", "add", *fillers(size - 1))
        cli(home.env, "allowlist", "add", upstream)
        homes[name] = home
        bench.homes.append(home)
        running, _ = home.start()
        bench.running.append(running)
        started.append(running)
        bench.urls[name] = running.url
        bench.headers[name] = home.headers(f"{upstream}/small")
        bench.scripts[name] = write_script(bench.work / f"{name}.lua", bench.headers[name])
        bench.cpu_pids[name] = {"proxy": [running.pid], "broker": [running.broker_pid]}
    try:
        bench.preflight()
        runs = _rounds(bench, list(homes))
    finally:
        for name, home in homes.items():
            home.stop()
            for table in (bench.urls, bench.headers, bench.scripts, bench.cpu_pids):
                table.pop(name, None)
        bench.running = [r for r in bench.running if r not in started]
    rps = {name: [r["rps"] for r in done] for name, done in runs.items()}
    cpu = {name: [r["cpu_us_per_request"] or 0.0 for r in done] for name, done in runs.items()}
    low, high = f"allowlist_{ALLOWLIST_SIZES[0]}", f"allowlist_{ALLOWLIST_SIZES[-1]}"
    ratios = [h / lo for h, lo in zip(rps[high], rps[low], strict=True) if lo]
    return {
        "connections": CONNECTIONS,
        "rps": {name: round(statistics.median(v), 1) for name, v in rps.items()},
        # Proxy and broker CPU per call: what other tenants take moves it far less than req/s.
        "cpu_us_per_request": {name: round(statistics.median(v), 1) for name, v in cpu.items()},
        "ratio_largest_to_smallest": round(statistics.median(ratios), 3) if ratios else None,
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None,
        "errors": sum(r["error_count"] for done in runs.values() for r in done),
        "runs": runs,
    }


def _rounds(bench: Bench, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_no in range(bench.args.rounds):
        for name in in_turn(names, round_no):
            result = bench.quiet_wrk(name, CONNECTIONS, bench.args.duration)
            run = result.as_json()
            run["error_count"] = result.error_count
            runs[name].append(run)
            log(
                f"scale round {round_no + 1}/{bench.args.rounds} {name:<16} "
                f"{result.rps:>8,.0f} req/s  p50 {result.latency_us['p50']:>7,.0f} us  "
                f"errors {result.error_count}"
            )
    return runs


def scale_values(count: int) -> dict[str, str]:
    """API-key-like values, all distinct: each is a pattern the redactor must find."""
    return {f"SCALE_{i:05d}": f"sk-scale{i:05d}-{secrets.token_urlsafe(30)}" for i in range(count)}


def secrets_rows(bench: Bench, port: int) -> dict[str, Any]:
    count = bench.args.scale_secrets
    upstream = f"http://127.0.0.1:{port}"
    home = Home.create(bench.work / "scale-secrets", [port], {}, route=False)
    bench.homes.append(home)
    log(f"secrets: `secrets import` of {count:,} values")
    imported_s = home.import_values(scale_values(count))
    try:
        running, start_s = home.start()
        first = _timed_call(home, running.url, upstream, "SCALE_00042")
        after_start = _rss(running.pid)
        log(f"secrets: first call after start {first['seconds']:.2f} s; now a change")
        cli(home.env, "secrets", "set", CHANGED, stdin=f"sk-changed-{secrets.token_urlsafe(30)}")
        changed = _timed_call(home, running.url, upstream, CHANGED)
        warm = _timed_call(home, running.url, upstream, CHANGED)
        after_change = _rss(running.pid)
        broker = round(rss_mb(running.broker_pid), 1)
        # A start that finds the matcher sealed on disk (redact/cache.py): decrypted, not
        # compiled. The first start above had none: it compiled, then sealed it.
        home.stop()
        running, restart_s = home.start()
        restarted = _timed_call(home, running.url, upstream, "SCALE_00042")
        after_restart = _rss(running.pid)
    finally:
        home.stop()
    return {
        "secrets": count,
        "import_s": round(imported_s, 1),
        "start_s": round(start_s, 3),
        "first_call_after_start": first,
        "first_call_after_change": changed,
        "next_call": warm,
        "restart_s": round(restart_s, 3),
        "first_call_after_restart": restarted,
        "proxy_rss_mb_after_restart_call": after_restart,
        "proxy_rss_mb_after_start_call": after_start,
        "proxy_rss_mb_after_change_call": after_change,
        "proxy_peak_rss_mb": max(after_start["peak"], after_change["peak"], after_restart["peak"]),
        "broker_rss_mb": broker,
    }


def _rss(pid: int) -> dict[str, float]:
    return {"now": round(rss_mb(pid), 1), "peak": round(hwm_mb(pid), 1)}


def _timed_call(home: Home, proxy_url: str, upstream: str, secret: str) -> dict[str, Any]:
    headers = {**home.headers(f"{upstream}/small"), "X-AS-Inject-Bearer": secret}
    request = urllib.request.Request(proxy_url, headers=headers)
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT) as answer:
            answer.read()
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except TimeoutError:
        status = 0  # no answer within CALL_TIMEOUT
    return {"seconds": round(time.perf_counter() - began, 3), "status": status}
