"""Load with wrk: a Lua script sets the request headers and reports exact percentiles as JSON."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.tools import BenchError, cpu_seconds

LUA = """\
wrk.method = "GET"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,"
    .. "\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,"
    .. "\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d,\\"p999\\":%d,\\"max\\":%d,\\"mean\\":%.1f}}\\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_script(path: Path, headers: Mapping[str, str]) -> Path:
    lines = "\n".join(
        f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
        for name, value in headers.items()
    )
    path.write_text(LUA.format(headers=lines))
    return path


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    cpu_us_per_request: float | None = None
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    foreign_pct: float = 0.0
    steal_pct: float = 0.0
    attempts: int = 1

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "errors": self.errors,
            "latency_us": self.latency_us,
            "cpu_us_per_request": None
            if self.cpu_us_per_request is None
            else round(self.cpu_us_per_request, 1),
            "cpu_us_per_request_by_process": {
                k: round(v, 1) for k, v in self.cpu_by_process.items()
            },
            "other_tenants_cpu_pct": self.foreign_pct,
            "steal_pct": self.steal_pct,
            "attempts": self.attempts,
        }


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    cpu: Mapping[str, Sequence[int]] | None = None,
) -> WrkResult:
    """One bounded wrk run; `cpu` names the processes whose CPU time is charged to it."""
    cpu = cpu or {}
    command = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    cpu_before = {name: cpu_seconds(pids) for name, pids in cpu.items()}
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk against {url} did not finish in time") from exc
    cpu_after = {name: cpu_seconds(pids) for name, pids in cpu.items()}
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise BenchError(f"wrk against {url} failed: {result.stdout[-800:]}{result.stderr[-800:]}")
    data = json.loads(line[len("WRKJSON ") :])
    out = WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors={k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")},
        latency_us={k: float(data[k]) for k in ("p50", "p90", "p99", "p999", "max", "mean")},
    )
    if cpu and out.requests:
        out.cpu_by_process = {
            name: (cpu_after[name] - cpu_before[name]) / out.requests * 1e6 for name in cpu
        }
        out.cpu_us_per_request = sum(out.cpu_by_process.values())
    return out
