"""py-spy on the running proxy: a flame graph for eyes, and hot spots by function for the report."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from bench.tools import BenchError

_THREAD = re.compile(r"^thread \(([^)]+)\)(?::\s*(.*))?$")
TOP = 15
OWN_CODE = re.compile(r"\((?:proxy|broker|audit|config)/[^)]*\)$")


def record(py_spy: str, pid: int, output: Path, seconds: float, fmt: str, rate: int = 250) -> None:
    command = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(rate),
        "--function",
        "--threads",
        "--format",
        fmt,
        "--output",
        str(output),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if result.returncode != 0 or not output.exists():
        raise BenchError(f"py-spy failed: {result.stderr.strip()[-600:]}")


def _split(line: str) -> tuple[str, list[str], int] | None:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = stack.split(";")
    frames = [f for f in frames if not f.startswith("process ")]
    thread = "main"
    if frames and (match := _THREAD.match(frames[0])):
        thread = match.group(2) or match.group(1)
        frames = frames[1:]
    return thread, frames, int(count)


def _short(frame: str) -> str:
    """`handle (proxy/handler.py:120)` -> `handle (proxy/handler.py)`: one row per function."""
    return re.sub(r":\d+\)$", ")", frame)


def hot_spots(raw: Path, top: int = TOP) -> dict[str, object]:
    """Self and inclusive shares of the busiest thread's samples, by function.

    The busiest thread is the event loop; the audit writer's fsync runs in an executor
    thread, whose samples (mostly waiting on the disk) are counted apart. Self time of
    `Runner.run` is the event loop's own C code (uvloop: sockets, callbacks, timers).
    Inclusive shares above 99% (the call trunk down to the event loop) are left out.
    `charged_to_blindkey_function` gives each sample to the deepest frame of blindkey's own
    packages on its stack: what each of our functions costs, libraries it calls included.
    """
    per_thread: Counter[str] = Counter()
    parsed = []
    for line in raw.read_text().splitlines():
        item = _split(line)
        if item is not None:
            parsed.append(item)
            per_thread[item[0]] += item[2]
    if not parsed:
        raise BenchError("py-spy recorded no samples")
    main_thread, main_samples = per_thread.most_common(1)[0]
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    charged: Counter[str] = Counter()
    for thread, frames, count in parsed:
        if thread != main_thread or not frames:
            continue
        names = [_short(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
        mine = [n for n in names if OWN_CODE.search(n)]
        charged[mine[-1] if mine else "(outside blindkey code: aiohttp server, event loop)"] += (
            count
        )

    def share(counter: Counter[str]) -> list[dict[str, object]]:
        return [
            {"function": name, "percent": round(100 * n / main_samples, 1)}
            for name, n in counter.most_common(top)
        ]

    trunk = {name for name, n in inclusive.items() if n >= 0.99 * main_samples}
    for name in trunk:
        del inclusive[name]
    others: dict[str, int] = {t: n for t, n in per_thread.items() if t != main_thread}
    return {
        "thread": main_thread,
        "samples": main_samples,
        "samples_other_threads": others,
        "self": share(own),
        "inclusive": share(inclusive),
        "charged_to_blindkey_function": share(charged),
    }
