"""What `service install` writes and runs, as data: --dry-run prints it, install carries it
out, and where no service manager runs the start commands are printed instead of run."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from blindkey.config.atomic import write_atomic
from blindkey.config.console import say
from blindkey.config.errors import BlindkeyError


@dataclass(frozen=True)
class Artifact:
    path: Path
    content: bytes
    mode: int = 0o644


@dataclass
class Plan:
    manager: str
    artifacts: list[Artifact] = field(default_factory=list)
    start: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def show(self) -> None:
        for artifact in self.artifacts:
            say(f"# {artifact.path} (mode {artifact.mode:04o})")
            say(artifact.content.decode("utf-8").rstrip("\n"))
            say("")
        say(f"# then, with {self.manager}:")
        for command in self.start:
            say(shlex.join(command))
        for note in self.notes:
            say(f"# {note}")

    def write(self) -> None:
        for artifact in self.artifacts:
            artifact.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomic(artifact.path, artifact.content, artifact.mode)
            say(f"wrote {artifact.path}")

    def run(self, manager_runs: bool) -> None:
        if not manager_runs:
            say(f"{self.manager} does not run here; to start blindkey, run:")
            for command in self.start:
                say(f"  {shlex.join(command)}")
        else:
            for command in self.start:
                run_checked(command)
        for note in self.notes:
            say(note)


def run_checked(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BlindkeyError(f"{shlex.join(command)}: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise BlindkeyError(
            f"{shlex.join(command)} failed ({lines[-1] if lines else done.returncode})"
        )
    return done.stdout


def systemd_runs(user: bool) -> bool:
    """Whether systemd is the init system here, and for a user unit, whether this user's
    manager answers (sd_booted(3): /run/systemd/system exists only under systemd)."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return False
    if not user:
        return True
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return (Path(runtime) / "systemd" / "private").exists()


def remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    say(f"removed {path}")
    return True
