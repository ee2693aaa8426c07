"""Proxy mode's cost: HTTPS through blindkey's local CA beside the same call through /proxy.

One nginx upstream over TLS (a trustme certificate) returns the small JSON; a secret is
bound to it. curl is the client on both sides, so the client's share is the same C code:
- `/proxy`: `X-AS-Target-URL: https://upstream/small`, keep-alive to the proxy;
- proxy mode: `--proxy http://agent:TOKEN@...` with the placeholder in `Authorization`,
  keep-alive inside one CONNECT tunnel (blindkey answers the TLS with a leaf of its CA);
- the handshake: each call on a new connection (`Connection: close`), in a new tunnel
  through proxy mode and on a new plain connection to /proxy; the difference is what a new
  CONNECT with its TLS handshake costs (the leaf is minted once per host, then cached).
Both sides inject the same value into the same upstream through blindkey's pooled client.
Interleaved round by round; `python -m bench.proxy_mode [--quick]` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import tomlkit
import trustme

from bench.blindkey import INJECTED, Home, cli, make_values, percentile
from bench.harness import Bench
from bench.nginx import COMMON
from bench.tools import BenchError, ensure_tools, free_port, log, wait_port
from bench.upstream import SMALL

Json = dict[str, Any]
GOAL = 1.3  # proxy mode's keep-alive cost, at most this many times /proxy's (issue 26)
CONCURRENCY = (1, 8)

TLS_SERVER = """\
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location = /small {{ default_type application/json; return 200 '{small}'; }}
  }}
"""


class Setup:
    """The TLS upstream, a blindkey home whose secret is bound to it, and curl's arguments."""

    def __init__(self, nginx: str, work: Path) -> None:
        self.services: list[subprocess.Popen[bytes]] = []
        self.home: Home | None = None
        ca = trustme.CA()
        self.upstream_ca = work / "upstream-ca.pem"
        ca.cert_pem.write_to_path(str(self.upstream_ca))
        leaf = ca.issue_cert("127.0.0.1")
        cert, key = work / "upstream.pem", work / "upstream.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        port = self.upstream_port = free_port()
        prefix = work / "nginx-tls"
        prefix.mkdir(parents=True)
        body = TLS_SERVER.format(port=port, cert=cert, key=key, small=SMALL.decode())
        config = prefix / "nginx.conf"
        # A root master hands its workers to `nobody`, who could not read the key.
        user = "user root;" if os.geteuid() == 0 else ""
        config.write_text(COMMON.format(user=user, prefix=prefix, body=body))
        quiet = subprocess.DEVNULL
        command = [nginx, "-p", str(prefix), "-c", str(config)]
        self.services.append(subprocess.Popen(command, stdin=quiet, stdout=quiet, stderr=quiet))
        try:
            wait_port(port)
        except BenchError:
            self.stop()
            raise
        self.target = f"https://127.0.0.1:{port}/small"

    def start_blindkey(self, work: Path) -> None:
        values = make_values(1)
        home = self.home = Home.create(work, [], values, route=False)
        origin = f"https://127.0.0.1:{self.upstream_port}"
        config = home.path / "config.toml"
        document = tomlkit.parse(config.read_text())
        document["proxy"]["ca_file"] = str(self.upstream_ca)
        document["allowlist"]["hosts"].append(origin)
        secrets = document.setdefault("secrets", tomlkit.table(is_super_table=True))
        bound = secrets.setdefault(INJECTED, tomlkit.table())
        bound["hosts"] = [origin]
        config.write_text(tomlkit.dumps(document))
        running, _ = home.start()
        self.proxy_port = running.port
        self.proxy_pid = running.pid
        self.placeholder = cli(home.env, "secrets", "placeholder", INJECTED).strip()
        self.ca_cert = home.path / "ca.pem"

    def curl_args(self, kind: str) -> tuple[list[str], str]:
        """curl's options and the URL it calls, for `/proxy` or proxy mode (`connect`)."""
        assert self.home is not None
        if kind == "proxy":
            headers = self.home.headers(self.target)
            options = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
            return options, f"http://127.0.0.1:{self.proxy_port}/proxy"
        proxy = f"http://agent:{self.home.token}@127.0.0.1:{self.proxy_port}"
        return [
            "--proxy", proxy, "--noproxy", "", "--cacert", str(self.ca_cert),
            "-H", f"Authorization: Bearer {self.placeholder}",
        ], self.target  # fmt: skip

    def stop(self) -> None:
        if self.home is not None:
            self.home.stop()
        for service in self.services:
            service.terminate()  # nginx's master stops its worker on the way out
            service.wait(10)


def _curl(setup: Setup, kind: str, calls: int, work: Path, *, fresh: bool) -> subprocess.Popen[str]:
    """One curl making `calls` calls: on one kept-alive connection, or each on a new one."""
    options, url = setup.curl_args(kind)
    if fresh:
        options += ["-H", "Connection: close"]
    with tempfile.NamedTemporaryFile("w", dir=work, suffix=".curl", delete=False) as listing:
        listing.write(f'url = "{url}"\noutput = "/dev/null"\n' * calls)
    return subprocess.Popen(
        ["curl", "-sS", *options, "-w", "%{time_total} %{num_connects} %{http_code}\\n",
         "-K", listing.name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def run(setup: Setup, kind: str, calls: int, clients: int, work: Path, *, fresh: bool) -> Json:
    """`clients` curls at once, `calls` in all: req/s over the wall time, p50 per call."""
    began = time.perf_counter()
    processes = [_curl(setup, kind, calls // clients, work, fresh=fresh) for _ in range(clients)]
    samples: list[float] = []
    connects = 0
    for process in processes:
        out, err = process.communicate(timeout=300)
        for line in out.splitlines():
            seconds, opened, status = line.split()
            if status != "200":
                raise BenchError(f"proxy mode bench: {kind} answered {status}: {err[-400:]}")
            samples.append(float(seconds) * 1e6)
            connects += int(opened)
    elapsed = time.perf_counter() - began
    samples.sort()
    return {
        "rps": round(len(samples) / elapsed),
        "p50_us": round(statistics.median(samples)),
        "p99_us": round(percentile(samples, 99)),
        "connections": connects,
    }


def _ratio(values: list[float]) -> Json:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}  # fmt: skip


def _rounds(setup: Setup, work: Path, rounds: int, calls: int) -> Json:
    """Interleaved: each round runs /proxy then proxy mode, kept alive and fresh."""
    raw: dict[str, list[Json]] = {}
    for _ in range(rounds):
        for clients in CONCURRENCY:
            for kind in ("proxy", "connect"):
                key = f"{kind}@{clients}"
                raw.setdefault(key, []).append(run(setup, kind, calls, clients, work, fresh=False))
        for kind in ("proxy", "connect"):
            raw.setdefault(f"{kind}_fresh", []).append(
                run(setup, kind, max(50, calls // 10), 1, work, fresh=True)
            )
    return raw


def summarise(raw: dict[str, list[Json]]) -> Json:
    out: Json = {"runs": raw}
    for clients in CONCURRENCY:
        pairs = list(zip(raw[f"proxy@{clients}"], raw[f"connect@{clients}"], strict=True))
        out[f"@{clients}"] = {
            "proxy_rps": statistics.median(p["rps"] for p, _ in pairs),
            "connect_rps": statistics.median(c["rps"] for _, c in pairs),
            "proxy_p50_us": statistics.median(p["p50_us"] for p, _ in pairs),
            "connect_p50_us": statistics.median(c["p50_us"] for _, c in pairs),
            # > 1: proxy mode costs more; the goal is at most GOAL.
            "cost_ratio": _ratio([p["rps"] / c["rps"] for p, c in pairs]),
            "added_p50_us": _ratio([c["p50_us"] - p["p50_us"] for p, c in pairs]),
        }
    fresh = list(zip(raw["proxy_fresh"], raw["connect_fresh"], strict=True))
    out["handshake"] = {
        "new_connection_p50_us": statistics.median(p["p50_us"] for p, _ in fresh),
        "new_tunnel_p50_us": statistics.median(c["p50_us"] for _, c in fresh),
        "connect_and_tls_us": _ratio([c["p50_us"] - p["p50_us"] for p, c in fresh]),
    }
    ratio = out["@1"]["cost_ratio"]["median"]
    out["target"] = {"goal": f"<= {GOAL}x /proxy keep-alive", "measured": ratio,
                     "met": ratio <= GOAL}  # fmt: skip
    return out


def measure(nginx: str, work: Path, rounds: int, calls: int) -> Json:
    work.mkdir(parents=True, exist_ok=True)
    setup = Setup(nginx, work)
    try:
        setup.start_blindkey(work)
        log("proxy mode: warming (the first CONNECT mints the leaf)")
        first = run(setup, "connect", 1, 1, work, fresh=True)
        run(setup, "proxy", 200, 1, work, fresh=False)
        run(setup, "connect", 200, 1, work, fresh=False)
        log(f"proxy mode: {rounds} rounds of {calls} calls, /proxy beside CONNECT")
        out = summarise(_rounds(setup, work, rounds, calls))
        out["first_connect_us"] = first["p50_us"]
        return out
    finally:
        setup.stop()


def from_bench(bench: Bench) -> Json:
    """The row inside `make bench` (its rounds; fewer calls than alone, for the budget)."""
    calls = 500 if bench.args.quick else 2000
    return measure(bench.tools["nginx"], bench.work / "proxy-mode", bench.args.rounds, calls)


def table(result: Json) -> list[str]:
    """The Markdown lines of this row (bench/report_tables.py places them)."""
    lines = [
        "| proxy mode (HTTPS via the local CA) vs /proxy, curl | /proxy | proxy mode | cost |",
        "|---|---:|---:|---:|",
    ]
    for clients in CONCURRENCY:
        row = result[f"@{clients}"]
        cost = row["cost_ratio"]
        lines += [
            f"| req/s @{clients}, keep-alive | {row['proxy_rps']:,.0f} | "
            f"{row['connect_rps']:,.0f} | {cost['median']:.2f}x "
            f"({cost['min']:.2f}-{cost['max']:.2f}) |",
            f"| p50 @{clients} (us) | {row['proxy_p50_us']:,.0f} | {row['connect_p50_us']:,.0f} "
            f"| +{row['added_p50_us']['median']:,.0f} us |",
        ]
    shake = result["handshake"]
    lines += [
        f"| a new connection per call, p50 (us) | {shake['new_connection_p50_us']:,.0f} | "
        f"{shake['new_tunnel_p50_us']:,.0f} | +{shake['connect_and_tls_us']['median']:,.0f} "
        "us (CONNECT + TLS, leaf cached) |",
        f"| the first CONNECT to a host (mints its leaf) | - | {result['first_connect_us']:,.0f} "
        "us | - |",
        f"| goal: {result['target']['goal']} | | {result['target']['measured']:.2f}x | "
        + ("met" if result["target"]["met"] else "**not met**")
        + " |",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy_mode", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=4000, help="calls per run (all clients)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1,000 calls")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 1, 1000
    tools = ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="bk-bench-proxy-mode-", dir="/var/tmp"))
    try:
        result = measure(tools["nginx"], work, args.rounds, args.calls)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
