"""How commands speak: JSON for scripts, short prose for people."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import orjson


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")


def warn(text: str) -> None:
    sys.stderr.write(f"blindkey: warning: {text}\n")


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        say("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
