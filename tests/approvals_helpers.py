"""Approvers for tests: enrolled and confirmed through the real CLI, codes made by pyotp
from the seed the enrolment printed (as a phone's authenticator app would)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp

from blindkey.cli.main import main


def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """`blindkey ARGS` in this process (the broker, if one runs, does the work)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        _stdin(stdin),
    ):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _stdin(text: str) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


async def acli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """cli() off the event loop: an in-process proxy must stay free to acknowledge."""
    return await asyncio.to_thread(cli, *args, stdin=stdin)


@dataclass
class Approver:
    name: str
    seed: str
    recovery: list[str] = field(default_factory=list)
    used: set[int] = field(default_factory=set)

    def code(self, now: float | None = None) -> str:
        """A code not used yet: this step's, else the next one's (one step of drift)."""
        step = int((time.time() if now is None else now) // 30)
        for candidate in (step, step + 1):
            if candidate not in self.used:
                self.used.add(candidate)
                return pyotp.TOTP(self.seed).at(candidate * 30)
        raise AssertionError("this test used more than two codes of one approver per step")


def seed_of(uri: str) -> str:
    return parse_qs(urlsplit(uri).query)["secret"][0]


def enrol(name: str = "default", *consent: str) -> Approver:
    code, out, err = cli("totp", "enroll", "--approver", name, "--json", *consent)
    assert code == 0, err
    approver = Approver(name, seed_of(json.loads(out)["otpauth_uri"]))
    code, out, err = cli("totp", "confirm", "--approver", name, "--code", approver.code())
    assert code == 0, err
    approver.recovery = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert len(approver.recovery) == 10
    return approver


def audit_events(audit_dir: Path, event: str) -> list[dict[str, Any]]:
    """Every audit record of one event kind, in file order."""
    found = []
    for path in sorted(audit_dir.glob("*.jsonl*")):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
    return found
