"""A tunnel left open and silent is closed by the idle deadline, blind or intercepted: an
idle socket holds neither a connection slot nor an upstream socket forever. (Before, a
blind tunnel counted as a request in progress for as long as the client kept it open.)"""

from __future__ import annotations

import asyncio

import pytest

from tests.proxy.test_attack_dos import audit_records
from tests.proxy.tls.conftest import Mode, tunnel

IDLE = 0.3  # keepalive_idle_timeout; upstream_timeout is 1 s (tests/proxy/conftest.py)


@pytest.fixture
def mode_limits() -> dict[str, str]:
    return {"keepalive_idle_timeout": f"{int(IDLE * 1000)}ms"}


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """How long until the proxy closed the connection (it must, within `seconds`)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), seconds)
    return loop.time() - started


async def test_a_silent_blind_tunnel_is_closed(mode: Mode) -> None:
    reader, writer = await tunnel(mode, mode.free_port, ca=mode.upstream_ca)
    request = f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{mode.free_port}\r\n\r\n"
    writer.write(request.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    # The answer came: now the client is silent, and its tunnel is closed after IDLE.
    waited = await closed_within(reader, 10 * IDLE)
    assert waited >= IDLE * 0.8
    writer.close()
    await mode.env.server.audit.flush()
    tunnels = [r for r in audit_records(mode.env.paths.audit_dir) if r["event"] == "tunnel"]
    assert tunnels and tunnels[-1]["bytes_down"] > 0
    guard = mode.env.server.guard
    assert guard is not None and guard.in_flight == 0


async def test_a_tunnel_opened_and_never_used_is_closed(mode: Mode) -> None:
    reader, writer = await tunnel(mode, mode.free_port, ca=mode.upstream_ca)
    await closed_within(reader, 10 * IDLE)
    writer.close()


async def test_a_silent_intercepted_tunnel_is_closed(mode: Mode) -> None:
    reader, writer = await tunnel(mode, mode.bound_port)
    await closed_within(reader, 10 * IDLE)
    writer.close()
