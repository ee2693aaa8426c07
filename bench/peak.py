"""`python -m bench.peak REPORT COMMAND...`: run COMMAND, then write its exit status, wall
seconds, CPU seconds (user + system) and peak RSS (wait4's ru_maxrss, in KiB) to REPORT as
JSON. CPU time is what the command itself cost: on this shared machine its wall time also
counts the other tenants' load.

Why a process in between: Linux counts into a child's ru_maxrss the memory of the process
it was forked from, up to its exec (with vfork, that process's own peak). A child of the
bench would start from the bench's 50+ MB; a child of this small process starts from its
few MB, so what is left is the command's own peak.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    report, command = argv[0], argv[1:]
    began = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    result = {
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": time.perf_counter() - began,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_kib": usage.ru_maxrss,
    }
    with open(report, "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
