"""Approvers: enrolled (pending until a first code confirms them), listed and removed.

The first approver enrols freely; every later enrolment and every removal needs an active
approver's code. While an enrolment waits and no approver is active, nobody can consent,
so nothing about approvers changes until it is confirmed or lapses.
"""

from __future__ import annotations

from typing import Any

from blindkey.audit.record import rfc3339
from blindkey.broker.approvals import totp
from blindkey.broker.approvals.codes import locked_until, new_approver
from blindkey.broker.approvals.core import DEFAULT_APPROVER, ApprovalsCore, check_approver_name
from blindkey.broker.approvals.model import ApprovalsState
from blindkey.config.errors import BlindkeyError

# An enrolment not confirmed within this lapses. Until then it is the only one accepted
# (while no approver is active), so nobody can slip an approver of their own in between
# the human's `totp enroll` and `totp confirm`, nor take the pending seed by enrolling again.
ENROL_TTL = 600.0


class ApproverBook(ApprovalsCore):
    def _lapse_enrolments(self, state: ApprovalsState) -> None:
        now = self.clock()
        for name, record in list(state.approvers.items()):
            if not record.active and now - record.created >= ENROL_TTL:
                del state.approvers[name]
                self.note("config", change="approver_removed", approver=name, by="",
                          reason="enrolment not confirmed in time")  # fmt: skip

    def _only_pending(self, state: ApprovalsState, doing: str) -> None:
        """While enrolments wait and no approver is active, nobody can consent to anything
        about approvers: refuse, and say when the enrolment lapses."""
        if state.has_approvers() or not state.approvers:
            return
        name = min(state.approvers)
        lapses = rfc3339(state.approvers[name].created + ENROL_TTL)
        raise BlindkeyError(
            f"cannot {doing}: approver {name} is enrolled and waits for `blindkey totp "
            f"confirm --approver {name}`; until it is confirmed no other enrolment or removal "
            f"is accepted. An enrolment not confirmed by {lapses} lapses, and then one may "
            "start over"
        )

    def enroll(self, approver: str | None, by: str | None, code: str | None) -> dict[str, Any]:
        name = check_approver_name(approver or DEFAULT_APPROVER)
        seed = totp.new_seed()

        def work(state: ApprovalsState) -> dict[str, Any]:
            self._lapse_enrolments(state)
            existing = state.approvers.get(name)
            if existing is not None and existing.active:
                raise BlindkeyError(f"approver {name} is already enrolled; pick another name")
            self._only_pending(state, f"enrol approver {name}")
            consented = self._consent(state, by, code, f"enrol approver {name}")
            state.approvers[name] = new_approver(seed, self.clock())
            self.note("config", change="approver_enrolled", approver=name, by=consented)
            return {"approver": name, "otpauth_uri": totp.otpauth_uri(name, seed, totp.account())}

        return self.edit(work)

    def confirm(self, approver: str | None, code: str | None) -> dict[str, Any]:
        def work(state: ApprovalsState) -> dict[str, Any]:
            self._lapse_enrolments(state)
            waiting = sorted(n for n, a in state.approvers.items() if not a.active)
            name = approver or (waiting[0] if len(waiting) == 1 else DEFAULT_APPROVER)
            check_approver_name(name)
            record = state.approvers.get(name)
            if record is None or record.active:
                raise BlindkeyError(
                    f"no enrolment of {name} waits for confirmation; `blindkey totp enroll`"
                )
            self.verify(state, name, code, f"confirm approver {name}")
            codes = totp.new_recovery_codes()
            record.recovery = [totp.hash_recovery(c) for c in codes]
            record.active = True
            self.note("config", change="approver_confirmed", approver=name)
            return {"approver": name, "recovery_codes": codes}

        return self.edit(work)

    def approvers(self) -> list[dict[str, Any]]:
        self.load()
        now = self.clock()
        rows = []
        for name, record in sorted(self.state.approvers.items()):
            if not record.active and now - record.created >= ENROL_TTL:
                continue  # lapsed: dropped by the next change
            until = locked_until(record, now)
            status = "active" if record.active else "pending"
            rows.append(
                {
                    "approver": name,
                    "status": "locked" if until is not None else status,
                    "locked_until": rfc3339(until) if until is not None else None,
                    "recovery_codes_left": len(record.recovery),
                }
            )
        return rows

    def remove(self, name: str, by: str | None, code: str | None) -> None:
        check_approver_name(name)

        def work(state: ApprovalsState) -> None:
            self._lapse_enrolments(state)
            if name not in state.approvers:
                raise BlindkeyError(f"no approver named {name}; see `blindkey totp list`")
            self._only_pending(state, f"remove approver {name}")
            consented = self._consent(state, by, code, f"remove approver {name}")
            del state.approvers[name]
            self.note("config", change="approver_removed", approver=name, by=consented)

        self.edit(work)
