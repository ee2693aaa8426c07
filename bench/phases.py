"""The measurements, in the order `make bench` runs them, each filling part of `bench.out`.

Each takes the running `Bench`; rounds interleave the targets in a rotating order, so a
slow minute on this shared machine lands on every target alike.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import statistics
import time
import urllib.request
from typing import Any

from bench import idle, profile, report, streams
from bench.blindkey import INJECTED, MAX_CONNECTIONS, Home
from bench.harness import Bench
from bench.tools import RESULTS, ROOT, BenchError, Interference, RssSampler, log

CONNECTIONS = (1, 32, 256)
SSE_ROUNDS = 3
BIG_ROUNDS = 3
# Group commit hides the fsync under load; with one request in flight every record pays it.
FSYNC_COMPARED = (1, 32)
# --against REV: the budgets for a change are req/s at 32 and p50 at 1.
AGAINST_COMPARED = (1, 32)


def in_turn(names: list[str], round_no: int) -> list[str]:
    """The targets in an order rotated each round, so none always runs first or last."""
    shift = round_no % len(names)
    return names[shift:] + names[:shift]


def stream_request(bench: Bench, name: str, path: str) -> tuple[str, dict[str, str]]:
    """URL and headers that fetch `path` of the streaming upstream through `name`."""
    if name in ("direct", "nginx"):
        return f"{bench.stream_urls[name]}{path}", {}
    return bench.stream_urls[name], bench.home.headers(f"{bench.stream_urls['direct']}{path}")


def load_matrix(bench: Bench) -> None:
    args = bench.args
    log("warm-up: 1 s at 32 connections per target")
    for name in bench.urls:
        bench.wrk(name, 32, 1)
    load: dict[str, dict[str, list[dict[str, Any]]]] = {str(c): {} for c in CONNECTIONS}
    for round_no in range(1, args.rounds + 1):
        for connections in CONNECTIONS:
            names = [*report.TARGETS, *(["floor"] if "floor" in bench.urls else [])]
            if connections in FSYNC_COMPARED and "blindkey_nofsync" in bench.urls:
                names.append("blindkey_nofsync")
            if "blindkey_route" in bench.urls:
                names.append("blindkey_route")
            if connections in AGAINST_COMPARED and "blindkey_against" in bench.urls:
                names.append("blindkey_against")
            for name in in_turn(names, round_no - 1):
                result = bench.quiet_wrk(name, connections, args.duration)
                load[str(connections)].setdefault(name, []).append(result.as_json())
                log(
                    f"round {round_no}/{args.rounds} c={connections:<3} {name:<17} "
                    f"{result.rps:>8,.0f} req/s  p50 {result.latency_us['p50']:>7,.0f} us  "
                    f"p99 {result.latency_us['p99']:>7,.0f} us  errors {result.error_count}  "
                    f"others {result.foreign_pct}% steal {result.steal_pct}%"
                )
    bench.out["load"] = load


def sse(bench: Bench) -> None:
    args = bench.args
    path = f"/sse?{streams.sse_query(args.sse_events, args.sse_interval_ms)}"
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in report.TARGETS}
    names = list(report.TARGETS)
    for round_no in range(min(args.rounds, SSE_ROUNDS)):
        for name in in_turn(names, round_no):
            url, headers = stream_request(bench, name, path)
            gaps = streams.sse_delay(url, headers, args.sse_events, args.sse_interval_ms)
            rounds[name].append(gaps)
            log(
                f"SSE round {round_no + 1} {name:<9} gap p50 {gaps['p50_us']:>7,.0f} us  "
                f"p99 {gaps['p99_us']:>7,.0f} us"
            )
    summary = {
        name: {
            key: round(statistics.median(r[key] for r in runs), 1)
            for key in ("p50_us", "p90_us", "p99_us", "max_us")
        }
        for name, runs in rounds.items()
    }
    added = {
        name: {
            key: round(summary[name][f"{key}_us"] - summary["direct"][f"{key}_us"], 1)
            for key in ("p50", "p90", "p99")
        }
        for name in ("nginx", "forwarder", "blindkey")
    }
    bench.out["sse"] = {
        "events_per_round": args.sse_events,
        "interval_ms": args.sse_interval_ms,
        "gap_us": summary,
        "added_us": added,
        "rounds": rounds,
    }


def big(bench: Bench) -> None:
    mib = bench.args.big_mib
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in report.TARGETS}
    names = list(report.TARGETS)
    for round_no in range(min(bench.args.rounds, BIG_ROUNDS)):
        for name in in_turn(names, round_no):
            url, headers = stream_request(bench, name, f"/big?mib={mib}")
            with Interference(bench.own_pids()) as noise:
                run = streams.big_download(
                    bench.tools["curl"], url, headers, rss_pid=bench.rss_pid.get(name)
                )
            run["other_tenants_cpu_pct"] = noise.foreign_pct
            runs[name].append(run)
            log(
                f"{mib} MiB round {round_no + 1} {name:<9} {run['mib_per_s']:>7,.0f} MiB/s  "
                f"peak RSS {run['peak_rss_mb']} MB  others {noise.foreign_pct}%"
            )
    results: dict[str, Any] = {}
    for name, done in runs.items():
        peaks = [r["peak_rss_mb"] for r in done if r["peak_rss_mb"] is not None]
        befores = [r["rss_before_mb"] for r in done if r["rss_before_mb"] is not None]
        results[name] = {
            "bytes": done[0]["bytes"],
            "mib_per_s": round(statistics.median(r["mib_per_s"] for r in done), 1),
            "peak_rss_mb": max(peaks) if peaks else None,
            "rss_before_mb": min(befores) if befores else None,
            "runs": done,
        }
    expected = streams.expected_redacted_size(
        mib * streams.MIB, bench.values[INJECTED], INJECTED, mib
    )
    results["blindkey"]["redacted_as_expected"] = all(
        r["bytes"] == expected for r in runs["blindkey"]
    )
    results["size_mib"] = mib
    results["note"] = (
        f"{mib} MiB of base64 text; every MiB holds {INJECTED}'s value once, which blindkey "
        "replaces (50 secrets in its redactor); the forwarder and nginx pass it through"
    )
    bench.out["big"] = results


def idle_connections(bench: Bench) -> None:
    args = bench.args
    running = bench.blindkey
    log(f"{args.idle} idle keep-alive connections, then wrk at 256")
    sockets = idle.open_idle(running.port, args.idle)
    try:
        with RssSampler(running.pid) as sampler:
            result = bench.wrk("blindkey", 256, max(args.duration, 5.0))
        alive = idle.still_serving(sockets)
    finally:
        idle.close_all(sockets)
    bench.out["idle_connections"] = {
        "idle_connections": args.idle,
        "connections": 256,
        "rps": round(result.rps, 1),
        "errors": result.error_count,
        "error_detail": result.errors,
        "idle_still_serving": alive,
        "peak_rss_mb": round(sampler.peak_mb, 1),
        "max_connections_setting": MAX_CONNECTIONS,
    }


def run_profile(bench: Bench) -> None:
    py_spy = bench.tools.get("py-spy")
    if py_spy is None or bench.args.no_profile:
        bench.out["profile"] = {
            "skipped": "py-spy unavailable" if py_spy is None else "--no-profile"
        }
        return
    try:
        _profile(bench, py_spy)
    except BenchError as exc:  # e.g. ptrace refused to a non-root user
        log(f"no profile: {exc}")
        bench.out["profile"] = {"skipped": str(exc)}


def _profile(bench: Bench, py_spy: str) -> None:
    seconds = bench.args.profile_seconds
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw, svg = bench.work / "profile.raw", RESULTS / "profile.svg"
    log(f"py-spy on blindkey (pid {bench.blindkey.pid}) under wrk at 32, {2 * seconds:.0f} s")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        load = pool.submit(bench.wrk, "blindkey", 32, 2 * seconds + 3)
        time.sleep(1.0)
        profile.record(py_spy, bench.blindkey.pid, raw, seconds, "raw")
        profile.record(py_spy, bench.blindkey.pid, svg, seconds, "flamegraph")
        load.result()
    spots = profile.hot_spots(raw)
    (RESULTS / "profile.txt").write_text(raw.read_text())
    spots["flamegraph"] = str(svg.relative_to(ROOT))
    spots["raw"] = "bench/results/profile.txt"
    bench.out["profile"] = spots


LONG_VALUES = 50
LONG_VALUE_BYTES = 4096


def long_values(bench: Bench) -> None:
    """A second proxy holding 50 values of 4 KB (PEM-key size): its memory once the
    redactor for all of them is built, and the first call, which builds it."""
    log(f"{LONG_VALUES} secrets of {LONG_VALUE_BYTES} bytes: proxy RSS")
    values = {
        f"LONG_{i:02d}": secrets.token_urlsafe(LONG_VALUE_BYTES)[:LONG_VALUE_BYTES]
        for i in range(LONG_VALUES)
    }
    first = next(iter(values))
    home = Home.create(bench.work / "long", [bench.small_port], values)
    try:
        running, _ = home.start()
        before = bench.idle_rss(running)
        headers = {**home.headers(f"http://127.0.0.1:{bench.small_port}/small")}
        headers["X-AS-Inject-Bearer"] = first
        request = urllib.request.Request(running.url, headers=headers)
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as answer:
            status = answer.status
            answer.read()
        first_call_ms = (time.perf_counter() - began) * 1000
        after = bench.idle_rss(running)
    finally:
        home.stop()
    bench.out["long_values"] = {
        "secrets": LONG_VALUES,
        "value_bytes": LONG_VALUE_BYTES,
        "status": status,
        "first_call_ms": round(first_call_ms, 1),
        "rss_mb_before_first_call": before,
        "rss_mb_after_first_call": after,
    }
