"""The README's quick start, pasted as one block against a running proxy, works every time.

Each command must be in force when it returns: `agent add` then an immediate call must not
meet 401 unknown token, `allowlist add` then an immediate call must not meet 403. One shell
script runs the quick start 50 times in a row with fresh names, as fast as bash can.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest

from blindkey.config.paths import Paths
from tests.conftest import ROOT, RunCli

RUNS = 50

# The README's block with the local upstream as target; only the names change per run.
QUICKSTART = r"""
set -euo pipefail
blindkey() { "$PYTHON" -m blindkey.cli "$@"; }
read_token='import json,sys; print(json.load(sys.stdin)["token"])'
for i in $(seq 1 "$RUNS"); do
  blindkey allowlist add "http://127.0.0.1:$UPSTREAM_PORT" >/dev/null
  printf %s "$VALUE_PREFIX-$i" \
    | blindkey secrets set "KEY_$i" --host "http://127.0.0.1:$UPSTREAM_PORT" >/dev/null
  TOKEN=$(blindkey agent add "agent-$i" --json | "$PYTHON" -c "$read_token")
  curl -s -o /dev/null -D - http://127.0.0.1:"$PROXY_PORT"/proxy \
    -H "X-AS-Agent-Token: $TOKEN" \
    -H "X-AS-Target-URL: http://127.0.0.1:$UPSTREAM_PORT/echo" \
    -H "X-AS-Inject-Bearer: KEY_$i" \
    | tr -d '\r' \
    | awk -v run="$i" '
        NR == 1 { status = $2 }
        tolower($1) == "x-echo-authorization-sha256:" { digest = $2 }
        END { print run, status, digest }'
done
"""


@pytest.fixture
def proxy_port(home: Paths, run_cli: RunCli) -> Iterator[int]:
    """`blindkey proxy start --port 0` in the fresh home, detached as a user starts it."""
    started = run_cli("proxy", "start", "--port", "0")
    assert started.returncode == 0, started.stderr
    try:
        status = run_cli("proxy", "status", "--json")
        assert status.returncode == 0, status.stderr
        yield int(orjson.loads(status.stdout)["port"])
    finally:
        stopped = run_cli("proxy", "stop")
        assert stopped.returncode == 0, stopped.stderr


@pytest.mark.timeout(240)
def test_the_quick_start_pasted_as_one_block_works_every_time(
    home: Paths, proxy_port: int, upstream_port: int
) -> None:
    prefix = f"quickstart-{secrets.token_hex(8)}"
    env = {
        **os.environ,
        "BLINDKEY_HOME": str(home.config_dir),
        "PYTHON": sys.executable,
        "RUNS": str(RUNS),
        "VALUE_PREFIX": prefix,
        "PROXY_PORT": str(proxy_port),
        "UPSTREAM_PORT": str(upstream_port),
    }
    script = subprocess.run(
        ["bash", "-c", QUICKSTART],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert script.returncode == 0, script.stderr
    # Nothing warns either: the host of every secret is on the allowlist.
    assert script.stderr == ""
    got = [line.split() for line in script.stdout.splitlines()]
    expected = [
        [str(i), "200", hashlib.sha256(f"Bearer {prefix}-{i}".encode()).hexdigest()]
        for i in range(1, RUNS + 1)
    ]
    failed = [run for run, want in zip(got, expected, strict=False) if run != want]
    assert not failed, f"{len(failed)} of {RUNS} runs failed, e.g. {failed[:3]}"
    assert got == expected
