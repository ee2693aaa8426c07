"""blindkey under test: a home with 50 secrets, an agent, the allowlist; start, stop, probe."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from bench.tools import ROOT, BenchError, Service
from blindkey.broker.client import BrokerClient
from blindkey.config.paths import resolve_paths

SECRET_COUNT = 50
INJECTED = "BENCH_SECRET_00"
ROUTE = "bench"
# 1,000 idle keep-alive connections plus 256 busy ones exceed the default of 1,024.
MAX_CONNECTIONS = 2048
CLI_TIMEOUT = 60.0
CLI_MODULE = "blindkey.cli"  # `python -m` this is the `blindkey` command
# Before the command tree had a package of its own (an --against REV from then).
OLD_CLI_MODULE = "blindkey.proxy"


def cli_module(env: dict[str, str]) -> str:
    """The command's module for the blindkey `env` runs: an earlier tree on PYTHONPATH
    (bench/against.py) without cli/ has it in proxy/; its modules must not mix with ours."""
    tree = env.get("PYTHONPATH", "").split(os.pathsep)[0]
    if (
        tree
        and (Path(tree) / "blindkey").is_dir()
        and not (Path(tree) / "blindkey" / "cli").exists()
    ):
        return OLD_CLI_MODULE
    return CLI_MODULE


IMPORT_TIMEOUT = 900.0


def cli(
    env: dict[str, str],
    *args: str,
    stdin: str = "",
    check: bool = True,
    timeout: float = CLI_TIMEOUT,
) -> str:
    result = subprocess.run(
        [sys.executable, "-m", cli_module(env), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise BenchError(f"blindkey {' '.join(args)} failed: {result.stderr.strip()[-800:]}")
    return result.stdout


def make_values(count: int = SECRET_COUNT) -> dict[str, str]:
    """API-key-like values: a prefix, then 40 URL-safe characters."""
    return {
        f"BENCH_SECRET_{i:02d}": f"sk-bench{i:02d}-{secrets.token_urlsafe(30)}"
        for i in range(count)
    }


def filesystem_of(path: Path) -> str:
    """The mount type under `path`: audit fsync on tmpfs would cost nothing."""
    best, kind = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        if str(path).startswith(mount) and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind


@dataclass
class Running:
    pid: int
    broker_pid: int
    port: int
    service: Service | None = None  # set when the bench launched it in the foreground

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/proxy"


@dataclass
class Home:
    path: Path
    token: str = ""
    values: dict[str, str] = field(default_factory=dict)
    # Another build of blindkey to run (bench/against.py), ahead of the installed one.
    pythonpath: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "BLINDKEY_HOME": str(self.path)}
        # Commands run as an installed blindkey runs: from bytecode (pip compiles it). With
        # PYTHONDONTWRITEBYTECODE set around the bench, every command compiled its ~200
        # modules again (0.5 s of CPU for `proxy logs`, more for `proxy start`).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if self.pythonpath is not None:
            env["PYTHONPATH"] = str(self.pythonpath)
        return env

    @classmethod
    def create(
        cls,
        base: Path,
        upstream_ports: list[int],
        values: dict[str, str],
        *,
        pythonpath: Path | None = None,
        route: bool = True,
        bulk: bool = False,
    ) -> Home:
        home = cls(base / "home", pythonpath=pythonpath)
        env = home.env
        cli(env, "init")
        config = home.path / "config.toml"
        document = tomlkit.parse(config.read_text())
        document["limits"]["max_connections"] = MAX_CONNECTIONS
        config.write_text(tomlkit.dumps(document))
        if upstream_ports:
            cli(env, "allowlist", "add", *(f"http://127.0.0.1:{p}" for p in upstream_ports))
        if bulk:  # one `secrets import`: a build from before it (--against) has no such command
            home.import_values(values)
        else:
            for name, value in values.items():
                cli(env, "secrets", "set", name, stdin=value)
                home.values[name] = value
        home.token = json.loads(cli(env, "agent", "add", "bench", "--json"))["token"]
        if not route:  # an earlier build may have no routes
            return home
        # /r/bench/... : the same upstream and secret as the /proxy rows, for SDKs' base_url.
        cli(env, "route", "add", ROUTE, "--to", f"http://127.0.0.1:{upstream_ports[0]}",
            "--bearer", INJECTED)  # fmt: skip
        return home

    def import_values(self, values: dict[str, str]) -> float:
        """`blindkey secrets import -` of `values` as .env lines; seconds it took."""
        began = time.perf_counter()
        dotenv = "".join(f"{name}={value}\n" for name, value in values.items())
        # Storing each value rewrites the vault: 10,000 took two minutes on the bench machine.
        cli(self.env, "secrets", "import", "-", stdin=dotenv, timeout=IMPORT_TIMEOUT)
        self.values.update(values)
        return time.perf_counter() - began

    def copy(self, path: Path) -> Home:
        """The same vault, agents and config in a second home, for a second proxy."""
        shutil.copytree(self.path, path, ignore=shutil.ignore_patterns("run", "audit", "*.log"))
        return Home(path, self.token, dict(self.values))

    def headers(self, target_url: str) -> dict[str, str]:
        return {
            "X-AS-Agent-Token": self.token,
            "X-AS-Target-URL": target_url,
            "X-AS-Inject-Bearer": INJECTED,
        }

    def route_headers(self) -> dict[str, str]:
        """What an SDK given base_url .../r/bench and the agent token as its key sends."""
        return {"Authorization": f"Bearer {self.token}"}

    def status(self) -> Running:
        status = json.loads(cli(self.env, "proxy", "status", "--json"))
        if not status.get("running") or not status.get("broker_pid"):
            raise BenchError(f"blindkey is not running in {self.path}: {status}")
        return Running(int(status["pid"]), int(status["broker_pid"]), int(status["port"]))

    def start(self) -> tuple[Running, float]:
        """`blindkey proxy start` as a user runs it; seconds until it returned healthy."""
        began = time.perf_counter()
        cli(self.env, "proxy", "start", "--port", "0")
        elapsed = time.perf_counter() - began
        return self.status(), elapsed

    def stop(self) -> None:
        cli(self.env, "proxy", "stop", check=False)

    def launch(self, *, audit_fsync: bool) -> Running:
        """`proxy start` with `[audit] fsync` set as asked in this home's config.toml."""
        config = self.path / "config.toml"
        text = config.read_text()
        wanted = "true" if audit_fsync else "false"
        if "[audit]" in text:
            text = text.replace("fsync = true", f"fsync = {wanted}").replace(
                "fsync = false", f"fsync = {wanted}"
            )
        else:
            text += f"\n[audit]\nfsync = {wanted}\n"
        config.write_text(text)
        running, _ = self.start()
        return running


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def _resolve_latency(
    home: Home, calls: int, concurrency: int
) -> dict[str, float | int | str]:
    paths = resolve_paths(home.env)
    client = BrokerClient(paths.broker_socket)
    names, host = [INJECTED], "127.0.0.1"
    try:
        for _ in range(50):  # warm the connection and the broker's caches
            await client.call("resolve", token=home.token, names=names, host=host)
        samples: list[float] = []
        for _ in range(calls):
            sent = time.perf_counter_ns()
            await client.call("resolve", token=home.token, names=names, host=host)
            samples.append((time.perf_counter_ns() - sent) / 1000)
        began = time.perf_counter()
        pipelined = 0
        while pipelined < calls:
            await asyncio.gather(
                *(
                    client.call("resolve", token=home.token, names=names, host=host)
                    for _ in range(concurrency)
                )
            )
            pipelined += concurrency
        pipelined_rate = pipelined / (time.perf_counter() - began)
    finally:
        await client.close()
    samples.sort()
    return {
        "calls": calls,
        "p50_us": round(statistics.median(samples), 1),
        "p99_us": round(percentile(samples, 99), 1),
        "max_us": round(samples[-1], 1),
        f"pipelined_{concurrency}_per_s": round(pipelined_rate),
        "client": "blindkey.broker.client.BrokerClient over the Unix socket, from the bench process",
    }


def resolve_latency(home: Home, calls: int = 2000, concurrency: int = 32) -> dict[str, object]:
    return dict(asyncio.run(_resolve_latency(home, calls, concurrency)))
