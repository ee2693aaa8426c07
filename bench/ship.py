"""The audit shipping row: a proxy shipping every record to rsyslogd (TCP) and to an OTLP
receiver, beside the same proxy without [audit.ship], at 32 connections, interleaved round
by round. Goal: shipping costs at most 5 % of req/s, and has delivered everything once the
load stops.

`python -m bench.ship` is the OTLP receiver: it prints `PORT n` and answers 200 to each
POST (the receiver's own work is not blindkey's cost, so it does no decoding).

Shipping runs in a niced child of the proxy (audit/ship/child.py): the row says its CPU per
request beside the proxy's, so moving the work out of the proxy does not hide it.
"""

from __future__ import annotations

import contextlib
import http.server
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import tomlkit

from bench.blindkey import Home
from bench.harness import Bench
from bench.phases import in_turn
from bench.report import Json
from bench.tools import BenchError, descendants, log
from bench.wrk import write_script
from blindkey.audit.ship.status import ship_status
from blindkey.config.edit import toml_table
from blindkey.config.outputs import ShipSettings
from blindkey.config.paths import resolve_paths

CONNECTIONS = 32
GOAL = 0.95  # shipping on / off, req/s
MIN_ROUNDS = 3  # a 5 % budget is within one round's noise on this machine
CATCH_UP = 60.0  # seconds the shipper gets to deliver the backlog after the load


def _rsyslog(bench: Bench) -> int:
    work = bench.work / "ship"
    work.mkdir(exist_ok=True)
    conf = work / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{work}")\nmodule(load="imtcp")\n'
        f'input(type="imtcp" port="0" listenPortFileName="{work}/port" ruleset="out")\n'
        f'ruleset(name="out") {{ action(type="omfile" file="{work}/received.log") }}\n'
    )
    bench._service("rsyslogd", ["rsyslogd", "-n", "-f", str(conf), "-i", str(work / "pid")])
    port_file = work / "port"
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip()):
        if time.monotonic() > deadline:
            raise BenchError("rsyslogd did not start")
        time.sleep(0.05)
    return int(port_file.read_text())


def _target(bench: Bench, name: str, home: Home) -> None:
    bench.homes.append(home)
    running, _ = home.start()
    bench.running.append(running)
    headers = home.headers(f"http://127.0.0.1:{bench.small_port}/small")
    bench.urls[name], bench.headers[name] = running.url, headers
    bench.scripts[name] = write_script(bench.work / f"{name}.lua", headers)
    bench.cpu_pids[name] = {"proxy": [running.pid], "broker": [running.broker_pid]}
    shipping = _shipping_pids(running.pid)
    if shipping:
        bench.cpu_pids[name]["shipping"] = shipping


def _shipping_pids(proxy_pid: int) -> list[int]:
    """The proxy's shipping process (audit/ship/child.py): its CPU is shipping's cost too."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for pid in descendants(proxy_pid):
            with contextlib.suppress(OSError):
                if b"blindkey.audit.ship" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _caught_up(home: Home, settings: ShipSettings) -> list[dict[str, Any]]:
    audit_dir = resolve_paths(home.env).audit_dir
    deadline = time.monotonic() + CATCH_UP
    while True:
        found = ship_status(audit_dir, settings)
        if all(d["lag_records"] == 0 for d in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def ship(bench: Bench) -> None:
    log("audit shipping: rsyslogd (TCP) and OTLP on, beside off, @32")
    settings = ShipSettings(
        syslog=f"tcp://127.0.0.1:{_rsyslog(bench)}",
        otlp=f"http://127.0.0.1:{bench._service('otlp', [sys.executable, '-m', 'bench.ship']).read_port()}",
    )
    off, on = (
        bench.home.copy(bench.work / "home-ship-off"),
        bench.home.copy(bench.work / "home-ship-on"),
    )
    config = on.path / "config.toml"
    document = tomlkit.parse(config.read_text())
    table = toml_table(document, "audit", "ship")
    table["syslog"], table["otlp"] = settings.syslog, settings.otlp
    config.write_text(tomlkit.dumps(document))
    _target(bench, "ship_off", off)
    _target(bench, "ship_on", on)
    names = ["ship_off", "ship_on"]
    for name in names:
        bench.wrk(name, CONNECTIONS, 1)  # warm-up
    rps: dict[str, list[float]] = {name: [] for name in names}
    # The proxy's own CPU per request: the receivers' CPU, on the same two cores, is not
    # blindkey's cost but does lower its req/s.
    cpu: dict[str, list[float]] = {name: [] for name in names}
    shipping_cpu: list[float] = []
    for round_no in range(max(MIN_ROUNDS, bench.args.rounds)):
        for name in in_turn(names, round_no):
            result = bench.quiet_wrk(name, CONNECTIONS, bench.args.duration)
            rps[name].append(result.rps)
            if "proxy" in result.cpu_by_process:
                cpu[name].append(result.cpu_by_process["proxy"])
            if "shipping" in result.cpu_by_process:
                shipping_cpu.append(result.cpu_by_process["shipping"])
    ratios = [a / b for a, b in zip(rps["ship_on"], rps["ship_off"], strict=True) if b]
    status = _caught_up(on, settings)
    bench.out["ship"] = {
        "connections": CONNECTIONS,
        "rps_on": statistics.median(rps["ship_on"]),
        "rps_off": statistics.median(rps["ship_off"]),
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "proxy_cpu_us_per_request": {
            name.removeprefix("ship_"): round(statistics.median(cpu[name]), 1)
            for name in names
            if cpu[name]
        },
        "shipping_process_cpu_us_per_request": round(statistics.median(shipping_cpu), 1)
        if shipping_cpu
        else None,
        "delivered": {d["destination"]: d["shipped_seq"] for d in status},
        "lag_records_after": {d["destination"]: d["lag_records"] for d in status},
        "errors": {d["destination"]: d["last_error"] for d in status},
        "how": "[audit.ship] syslog (rsyslogd imtcp) and otlp (an HTTP 200 sink) in a copy "
        "of the home, against a copy without; interleaved rounds",
    }


def table_lines(report: Json) -> list[str]:
    row = report.get("ship")
    if not row:
        return []
    ratio = row["ratio"]
    cpu = row.get("proxy_cpu_us_per_request", {})
    lag = ", ".join(f"{k} {v}" for k, v in row["lag_records_after"].items())
    return [
        f"| req/s @{row['connections']}, audit shipping on / off (syslog + OTLP) | "
        f"{row['rps_on']:,.0f} / {row['rps_off']:,.0f} ({ratio['median']:.2f}x "
        f"({ratio['min']:.2f}-{ratio['max']:.2f})) |",
        f"| audit shipping: proxy CPU per request on / off (us) | {cpu.get('on', '-')} / "
        f"{cpu.get('off', '-')} (+ {row.get('shipping_process_cpu_us_per_request', '-')} in "
        "the niced shipping process) |",
        f"| audit shipping: records delivered, lag after the load | "
        f"{', '.join(f'{k} {v:,}' for k, v in row['delivered'].items())}; lag {lag} |",
    ]


def targets(report: Json) -> list[Json]:
    row = report.get("ship")
    if not row:
        return []
    value = row["ratio"]["median"]
    caught_up = all(v == 0 for v in row["lag_records_after"].values())
    return [
        {
            "target": "req/s @32, audit shipping on vs off",
            "measured": round(value, 3),
            "unit": "x",
            "goal": f">= {GOAL}x (costs at most 5 %), everything delivered",
            "met": value >= GOAL and caught_up,
        }
    ]


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
