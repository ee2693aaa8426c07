"""`--against REV`: an earlier commit of blindkey as one more target of the same run.

A cost is a comparison of two builds; run apart, their figures differ by more than the
cost itself on this shared machine (the same commit measured 2,436 and 3,663 req/s at 32
connections half an hour apart). So the earlier commit runs beside this one, round by
round, with the same upstream, secret and wrk settings, and the report gives the median of
per-round ratios.

The earlier tree is taken with `git archive` (nothing of the checkout changes) and made
importable under the names the wheel installs (`blindkey.proxy` is its `proxy/` folder and
so on, as its own pyproject.toml maps them); it runs on this venv's Python and
dependencies, with PYTHONPATH ahead of the editable install.
"""

from __future__ import annotations

import subprocess
import tarfile
import tomllib
from pathlib import Path

from bench.tools import ROOT, BenchError

GIT_TIMEOUT = 60.0


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, timeout=GIT_TIMEOUT, check=False
    )


def resolve(rev: str) -> str:
    """The short commit `rev` names, or a BenchError that says it names none."""
    result = _git("rev-parse", "--verify", "--short", f"{rev}^{{commit}}")
    if result.returncode != 0:
        raise BenchError(f"--against {rev}: not a commit of this repository")
    return result.stdout.decode().strip()


def build(rev: str, work: Path) -> Path:
    """Unpack `rev` under `work`; the directory to put on PYTHONPATH to run it."""
    source, lib = work / "src", work / "lib" / "blindkey"
    source.mkdir(parents=True)
    lib.mkdir(parents=True)
    archive = work / "tree.tar"
    result = _git("archive", "--format=tar", f"--output={archive}", rev)
    if result.returncode != 0:
        raise BenchError(f"git archive {rev} failed: {result.stderr.decode().strip()[-400:]}")
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    try:
        project = tomllib.loads((source / "pyproject.toml").read_text())
        mapping: dict[str, str] = project["tool"]["setuptools"]["package-dir"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise BenchError(f"{rev}: no [tool.setuptools.package-dir] to import it by") from exc
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == "blindkey":  # nested packages follow their parent
            (lib / parts[1]).symlink_to(source / folder, target_is_directory=True)
    if not (lib / "proxy").is_dir():
        raise BenchError(f"{rev}: its pyproject.toml maps no blindkey.proxy package")
    return lib.parent
