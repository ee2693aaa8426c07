"""blindkey as users get it: a wheel built from this checkout, installed with its
dependencies into a fresh venv in a directory every user may enter.

The checkout may live where other users cannot go (a 0700 clone, /root), and so may the
interpreter that runs the tests (pyenv under /root); the tests that run blindkey as other
users, or that check the wheel itself, run this installed copy instead.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "broker", "audit", "config", "redact", "cli", "service", "ui")
SOURCES = (*PACKAGES, "pyproject.toml", "README.md")


@dataclass(frozen=True)
class Installed:
    """A venv holding blindkey from its wheel, readable and runnable by every user."""

    base: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.base / "venv" / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    @property
    def blindkey(self) -> str:
        return str(self.bin / "blindkey")


def usable_by_everyone(path: Path) -> bool:
    """Every directory above `path` may be entered, and `path` run, by any user."""
    real = path.resolve()
    if not real.is_file() or not real.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)


def base_python() -> str:
    """A Python of the running minor version that any user may run."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(getattr(sys, "_base_executable", sys.executable)), Path(sys.executable)]
    candidates += [Path(directory, version) for directory in ("/usr/bin", "/usr/local/bin")]
    for candidate in candidates:
        if usable_by_everyone(candidate):
            return str(candidate)
    raise RuntimeError(f"no {version} that every user may run: install python3 from the OS")


def build_wheel(out: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ or egg-info."""
    with tempfile.TemporaryDirectory(prefix="blindkey-src-") as scratch:
        source = Path(scratch)
        for name in SOURCES:
            origin = ROOT / name
            if origin.is_dir():
                shutil.copytree(origin, source / name,
                                ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
            else:
                shutil.copy2(origin, source / name)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--no-build-isolation", "--wheel-dir", str(out), str(source)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    (wheel,) = out.glob("blindkey-*.whl")
    return wheel


def install(base: Path) -> Installed:
    """Build the wheel and install it into `base`/venv; `base` is made 0755."""
    base.chmod(0o755)
    wheel = build_wheel(base / "dist")
    venv = base / "venv"
    subprocess.run([base_python(), "-m", "venv", str(venv)], check=True, capture_output=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    for path in [base, *base.rglob("*")]:  # pip honours the umask; others must read it all
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            path.chmod(stat.S_IMODE(mode) | stat.S_IROTH | (stat.S_IXOTH if mode & 0o100 else 0))
    return Installed(base, wheel)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user who never saw this checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BLINDKEY", "XDG", "PYTHON", "VIRTUAL_ENV"))}  # fmt: skip
    env.update(extra)
    return env
