"""MemoryDenyWriteExecute=yes in the units: the proxy (uvloop, the hyperscan redactor, the
broker it spawns) serves an injected, redacted call under the kernel's own
memory-deny-write-execute (prctl PR_SET_MDWE, Linux 6.3+, the rule systemd's option
applies: no mapping both writable and executable, none made executable later)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from blindkey.config.paths import Paths
from tests.conftest import ROOT, RunCli

SECRET = "ghp_mdweValue0123456789abcdefXYZ"
UNDER_MDWE = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    raise SystemExit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    raise SystemExit("a writable and executable mapping was allowed: MDWE is not on")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_the_proxy_serves_under_memory_deny_write_execute(
    home: Paths, run_cli: RunCli, upstream_port: int
) -> None:
    assert run_cli("allowlist", "add", f"http://127.0.0.1:{upstream_port}").returncode == 0
    bound = f"http://127.0.0.1:{upstream_port}"  # a binding names scheme and port
    stored = run_cli("secrets", "set", "GH", "--host", bound, input=SECRET)
    assert stored.returncode == 0, stored.stderr
    token = json.loads(run_cli("agent", "add", "a", "--json").stdout)["token"]
    env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir)}
    process = subprocess.Popen(
        [sys.executable, "-c", UNDER_MDWE, "-m", "blindkey.cli", "proxy", "start",
         "--foreground", "--port", "0"],
        env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "listening on" in line, line + process.stderr.read()
        port = json.loads(home.status_file.read_text())["port"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/proxy",
            headers={
                "X-AS-Agent-Token": token,
                "X-AS-Target-URL": f"http://127.0.0.1:{upstream_port}/reflect",
                "X-AS-Inject-Bearer": "GH",
            },
        )
        with urllib.request.urlopen(request, timeout=20) as answer:
            body = answer.read().decode()
        assert answer.status == 200 and "[REDACTED:GH]" in body and SECRET not in body
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
        if process.stderr is not None:
            process.stderr.close()
