"""`make test` in any user's shell: what the caller exported does not reach the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CALLER_ONLY, ROOT


def test_the_callers_blindkey_and_xdg_variables_are_dropped() -> None:
    assert not set(CALLER_ONLY) & set(os.environ)


def test_a_run_with_a_foreign_home_exported_uses_its_own(tmp_path: Path) -> None:
    """A pytest run started with BLINDKEY_HOME and XDG_* pointing at a user's places leaves
    them untouched and passes a test that initialises a home of its own."""
    foreign = tmp_path / "users-home"
    env = {
        **os.environ,
        "BLINDKEY_HOME": str(foreign),
        "XDG_CONFIG_HOME": str(foreign / "config"),
        "XDG_STATE_HOME": str(foreign / "state"),
        "BLINDKEY_AGENT_TOKEN": "the-users-own-token",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/config/test_cli.py::test_init_is_idempotent",
         "tests/test_caller_environment.py::test_the_callers_blindkey_and_xdg_variables_are_dropped"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not foreign.exists()
