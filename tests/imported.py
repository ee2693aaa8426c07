"""What a real process imported, read from its own report: run it with
PYTHONPROFILEIMPORTTIME=1 and its stderr lists each module as its import completes, in
order, so the text read at a moment is what the process had loaded by then."""

from __future__ import annotations

from pathlib import Path

REPORT = {"PYTHONPROFILEIMPORTTIME": "1"}
_PREFIX = "import time:"


def modules(text: str) -> list[str]:
    """The modules a PYTHONPROFILEIMPORTTIME report names, in the order they were loaded."""
    found = []
    for line in text.splitlines():
        if not line.startswith(_PREFIX):
            continue
        name = line.rsplit("|", 1)[-1].strip()
        if name != "imported package":  # the report's header line
            found.append(name)
    return found


def imported(report: Path) -> set[str]:
    return set(modules(report.read_text(errors="replace")))


def loaded(names: set[str], package: str) -> list[str]:
    """The modules of `package` (itself or below it) among `names`."""
    return sorted(n for n in names if n == package or n.startswith(package + "."))
