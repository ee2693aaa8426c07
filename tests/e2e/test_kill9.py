"""kill -9 of the proxy at a random moment under concurrent load: every call whose whole
answer an agent received has its record, no line is torn, and the chain verifies.

Rounds: BLINDKEY_KILL9_ROUNDS (default 4; run with more to hunt for a rare loss).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time

import aiohttp
import orjson
import pytest

from blindkey.audit.store import audit_files
from blindkey.audit.verify import verify
from blindkey.config.paths import Paths
from tests.conftest import RunCli

ROUNDS = int(os.environ.get("BLINDKEY_KILL9_ROUNDS", "4"))
WORKERS = 24
VALUE = "ghp_kill9DurabilityToken0123456789abcd"


async def _gone(pid: int | None) -> None:
    """Return once process `pid` has ended (a pidfd becomes readable then)."""
    if pid is None:
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(10):
            await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _load(
    port: int, token: str, upstream: str, answered: list[str], stop: asyncio.Event
) -> None:
    """Calls until the proxy dies: small answers, streamed ones and refusals."""
    targets = [
        (f"{upstream}/echo", True),
        (f"{upstream}/chunks", True),
        (f"{upstream}/big?n=200000", True),
        (f"{upstream}/echo", False),  # no injection header: refused 400, recorded too
    ]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(n: int) -> None:
            rng = random.Random(n)
            while not stop.is_set():
                target, inject = rng.choice(targets)
                headers = {"X-AS-Agent-Token": token, "X-AS-Target-URL": target}
                if inject:
                    headers["X-AS-Inject-Bearer"] = "GITHUB_TOKEN"
                try:
                    async with session.get(
                        f"http://127.0.0.1:{port}/proxy", headers=headers
                    ) as response:
                        await response.read()  # raises if the answer was cut
                        answered.append(response.headers["X-Blindkey-Request-Id"])
                except (aiohttp.ClientError, OSError):
                    return  # the proxy is gone

        await asyncio.gather(*(worker(n) for n in range(WORKERS)))


def _records(home: Paths) -> list[dict[str, object]]:
    found = []
    for path in audit_files(home.audit_dir):
        if not path.exists():
            continue
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{path} ends inside a line"
        found += [orjson.loads(line) for line in data.splitlines()]
    return found


@pytest.mark.timeout(60 + 20 * ROUNDS)
async def test_kill9_under_load_loses_no_answered_call(
    run_cli: RunCli, home: Paths, upstream_port: int
) -> None:
    upstream = f"http://127.0.0.1:{upstream_port}"
    assert run_cli("allowlist", "add", upstream).returncode == 0
    assert run_cli("secrets", "set", "GITHUB_TOKEN", input=VALUE).returncode == 0
    token = json.loads(run_cli("agent", "add", "loader", "--json").stdout)["token"]
    answered: list[str] = []
    rng = random.Random()
    for _ in range(ROUNDS):
        result = await asyncio.to_thread(run_cli, "proxy", "start", "--port", "0")
        assert result.returncode == 0, result.stderr
        status = orjson.loads(home.status_file.read_bytes())
        stop = asyncio.Event()
        load = asyncio.create_task(_load(status["port"], token, upstream, answered, stop))
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        os.kill(status["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        async with asyncio.timeout(15):
            await load
        stop.set()
        await _gone(status["pid"])
        await _gone(status.get("broker_pid"))  # it notices its parent's death by itself
        assert time.monotonic() - killed_at < 15
    records = _records(home)
    written = {r.get("request_id") for r in records}
    missing = [rid for rid in answered if rid not in written]
    print(f"{len(answered)} answered calls over {ROUNDS} kills, {len(records)} records")
    assert len(answered) > 100 * ROUNDS, "the load never got going"
    assert missing == [], f"{len(missing)} of {len(answered)} answered calls have no record"
    verdict = verify(home.audit_dir, None)
    assert verdict.ok, verdict.reason
