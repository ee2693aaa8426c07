"""The audit shipping row on its own: `python -m bench.ship_alone [--rounds N] [--duration S]`
starts only what the row needs (nginx's small upstream, a home, rsyslogd, the OTLP sink)
and prints the row, its table lines and the load average, so a change to shipping is
measured in a minute instead of a full `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from bench import nginx, ship
from bench.blindkey import Home, make_values
from bench.harness import Bench
from bench.tools import ensure_tools, log, raise_fd_limit


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ship_alone")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    args = parser.parse_args(argv)
    args.budget, args.scale_budget = 600.0, 0.0  # what Bench reads
    return args


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    tools = ensure_tools()
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="bk-bench-ship-", dir="/var/tmp"))
    bench = Bench(args, tools, work)
    try:
        upstream, bench.small_port = nginx.start_upstream(tools["nginx"], work / "nginx")
        bench.services.append(upstream)
        bench.home = Home.create(work, [bench.small_port], make_values(), route=False)
        bench.homes.append(bench.home)
        ship.ship(bench)
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    log(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(json.dumps(bench.out["ship"], indent=1))
    print("\n".join(ship.table_lines(bench.out)))


if __name__ == "__main__":
    main()
