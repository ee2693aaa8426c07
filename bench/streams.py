"""Streaming: the delay each proxy adds to SSE events, and a 1 GiB body's rate and memory."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from collections.abc import Mapping

import aiohttp

from bench.blindkey import percentile
from bench.tools import BenchError, RssSampler, rss_mb

MIB = 2**20
SSE_WARMUP_EVENTS = 10


async def _sse_gaps(url: str, headers: Mapping[str, str], limit: float) -> list[float]:
    """Microseconds from the upstream stamping each event to this client holding all of it."""
    gaps: list[float] = []
    buffer = b""
    client_timeout = aiohttp.ClientTimeout(total=limit)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.get(url, headers=dict(headers)) as response,
    ):
        if response.status != 200:
            raise BenchError(f"SSE through {url} answered {response.status}")
        async for chunk in response.content.iter_any():
            received = time.monotonic_ns()
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                mark = event.rfind(b'"t":')
                if mark < 0:
                    continue
                stamp = int(event[mark + 4 : event.index(b"}", mark)])
                gaps.append((received - stamp) / 1000)
    return gaps[SSE_WARMUP_EVENTS:]


def sse_query(events: int, interval_ms: float) -> str:
    return f"n={events + SSE_WARMUP_EVENTS}&interval_ms={interval_ms:g}"


def sse_delay(
    url: str, headers: Mapping[str, str], events: int, interval_ms: float
) -> dict[str, float | int]:
    """`url` already carries `sse_query(events, interval_ms)` (or names a target that does)."""
    timeout = (events + SSE_WARMUP_EVENTS) * interval_ms / 1000 + 30
    gaps = asyncio.run(_sse_gaps(url, headers, timeout))
    if len(gaps) < events:
        raise BenchError(f"SSE through {url}: {len(gaps)} of {events} events arrived")
    gaps.sort()
    return {
        "events": len(gaps),
        "p50_us": round(statistics.median(gaps), 1),
        "p90_us": round(percentile(gaps, 90), 1),
        "p99_us": round(percentile(gaps, 99), 1),
        "max_us": round(gaps[-1], 1),
    }


def big_download(
    curl: str,
    url: str,
    headers: Mapping[str, str],
    *,
    rss_pid: int | None,
    timeout: float = 120.0,
) -> dict[str, float | int | None]:
    """Fetch the 1 GiB body with curl into /dev/null; the proxy's peak RSS meanwhile."""
    command: list[str] = [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    sampler = RssSampler(rss_pid) if rss_pid is not None else None
    before = rss_mb(rss_pid) if rss_pid is not None else None
    began = time.perf_counter()
    if sampler is not None:
        sampler.__enter__()
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"1 GiB through {url} did not finish in {timeout:.0f}s") from exc
    finally:
        if sampler is not None:
            sampler.__exit__()
    elapsed = time.perf_counter() - began
    status, size = [*result.stdout.split(), "0", "0"][:2]
    if status != "200":
        raise BenchError(f"1 GiB through {url}: HTTP {status} {result.stderr.strip()[-300:]}")
    return {
        "bytes": int(size),
        "seconds": round(elapsed, 3),
        "mib_per_s": round(int(size) / MIB / elapsed, 1),
        "rss_before_mb": None if before is None else round(before, 1),
        "peak_rss_mb": None if sampler is None else round(sampler.peak_mb, 1),
    }


def expected_redacted_size(total: int, value: str, name: str, occurrences: int) -> int:
    replacement = f"[REDACTED:{name}]"
    return total - occurrences * (len(value.encode()) - len(replacement.encode()))
