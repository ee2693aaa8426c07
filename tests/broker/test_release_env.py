"""`blindkey env -- CMD`: values as environment variables of CMD only (secrets released to
env, for this agent), CMD's output redacted (a value split across writes too), its exit
status and signals passed through, a terminal kept, one audit record with argv and status."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import sys
from pathlib import Path

import pytest

from tests.broker.test_release_exec import VALUES, Released, released
from tests.conftest import ROOT

EXEC_KEY = VALUES["EXEC_KEY"]
__all__ = ["released"]  # the fixture


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


SPLIT_WRITES = f"""
import os, sys, time
value = os.environ["EXEC_KEY"]
print("out:", value, flush=True)
half = len(value) // 2
sys.stderr.write("err:" + value[:half]); sys.stderr.flush(); time.sleep(0.2)
sys.stderr.write(value[half:] + "\\n"); sys.stderr.flush()
print(sorted(k for k in os.environ if k in {sorted(VALUES)!r}))
sys.exit(3)
"""


async def test_values_reach_cmd_and_its_output_comes_back_redacted(released: Released) -> None:
    argv = py(SPLIT_WRITES)
    status, out, err = await released.run("env", "--", *argv, stdin=b"")
    assert status == 3, err
    assert out.decode().splitlines() == ["out: [REDACTED:EXEC_KEY]", "['EXEC_KEY']"]
    lines = err.decode().splitlines()
    # Not released to env, or needs a grant, or bound to another agent: never set.
    assert lines[0].startswith("blindkey: warning: GATED is not set: approval_required")
    assert lines[1:] == ["err:[REDACTED:EXEC_KEY]"]
    assert EXEC_KEY.encode() not in out + err
    (record,) = released.records("env")
    assert (record["argv"], record["exit_status"]) == (argv, 3)
    assert (record["agent"], record["secrets"], record["refused"]) == (
        "openclaw",
        ["EXEC_KEY"],
        ["GATED"],
    )


async def test_a_named_secret_that_is_not_released_runs_nothing(
    released: Released, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    argv = py(f"open({str(marker)!r}, 'w')")
    for name, reason in [
        ("PROXY_ONLY", "not released to env"),
        ("GATED", "approval_required"),
        ("NOPE", "unknown_secret"),
    ]:
        status, out, err = await released.run("env", "--secret", name, "--", *argv, stdin=b"")
        assert (status, out) == (1, b"")
        assert err.startswith(f"blindkey: {name}: ".encode()) and reason.encode() in err
    assert not marker.exists()
    assert [r["exit_status"] for r in released.records("env")] == [None, None, None]


async def test_a_wrong_token_runs_nothing(released: Released) -> None:
    status, _, err = await released.run("env", "--", "true", stdin=b"", token="bk_nope")
    assert (status, err) == (1, b"blindkey: unauthenticated: unknown or revoked agent token\n")
    assert released.records("env") == []


async def test_no_token_names_the_variable_to_set(released: Released) -> None:
    """Not the X-AS-Agent-Token header: a user of `env` never sends one."""
    status, _, err = await released.run("env", "--", "true", stdin=b"", token="")
    assert status == 1
    assert err.startswith(b"blindkey: unauthenticated: BLINDKEY_AGENT_TOKEN is not set")
    assert b"X-AS-" not in err


@pytest.mark.parametrize(
    ("args", "status", "fragment"),
    [
        (["env"], 2, b"env needs a command"),
        (["env", "--"], 2, b"env needs a command"),
        (["env", "--secret", "1x", "--", "true"], 2, b"not a secret name"),
        (["env", "--", "/nonexistent/cmd"], 127, b"/nonexistent/cmd: command not found"),
    ],
)
async def test_usage_and_missing_commands(
    released: Released, args: list[str], status: int, fragment: bytes
) -> None:
    got, _, err = await released.run(*args, stdin=b"")
    assert got == status
    assert fragment in err


async def test_signals_pass_through(released: Released) -> None:
    # CMD killed by a signal: blindkey ends by the same signal.
    status, _, _ = await released.run(
        "env", "--", *py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"), stdin=b""
    )
    assert status == -signal.SIGTERM
    (record,) = released.records("env")
    assert record["exit_status"] == -signal.SIGTERM

    # A signal sent to blindkey reaches CMD.
    trap = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    env = {
        **os.environ,
        "BLINDKEY_HOME": str(released.paths.config_dir),
        "BLINDKEY_AGENT_TOKEN": released.token,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "env", "--", *py(trap),
        cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 20) == b"ready\n"
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 20) == 7


async def test_a_terminal_is_kept_and_its_output_redacted(released: Released) -> None:
    code = "import os, sys; print(sys.stdin.isatty(), sys.stdout.isatty(), os.environ['EXEC_KEY'])"
    master, slave = pty.openpty()
    env = {
        **os.environ,
        "BLINDKEY_HOME": str(released.paths.config_dir),
        "BLINDKEY_AGENT_TOKEN": released.token,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "env", "--secret", "EXEC_KEY", "--", *py(code),
        cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.run_in_executor(None, os.read, master, 4096)
        except OSError:  # EIO: every end of the terminal is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert await asyncio.wait_for(process.wait(), 20) == 0
    assert b"True True [REDACTED:EXEC_KEY]" in seen, seen
    assert EXEC_KEY.encode() not in seen
