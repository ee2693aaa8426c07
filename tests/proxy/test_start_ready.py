"""`python -m blindkey.proxy`, as `proxy start` launches it: it spawns its broker before
loading its HTTP stack, and tells the command it serves through a pipe, only once /health
answers with the broker up; a broker that dies on its way up leaves the pipe closed
without a word, and nothing serves."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blindkey.broker.placeholders import key_file
from blindkey.config.paths import Paths
from blindkey.proxy.lifecycle import READY_FD, health, running
from tests.conftest import ROOT

# A bound on a wait for an event that comes (a start on a busy machine), never a delay.
PATIENCE = 45.0


@contextmanager
def launched(home: Paths) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    ready, ready_w = os.pipe()
    env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir), READY_FD: str(ready_w)}
    child = subprocess.Popen(
        [sys.executable, "-m", "blindkey.proxy", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=(ready_w,),
        env=env,
        cwd=ROOT,
    )
    os.close(ready_w)
    try:
        yield child, ready
    finally:
        os.close(ready)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        child.communicate(timeout=PATIENCE)


def word(ready: int) -> bytes:
    """What the proxy writes to the pipe: b"1" once it serves, b"" when it is gone."""
    assert select.select([ready], [], [], PATIENCE)[0], "neither a word nor the pipe's end"
    return os.read(ready, 1)


def test_the_word_comes_once_health_answers_with_the_broker_up(home: Paths) -> None:
    with launched(home) as (child, ready):
        assert word(ready) == b"1"
        current = running(home)
        assert current is not None and current.pid == child.pid
        status = current.status
        assert health(status["host"], int(status["port"]))  # at once, no retry
        assert status["broker"] == "running"
        broker = int(status["broker_pid"])
        # The proxy's own child: spawned by it, not by anyone else.
        stat = Path(f"/proc/{broker}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[1]) == child.pid


def test_a_broker_that_dies_on_its_way_up_leaves_no_word_and_nothing_serving(
    home: Paths,
) -> None:
    # A placeholder key of the wrong size: the broker refuses to start (a real failure).
    key_file(home).write_bytes(b"short")
    with launched(home) as (child, ready):
        assert word(ready) == b""
        _, stderr = child.communicate(timeout=PATIENCE)
        assert child.returncode != 0
        assert b"broker" in stderr
        assert running(home) is None
