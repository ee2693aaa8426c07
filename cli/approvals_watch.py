"""`blindkey approvals watch`: the calls waiting for a human, live, answered from here.

Fed by the broker's event stream (`approvals.watch`, broker/approvals/events.py): the
broker says when a request arrives, a call starts waiting, or one is approved, denied or
lapses, so nothing here reads the disk in a loop. On a terminal the list is redrawn in
place (the ages tick each second) above a prompt; otherwise each event is one line
(`--json`: one JSON object) and each line of stdin a command:

    approve ID|N CODE [APPROVER]   the same as `blindkey approve --request ID`: TOTP or a
                                   recovery code, 2-of-2, the lockout
    deny ID|N                      the same as `blindkey deny --request ID`
    list | help | quit

N is a request's number in the list. A code typed on the terminal is shown as stars.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import sys
import termios
import time
import tty
from dataclasses import dataclass, field
from typing import Any

import orjson

from blindkey.broker.approvals.codes import CodeNeeded, CodeRefused
from blindkey.broker.approvals.events import WATCH_OP
from blindkey.broker.approvals_link import NOT_THIS_USERS, call
from blindkey.broker.link import Link, NotPermitted, NotRunning, connect
from blindkey.broker.protocol import BrokerUnavailable
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

HELP = "commands: approve ID|N CODE [APPROVER], deny ID|N, list, quit (N: the number in the list)"
GONE = ("approved", "denied", "expired")
HEADERS = ["#", "ID", "AGENT", "SECRET", "METHOD", "DESTINATION", "PATH", "WAITING"]
NOTES_SHOWN = 6


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def describe(event: dict[str, Any]) -> str:
    """One line a person reads for an event."""
    kind = event["event"]
    if kind == "locked_out":
        return f"approver {event['approver']} is locked out until {event['until']}"
    what = (
        f"{event['approval_id']}: {event['agent']} {event['method']} {event['covers']}"
        f"{event['path']} with {event['secret']}"
    )
    told = {
        "pending": "asks", "held": "waits (held call)", "approved": "approved",
        "denied": "denied", "expired": "expired unanswered", "listed": "waiting",
    }  # fmt: skip
    return f"{told.get(kind, kind)} {what}"


@dataclass
class Board:
    """The requests waiting, by id, in arrival order, as the events leave them."""

    rows: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def load(self, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The snapshot; returned as events ("listed")."""
        now, found = time.monotonic(), []
        for row in listed:
            event = {**row, "event": "listed", "approval_id": row["id"]}
            event.pop("id", None)
            self.rows[event["approval_id"]] = (event, now - float(row.get("age_s", 0)))
            found.append(event)
        return found

    def apply(self, event: dict[str, Any]) -> None:
        kind, approval_id = event["event"], event.get("approval_id")
        if approval_id is None:
            return
        if kind in GONE:
            self.rows.pop(approval_id, None)
        else:
            self.rows[approval_id] = (event, time.monotonic() - float(event.get("age_s", 0)))

    def pick(self, token: str) -> str:
        """A request by its id or its number in the list."""
        if token.isdigit():
            ids = list(self.rows)
            if not 1 <= int(token) <= len(ids):
                raise BlindkeyError(f"no request number {token}: {len(ids)} are listed")
            return ids[int(token) - 1]
        return token

    def table(self) -> list[list[str]]:
        now = time.monotonic()
        return [
            [str(n), row["approval_id"], row["agent"], row["secret"], row["method"],
             row["covers"], row["path"],
             _clock(now - since) + (" held" if row.get("held") else "")]
            for n, (row, since) in enumerate(self.rows.values(), 1)
        ]  # fmt: skip

    def note(self, text: str) -> None:
        self.notes = [*self.notes, f"{time.strftime('%H:%M:%S')} {text}"][-NOTES_SHOWN:]


class Answerer:
    """The commands typed into the watch, done as `approve --request` and `deny` do them."""

    def __init__(self, paths: Paths, board: Board, approver: str | None) -> None:
        self.paths, self.board, self.approver = paths, board, approver

    def run(self, line: str) -> tuple[bool, str] | None:
        """(done, what to say); None: quit."""
        words = line.split()
        if not words or words[0] in ("help", "?"):
            return True, HELP
        verb, rest = words[0], words[1:]
        if verb in ("quit", "q", "exit"):
            return None
        try:
            if verb in ("approve", "a") and len(rest) in (2, 3):
                return True, self._approve(*rest)
            if verb in ("deny", "d") and len(rest) == 1:
                return True, self._deny(rest[0])
            if verb in ("list", "l"):
                return True, f"{len(self.board.rows)} waiting"
        except CodeRefused as exc:
            return False, f"refused: {exc}"
        except (CodeNeeded, BlindkeyError) as exc:
            return False, str(exc)
        return False, f"not understood ({HELP})"

    def _approve(self, token: str, code: str, approver: str | None = None) -> str:
        approval_id = self.board.pick(token)
        grant = call(
            self.paths, "approve_request", request=approval_id, code=code,
            approver=approver or self.approver,
        )  # fmt: skip
        have, needed = len(grant["approvers"]), grant["needed"]
        if have < needed:
            return (
                f"{approval_id}: approved by {', '.join(grant['approvers'])}; "
                f"{needed - have} more approver(s) needed"
            )
        until = grant["expires"]
        return f"{approval_id}: {grant['secret']} granted for {grant['covers']} until {until}"

    def _deny(self, token: str) -> str:
        approval_id = self.board.pick(token)
        call(self.paths, "deny", request=approval_id)
        return f"{approval_id}: denied"


class Lines:
    """No terminal: one line per event and per answer (JSON objects with --json)."""

    def __init__(self, json: bool) -> None:
        self.json = json

    def event(self, event: dict[str, Any]) -> None:
        if self.json:
            sys.stdout.write(orjson.dumps(event).decode() + "\n")
        else:
            sys.stdout.write(f"{time.strftime('%H:%M:%S')} {describe(event)}\n")
        sys.stdout.flush()

    def answer(self, done: bool, text: str) -> None:
        if self.json:
            said = {"event": "answer", "ok": done, "message": text}
            sys.stdout.write(orjson.dumps(said).decode() + "\n")
        else:
            sys.stdout.write(f"{'ok' if done else 'refused'}: {text}\n")
        sys.stdout.flush()

    def draw(self, board: Board, typed: str) -> None:
        pass


def _masked(typed: str) -> str:
    """The prompt as shown: a code (third word of an approve) as stars."""
    words = typed.split(" ")
    if len(words) > 2 and words[0] in ("approve", "a"):
        words[2:] = ["*" * len(w) for w in words[2:3]] + words[3:]
    return " ".join(words)


class Screen(Lines):
    """A terminal: the list redrawn in place, the last events under it, then the prompt."""

    def __init__(self, board: Board) -> None:
        super().__init__(json=False)
        self.board = board

    def event(self, event: dict[str, Any]) -> None:
        self.board.note(describe(event))

    def answer(self, done: bool, text: str) -> None:
        self.board.note(("" if done else "refused: ") + text)

    def draw(self, board: Board, typed: str) -> None:
        width = shutil.get_terminal_size().columns
        rows = board.table()
        widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(len(HEADERS))]
        lines = [f"blindkey approvals watch: {len(rows)} waiting. {HELP}", ""]
        for row in [HEADERS, *rows]:
            lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
        lines += ["", *board.notes, "", f"> {_masked(typed)}"]
        text = "\r\n".join(line[:width] for line in lines)
        sys.stdout.write("\x1b[H\x1b[2J" + text)
        sys.stdout.flush()


def _open(paths: Paths) -> tuple[Link, int, list[dict[str, Any]]]:
    """A connection streaming events, its request id, and the requests waiting now."""
    try:
        link = connect(paths)
    except NotRunning as exc:
        raise BlindkeyError(f"{exc}: nothing can be waiting for approval") from exc
    except NotPermitted as exc:
        raise BlindkeyError(NOT_THIS_USERS) from exc
    request_id = link.send(WATCH_OP)
    while True:
        for frame in link.receive():
            if frame.get("id") != request_id:
                continue
            if "error" in frame:
                link.close()
                raise BlindkeyError(str(frame.get("message", frame["error"])))
            return link, request_id, list(frame.get("pending") or [])


class Keys:
    """Keys typed on a terminal in cbreak mode, edited into lines."""

    def __init__(self) -> None:
        self.typed = ""

    def feed(self, data: bytes) -> list[str | None]:
        """Lines finished by this input (None: end of input)."""
        done: list[str | None] = []
        for char in data.decode(errors="ignore"):
            if char in "\r\n":
                done.append(self.typed)
                self.typed = ""
            elif char in "\x7f\b":
                self.typed = self.typed[:-1]
            elif char == "\x15":  # ^U
                self.typed = ""
            elif char == "\x04" and not self.typed:  # ^D
                done.append(None)
            elif char.isprintable():
                self.typed += char
        return done


class StdinLines(Keys):
    """Lines of a pipe or file."""

    def feed(self, data: bytes) -> list[str | None]:
        if not data:
            return [None]
        self.typed += data.decode(errors="replace")
        *lines, self.typed = self.typed.split("\n")
        return list(lines)


def _frames(link: Link) -> list[dict[str, Any]]:
    try:
        return link.receive()
    except BrokerUnavailable as exc:
        raise BlindkeyError(
            f"{exc}: the broker went away; watch again once it is back (`blindkey proxy status`)"
        ) from exc


def _loop(
    link: Link, request_id: int, board: Board, out: Lines, answerer: Answerer, keys: Keys
) -> int:
    """Until `quit`, ^D on a terminal, or the broker going away (exit 1)."""
    # select(2), not epoll: stdin may be a file or /dev/null, which epoll refuses.
    selector = selectors.SelectSelector()
    selector.register(link.fileno(), selectors.EVENT_READ, "broker")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "input")
    terminal = isinstance(out, Screen)
    while True:
        out.draw(board, keys.typed)
        for key, _ in selector.select(1.0 if terminal else None):
            if key.data == "broker":
                for frame in _frames(link):
                    if frame.get("id") == request_id and "event" in frame:
                        board.apply(frame["event"])
                        out.event(frame["event"])
                continue
            for line in keys.feed(os.read(sys.stdin.fileno(), 4096)):
                if line is None and not terminal:
                    # Input ended (a pipe closed): keep telling what happens.
                    selector.unregister(sys.stdin.fileno())
                    break
                answer = None if line is None else answerer.run(line)
                if answer is None:
                    return 0
                out.answer(*answer)


def cmd_approvals_watch(paths: Paths, args: argparse.Namespace) -> int:
    link, request_id, listed = _open(paths)
    board = Board()
    answerer = Answerer(paths, board, args.approver)
    terminal = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    try:
        snapshot = board.load(listed)
        if not terminal:
            out = Lines(args.json)
            for event in snapshot:
                out.event(event)
            return _loop(link, request_id, board, out, answerer, StdinLines())
        saved = termios.tcgetattr(sys.stdin.fileno())
        tty.setcbreak(sys.stdin.fileno())
        try:
            return _loop(link, request_id, board, Screen(board), answerer, Keys())
        finally:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            sys.stdout.write("\r\n")
    except KeyboardInterrupt:
        return 130
    finally:
        link.close()
