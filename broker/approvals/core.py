"""What every approvals change goes through: the approvals file under its lock, cached for
the hot path; its audit events; and an approver's code, checked against the lockout of
the source it came from. `Approvals` (service.py) builds on it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from blindkey.audit.events import append_event
from blindkey.audit.record import rfc3339
from blindkey.broker.approvals.codes import (
    LOCKOUT,
    CodeNeeded,
    CodeRefused,
    check_code,
    locked_until,
)
from blindkey.broker.approvals.events import ApprovalEvents
from blindkey.broker.approvals.grants import Floors, GrantIndex
from blindkey.broker.approvals.model import ApprovalsState
from blindkey.broker.approvals.pending import PendingRequests
from blindkey.broker.approvals.store import ApprovalsFile, ApprovalsUnreadable
from blindkey.broker.protocol import BrokerDenied
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import AGENT_NAME
from blindkey.config.paths import Paths
from blindkey.config.secrets_table import SecretPolicy

T = TypeVar("T")
DEFAULT_APPROVER = "default"
Clock = Callable[[], float]


def local_source() -> str:
    """The source of codes typed into this process: its Unix user (the broker names a
    CLI's the same way, from the peer credentials of its socket)."""
    return uid_source(os.getuid())


def uid_source(uid: int | None) -> str:
    return f"uid:{uid}"


def approvals_count(needed: int, have: int) -> str:
    """What a refusal adds when one approval is not enough ("" when it is)."""
    if needed <= 1:
        return ""
    return (
        f" (a grant needs {needed} approvals from distinct approvers and has {have}: each "
        "approves with their own code, `--approver NAME`)"
    )


def check_approver_name(name: str) -> str:
    if not AGENT_NAME.fullmatch(name):
        raise BlindkeyError(
            f"invalid approver name {name!r}: letters, digits, '_', '.', '-' (at most 64)"
        )
    return name


class ApprovalsCore:
    def __init__(
        self,
        paths: Paths,
        clock: Clock = time.time,
        *,
        on_change: Callable[[], None] | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.paths = paths
        self.clock = clock
        self.file = ApprovalsFile.of(paths)
        self.state = ApprovalsState()
        self.index = GrantIndex()
        self.floors = Floors({}, False)
        # Told as they happen: new and held requests, decisions, lockouts (events.py).
        self.events = ApprovalEvents(clock)
        # Calls that met a gate, kept in memory for `approvals list` (10 minutes).
        self.pending = PendingRequests(clock, on_outcome, self.events)
        self._stamp: tuple[int, int, int] | None = None
        # Why the file cannot be read now (None: it can); the floors then come from the
        # marker, and floors_known is False when there is none either.
        self.broken: str | None = None
        self.floors_known = True
        # From the broker: a grant changed (push an invalidation).
        self.on_change = on_change
        # Who is giving codes now, for the lockout (acting_for): a wrong code locks the
        # approver for its source only.
        self.source = local_source()

    # --- the state, cached for the hot path -------------------------------------------

    def load(self) -> bool:
        """Re-read the file if it changed; True when it did (or became readable again).
        Raises ApprovalsUnreadable while it cannot be read: then no grant is in force and
        the floors are the marker's (unknown without one: see refusal())."""
        stamp = self.file.stamp()
        if stamp == self._stamp:
            if self.broken is not None:
                raise ApprovalsUnreadable(self.broken)
            return False
        self._stamp = stamp
        try:
            state = self.file.load()
        except ApprovalsUnreadable as exc:
            self._break(str(exc))
            raise
        self.broken = None
        self._adopt(state)
        return True

    def _break(self, why: str) -> None:
        self.broken = why
        self.state = ApprovalsState()
        self.index = GrantIndex()
        mark = self.file.mark()
        self.floors_known = mark is not None
        self.floors = Floors(mark.floors if mark else {}, bool(mark and mark.approvers))

    def refusal(self, name: str, policy: SecretPolicy) -> BrokerDenied | None:
        """While the file cannot be read: what is released of `name` (None: it is open,
        and was never raised above open as far as the marker knows)."""
        if self.floors_known:
            tier, _ = self.floors.effective(name, policy)
            if tier == "open":
                return None
            what = f"is {tier}"
        else:
            what = "may need a grant (no marker says which tier it had)"
        return BrokerDenied(
            "broker_unavailable",
            f"secret {name} {what}, and the broker's approvals file cannot be read, so no "
            f"grant can be checked: {self.broken}",
        )

    def _adopt(self, state: ApprovalsState) -> None:
        self.broken, self.floors_known = None, True
        self.state = state
        self.index = GrantIndex.of(state.grants)
        self.floors = Floors(state.floors, state.has_approvers())
        self._stamp = self.file.stamp()

    @staticmethod
    def _has_approvers(state: ApprovalsState) -> bool:
        return state.has_approvers()

    def edit(self, work: Callable[[ApprovalsState], T]) -> T:
        """Run `work` on the state under the file's lock. A refused code is saved too
        (its counters are the lockout), then raised."""
        events: list[tuple[str, dict[str, Any]]] = []
        self._events = events
        refused: CodeRefused | None = None
        with self.file.editing() as state:
            try:
                result = work(state)
            except CodeRefused as exc:
                refused = exc
        self._adopt(state)
        for event, fields in events:
            self._audit(event, fields)
            if event == "locked_out":
                self.events.publish(event, {k: fields[k] for k in ("approver", "until", "source")})
        if refused is not None:
            raise refused
        return result

    def _audit(self, event: str, fields: dict[str, Any]) -> None:
        append_event(self.paths.audit_dir, event, fields)

    def note(self, event: str, **fields: Any) -> None:
        self._events.append((event, fields))

    @contextlib.contextmanager
    def acting_for(self, source: str) -> Iterator[None]:
        saved, self.source = self.source, source
        try:
            yield
        finally:
            self.source = saved

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- codes --------------------------------------------------------------------------

    def pick(self, state: ApprovalsState, given: str | None, *, flag: str = "--approver") -> str:
        active = sorted(n for n, a in state.approvers.items() if a.active)
        if given:
            check_approver_name(given)
            if given not in active:
                raise BlindkeyError(f"no active approver named {given}; see `blindkey totp list`")
            return given
        if not active:
            raise BlindkeyError("no approver is enrolled: `blindkey totp enroll` first")
        if len(active) == 1:
            return active[0]
        if DEFAULT_APPROVER in active:
            return DEFAULT_APPROVER
        raise BlindkeyError(f"{len(active)} approvers: name one with {flag}")

    def verify(
        self, state: ApprovalsState, name: str, code: str | None, purpose: str
    ) -> dict[str, Any]:
        if not code:
            raise CodeNeeded(f"a code of approver {name} is needed to {purpose}")
        record = state.approvers[name]
        now = self.clock()
        try:
            accepted = check_code(name, record, code, now, self.source)
        except CodeRefused as exc:
            self.note("code_refused", approver=name, reason=exc.code, purpose=purpose,
                      source=self.source)  # fmt: skip
            if exc.kind == "locked" and locked_until(record, now, self.source) == now + LOCKOUT:
                self.note("locked_out", approver=name, until=rfc3339(now + LOCKOUT),
                          source=self.source)  # fmt: skip
            raise
        return accepted

    def _consent(
        self, state: ApprovalsState, by: str | None, code: str | None, purpose: str
    ) -> str:
        """Once an approver exists, a change that weakens protection needs one's code."""
        if not self._has_approvers(state):
            return ""
        name = self.pick(state, by, flag="--by")
        self.verify(state, name, code, purpose)
        return name
