"""What every part of the benchmark needs: installing tools, ports, processes, /proc readings."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx", "curl": "curl"}
APT_TIMEOUT = 240.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A step of the benchmark could not run; the message says which and why."""


class OutOfTime(BenchError):
    """The time budget ran out: everything stops, not just the step that was running."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_tool(name: str) -> str | None:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", str(VENV_BIN / name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_tools() -> dict[str, str]:
    """Install wrk, nginx and curl with apt-get when missing, py-spy with pip."""
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if find_tool(tool) is None]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log(f"installing {' '.join(missing)} with apt-get")
        for command in (
            [*sudo, "apt-get", "update", "-qq"],
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            result = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
            )
            if result.returncode != 0:
                raise BenchError(
                    f"`{' '.join(command)}` failed; install {' '.join(missing)} by hand:\n"
                    + result.stderr[-2000:]
                )
    if find_tool("py-spy") is None:
        log("installing py-spy into the venv with pip")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
            capture_output=True,
            timeout=APT_TIMEOUT,
            check=False,
        )
    tools = {}
    for tool in (*APT_PACKAGES, "py-spy"):
        path = find_tool(tool)
        if path is None and tool != "py-spy":
            raise BenchError(f"{tool} is still missing after installing it")
        if path is not None:
            tools[tool] = path
    return tools


def raise_fd_limit() -> None:
    """Children inherit it: 1,000 idle connections plus 256 busy ones need room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class Service:
    """A child process in its own session, stopped by its own pid and process group."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str] | None = None):
        self.name = name
        self.process = subprocess.Popen(
            list(command),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)
            del self._stderr[:-50]

    def stderr_tail(self) -> str:
        return "".join(self._stderr)[-1500:]

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_port(self, timeout: float = 15.0) -> int:
        """The child prints `PORT n` once it listens."""
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        if not result or not result[0].startswith("PORT "):
            raise BenchError(f"{self.name} did not start: {self.stderr_tail()}")
        return int(result[0].split()[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field}")


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def hwm_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def reset_hwm(pid: int) -> None:
    """Reset VmHWM to the current RSS, so a peak belongs to the phase that follows."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class RssSampler:
    """Peak RSS of one process over a phase: VmHWM after a reset, checked by sampling."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_sampled = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.hwm_reset = True

    def __enter__(self) -> RssSampler:
        try:
            reset_hwm(self.pid)
        except OSError:
            self.hwm_reset = False
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, BenchError):
                self.peak_sampled = max(self.peak_sampled, rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        if self.hwm_reset:
            return max(self.peak_sampled, hwm_mb(self.pid))
        return self.peak_sampled


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (nginx's workers, blindkey's broker)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(parents.get(current, []))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def machine() -> dict[str, str | int | float]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = _status_kb_meminfo()
    return {
        "cpu": model,
        "cores": os.cpu_count() or 0,
        "memory_gb": round(mem_kb / 2**20, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg_at_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def _status_kb_meminfo() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def busy_percent(seconds: float = 1.0) -> float:
    """How busy all CPUs were over `seconds`: other tenants' load shows up here."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)


def _cpu_fields() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


class Interference:
    """Over one measurement: CPU that neither the benchmark nor its processes used.

    `foreign_pct` is user+system time of other tenants of this machine, in percent of all
    CPUs; `steal_pct` is time the hypervisor gave to other virtual machines.
    """

    def __init__(self, own: Sequence[int]) -> None:
        self.own = [*own, os.getpid()]
        self.foreign_pct = 0.0
        self.steal_pct = 0.0

    def __enter__(self) -> Interference:
        self._fields = _cpu_fields()
        self._own = cpu_seconds(self.own)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = usage.ru_utime + usage.ru_stime
        return self

    def __exit__(self, *exc: object) -> None:
        fields = _cpu_fields()
        delta = [b - a for a, b in zip(self._fields, fields, strict=False)]
        total = max(1, sum(delta[:8]))
        busy = (delta[0] + delta[1] + delta[2]) / CLOCK_TICKS
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = cpu_seconds(self.own) - self._own
        ours += usage.ru_utime + usage.ru_stime - self._children  # wrk, curl, py-spy
        self.foreign_pct = round(max(0.0, busy - ours) * CLOCK_TICKS / total * 100, 1)
        self.steal_pct = round(delta[7] / total * 100, 1) if len(delta) > 7 else 0.0


def tool_version(command: Sequence[str]) -> str:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False, timeout=10)
    text = (result.stdout + result.stderr).strip().splitlines()
    return text[0] if text else "unknown"
