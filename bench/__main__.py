"""`make bench`: start-up time, idle memory, and requests through the proxy against direct.

Everything runs on loopback in one go, so the ratios compare like with like on a noisy,
shared machine. Results are printed as a table and written to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cli(env: dict[str, str], *args: str, stdin: str = "") -> str:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return result.stdout


async def load(url: str, headers: dict[str, str], total: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in counter:
                began = time.perf_counter()
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": total,
        "concurrency": concurrency,
        "rps": total / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="bk-bench-")
    env = {**os.environ, "BLINDKEY_HOME": home}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert upstream.stdout is not None
    upstream_port = int(upstream.stdout.readline().split()[1])
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    }
    try:
        cli(env, "init")
        cli(env, "allowlist", "add", f"http://127.0.0.1:{upstream_port}")
        for i in range(50):
            cli(env, "secrets", "set", f"BENCH_SECRET_{i}", stdin=os.urandom(24).hex())
        token = json.loads(cli(env, "agent", "add", "bench", "--json"))["token"]
        began = time.perf_counter()
        cli(env, "proxy", "start", "--port", "0")
        report["start_to_healthy_s"] = round(time.perf_counter() - began, 3)
        status = json.loads(cli(env, "proxy", "status", "--json"))
        time.sleep(1.0)
        report["idle_rss_mb"] = {
            "proxy": round(rss_mb(status["pid"]), 1),
            "broker": round(rss_mb(status["broker_pid"]), 1),
        }
        direct_url = f"http://127.0.0.1:{upstream_port}/small"
        proxy_url = f"http://127.0.0.1:{status['port']}/proxy"
        proxy_headers = {
            "X-AS-Agent-Token": token,
            "X-AS-Target-URL": direct_url,
            "X-AS-Inject-Bearer": "BENCH_SECRET_0",
        }
        runs = []
        for concurrency in (1, 32):
            direct = asyncio.run(
                load(direct_url, {"Authorization": "Bearer x"}, args.requests, concurrency)
            )
            proxied = asyncio.run(load(proxy_url, proxy_headers, args.requests, concurrency))
            runs.append(
                {
                    "concurrency": concurrency,
                    "direct": direct,
                    "blindkey": proxied,
                    "rps_ratio": round(proxied["rps"] / direct["rps"], 3),
                    "added_p50_ms": round(proxied["p50_ms"] - direct["p50_ms"], 3),
                }
            )
        report["load"] = runs
    finally:
        subprocess.run(
            [sys.executable, "-m", "proxy", "proxy", "stop"],
            env=env,
            check=False,
            capture_output=True,
            cwd=ROOT,
        )
        upstream.terminate()
        upstream.wait()
    print(f"machine: {report['machine']}")
    print(f"proxy start to healthy: {report['start_to_healthy_s']} s")
    print(
        f"idle RSS: proxy {report['idle_rss_mb']['proxy']} MB, broker {report['idle_rss_mb']['broker']} MB"
    )
    print(
        f"{'conc':>4} {'direct rps':>11} {'blindkey rps':>13} {'ratio':>6} "
        f"{'direct p50':>11} {'blindkey p50':>13} {'blindkey p99':>13}"
    )
    for run in report["load"]:
        print(
            f"{run['concurrency']:>4} {run['direct']['rps']:>11.0f} {run['blindkey']['rps']:>13.0f} "
            f"{run['rps_ratio']:>6.2f} {run['direct']['p50_ms']:>9.3f}ms {run['blindkey']['p50_ms']:>11.3f}ms "
            f"{run['blindkey']['p99_ms']:>11.3f}ms"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
