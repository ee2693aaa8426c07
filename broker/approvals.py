"""The broker's approvals: approvers, grants, tier floors and calls waiting for a human.

One object, `Approvals`, used by the broker process (which serves it over its socket) and,
when no broker runs, by the CLI in-process on the same files: whoever can do the latter can
read the broker's files anyway, i.e. is the broker's user. The clock is injected, so tests
never wait for a TOTP step, a lockout or an expiry.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from blindkey.audit.events import append_event
from blindkey.audit.record import rfc3339
from blindkey.broker import totp
from blindkey.broker.approvals_codes import (
    LOCKOUT,
    CodeNeeded,
    CodeRefused,
    check_code,
    locked_until,
    new_approver,
)
from blindkey.broker.approvals_pending import PendingRequests
from blindkey.broker.approvals_store import ApprovalsFile, State
from blindkey.broker.grants import (
    RANK,
    Floors,
    GrantIndex,
    Scope,
    alive,
    complete,
    covers_text,
    drop_expired,
    find_grant,
    grant_key,
    new_grant,
    public_grant,
    span_text,
)
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import AGENT_NAME, SECRET_NAME, SecretPolicy, Settings
from blindkey.config.paths import Paths
from blindkey.config.stores import PRODUCTION

T = TypeVar("T")
DEFAULT_APPROVER = "default"
# An enrolment not confirmed within this lapses. Until then it is the only one accepted
# (while no approver is active), so nobody can slip an approver of their own in between
# the human's `totp enroll` and `totp confirm`, nor take the pending seed by enrolling again.
ENROL_TTL = 600.0
GATED_TIERS = ("controlled", "restricted")
Clock = Callable[[], float]


def local_source() -> str:
    """The source of codes typed into this process: its Unix user (the broker names a
    CLI's the same way, from the peer credentials of its socket)."""
    return uid_source(os.getuid())


def uid_source(uid: int | None) -> str:
    return f"uid:{uid}"


def check_approver_name(name: str) -> str:
    if not AGENT_NAME.fullmatch(name):
        raise BlindkeyError(
            f"invalid approver name {name!r}: letters, digits, '_', '.', '-' (at most 64)"
        )
    return name


class Approvals:
    def __init__(self, paths: Paths, clock: Clock = time.time) -> None:
        self.paths = paths
        self.clock = clock
        self.file = ApprovalsFile.of(paths)
        self.state: State = {}
        self.index = GrantIndex()
        self.floors = Floors({}, False)
        # Calls that met a gate, kept in memory for `approvals list` (10 minutes).
        self.pending = PendingRequests(clock)
        self._stamp: tuple[int, int, int] | None = None
        # Set by the broker: a grant changed (push an invalidation), a request resolved.
        self.on_change: Callable[[], None] | None = None
        # Who is giving codes now, for the lockout (acting_for): a wrong code locks the
        # approver for its source only.
        self.source = local_source()

    # --- the state, cached for the hot path -------------------------------------------

    def load(self) -> bool:
        """Re-read the file if it changed; True when it did."""
        stamp = self.file.stamp()
        if stamp == self._stamp:
            return False
        self._adopt(self.file.load())
        self._stamp = stamp
        return True

    def _adopt(self, state: State) -> None:
        self.state = state
        self.index = GrantIndex.of(state["grants"])
        self.floors = Floors(state["floors"], self._has_approvers(state))
        self._stamp = self.file.stamp()

    @staticmethod
    def _has_approvers(state: State) -> bool:
        return any(a.get("active") for a in state["approvers"].values())

    def edit(self, work: Callable[[State], T]) -> T:
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

    def pick(self, state: State, given: str | None, *, flag: str = "--approver") -> str:
        active = sorted(n for n, a in state["approvers"].items() if a.get("active"))
        if given:
            check_approver_name(given)
            if given not in active:
                raise BlindkeyError(f"no active approver named {given}; see `blindkey totp list`")
            return given
        if not active:
            raise BlindkeyError("no approver is enrolled: `blindkey totp enroll` first")
        if len(active) == 1:
            return str(active[0])
        if DEFAULT_APPROVER in active:
            return DEFAULT_APPROVER
        raise BlindkeyError(f"{len(active)} approvers: name one with {flag}")

    def verify(self, state: State, name: str, code: str | None, purpose: str) -> dict[str, Any]:
        if not code:
            raise CodeNeeded(f"a code of approver {name} is needed to {purpose}")
        record = state["approvers"][name]
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

    def _consent(self, state: State, by: str | None, code: str | None, purpose: str) -> str:
        """Once an approver exists, a change that weakens protection needs one's code."""
        if not self._has_approvers(state):
            return ""
        name = self.pick(state, by, flag="--by")
        self.verify(state, name, code, purpose)
        return name

    # --- approvers ----------------------------------------------------------------------

    def _lapse_enrolments(self, state: State) -> None:
        now = self.clock()
        for name, record in list(state["approvers"].items()):
            if not record.get("active") and now - float(record.get("created", 0.0)) >= ENROL_TTL:
                del state["approvers"][name]
                self.note("config", change="approver_removed", approver=name, by="",
                          reason="enrolment not confirmed in time")  # fmt: skip

    def _only_pending(self, state: State, doing: str) -> None:
        """While enrolments wait and no approver is active, nobody can consent to anything
        about approvers: refuse, and say when the enrolment lapses."""
        if self._has_approvers(state) or not state["approvers"]:
            return
        name, record = sorted(state["approvers"].items())[0]
        lapses = rfc3339(float(record.get("created", 0.0)) + ENROL_TTL)
        raise BlindkeyError(
            f"cannot {doing}: approver {name} is enrolled and waits for `blindkey totp "
            f"confirm --approver {name}`; until it is confirmed no other enrolment or removal "
            f"is accepted. An enrolment not confirmed by {lapses} lapses, and then one may "
            "start over"
        )

    def enroll(self, approver: str | None, by: str | None, code: str | None) -> dict[str, Any]:
        name = check_approver_name(approver or DEFAULT_APPROVER)
        seed = totp.new_seed()

        def work(state: State) -> dict[str, Any]:
            self._lapse_enrolments(state)
            existing = state["approvers"].get(name)
            if existing is not None and existing.get("active"):
                raise BlindkeyError(f"approver {name} is already enrolled; pick another name")
            self._only_pending(state, f"enrol approver {name}")
            consented = self._consent(state, by, code, f"enrol approver {name}")
            state["approvers"][name] = new_approver(seed, self.clock())
            self.note("config", change="approver_enrolled", approver=name, by=consented)
            return {"approver": name, "otpauth_uri": totp.otpauth_uri(name, seed, totp.account())}

        return self.edit(work)

    def confirm(self, approver: str | None, code: str | None) -> dict[str, Any]:
        def work(state: State) -> dict[str, Any]:
            self._lapse_enrolments(state)
            waiting = sorted(n for n, a in state["approvers"].items() if not a.get("active"))
            name = approver or (waiting[0] if len(waiting) == 1 else DEFAULT_APPROVER)
            check_approver_name(name)
            record = state["approvers"].get(name)
            if record is None or record.get("active"):
                raise BlindkeyError(
                    f"no enrolment of {name} waits for confirmation; `blindkey totp enroll`"
                )
            self.verify(state, name, code, f"confirm approver {name}")
            codes = totp.new_recovery_codes()
            record["recovery"] = [totp.hash_recovery(c) for c in codes]
            record["active"] = True
            self.note("config", change="approver_confirmed", approver=name)
            return {"approver": name, "recovery_codes": codes}

        return self.edit(work)

    def approvers(self) -> list[dict[str, Any]]:
        self.load()
        now = self.clock()
        rows = []
        for name, record in sorted(self.state["approvers"].items()):
            if not record.get("active") and now - float(record.get("created", 0)) >= ENROL_TTL:
                continue  # lapsed: dropped by the next change
            until = locked_until(record, now)
            status = "active" if record.get("active") else "pending"
            rows.append(
                {
                    "approver": name,
                    "status": "locked" if until is not None else status,
                    "locked_until": rfc3339(until) if until is not None else None,
                    "recovery_codes_left": len(record.get("recovery", [])),
                }
            )
        return rows

    def remove(self, name: str, by: str | None, code: str | None) -> None:
        check_approver_name(name)

        def work(state: State) -> None:
            self._lapse_enrolments(state)
            if name not in state["approvers"]:
                raise BlindkeyError(f"no approver named {name}; see `blindkey totp list`")
            self._only_pending(state, f"remove approver {name}")
            consented = self._consent(state, by, code, f"remove approver {name}")
            del state["approvers"][name]
            self.note("config", change="approver_removed", approver=name, by=consented)

        self.edit(work)

    # --- grants -------------------------------------------------------------------------

    def effective(self, name: str, policy: SecretPolicy) -> tuple[str, int]:
        """The tier and approvals count served: never below what an approver last allowed."""
        return self.floors.effective(name, policy)

    def in_force(self, name: str, env: str, agent: str, target: Scope | None = None) -> bool:
        return self.index.covers(name, env, agent, self.clock(), target)

    def approve(
        self,
        settings: Settings,
        secret: str,
        env: str,
        agent: str | None,
        duration: float | None,
        approver: str | None,
        code: str | None,
        request: str | None = None,
        scope: Scope | None = None,
    ) -> dict[str, Any]:
        """A grant of `secret` in `env` to `agent` (None: every agent), for `scope` (the
        scheme, host and port of the request approved) or, without one, for wherever the
        secret may go."""
        if not SECRET_NAME.fullmatch(secret):
            raise BlindkeyError(f"invalid secret name {secret!r}")
        if env not in settings.environments:
            raise BlindkeyError(f"unknown environment {env!r}")
        if agent is not None and agent != "*" and not AGENT_NAME.fullmatch(agent):
            raise BlindkeyError(f"invalid agent name {agent!r}")
        self.load()
        tier, needed = self.effective(secret, settings.policy(secret))
        longest = settings.approvals.grant_ttl(tier)
        if longest is None:
            raise BlindkeyError(f"{secret} is open: it needs no grant")
        if duration is not None and (duration <= 0 or duration > longest):
            raise BlindkeyError(
                f"--for may shorten a {tier} grant, not lengthen it past {span_text(longest)}"
            )
        span = duration or longest
        whom = agent or "*"

        def work(state: State) -> dict[str, Any]:
            name = self.pick(state, approver)
            now = self.clock()
            self.verify(state, name, code, f"approve {secret}")
            drop_expired(state["grants"], now)
            # A grant still waiting for approvers; approving one in force starts its
            # renewal, and the old one stays in force until the renewal is complete.
            grant = find_grant(state["grants"], secret, env, whom, scope)
            if grant is None:
                grant = new_grant(secret, env, whom, scope, needed, span, now)
                state["grants"].append(grant)
            elif name in grant["approvers"]:
                # The code is spent all the same (saved below): it was shown.
                return {**grant, "already": name}
            grant["approvers"].append(name)
            grant["span"] = min(float(grant["span"]), span)
            grant["needed"] = max(int(grant["needed"]), needed)
            if complete(grant):
                grant["expires"] = now + float(grant["span"])
                key = (secret, env, whom, scope)
                state["grants"] = [g for g in state["grants"] if g is grant or grant_key(g) != key]
            self.note(
                "grant",
                grant=grant["id"],
                secret=secret,
                env=env,
                agent=whom,
                approver=name,
                approvers=list(grant["approvers"]),
                needed=grant["needed"],
                complete=complete(grant),
                expires=rfc3339(float(grant["expires"])),
                request=request,
                covers=covers_text(scope),
            )
            return dict(grant)

        grant = self.edit(work)
        if "already" in grant:
            raise BlindkeyError(
                f"{grant['already']} has already approved {secret}; it needs "
                f"{grant['needed'] - len(grant['approvers'])} more distinct approver(s)"
            )
        if complete(grant):
            self._changed()
            self.pending.settle(secret, env, whom, scope)
        return public_grant(grant)

    def approve_request(
        self,
        settings: Settings,
        request_id: str,
        duration: float | None,
        approver: str | None,
        code: str | None,
    ) -> dict[str, Any]:
        pending = self.pending.get(request_id)
        grant = self.approve(
            settings,
            pending.secret,
            pending.env,
            pending.agent,
            duration,
            approver,
            code,
            request=request_id,
            scope=(pending.scheme, pending.host, pending.port),
        )
        return grant

    def deny(self, request_id: str) -> dict[str, Any]:
        pending = self.pending.remove(request_id)
        self._audit(
            "grant_revoked",
            {"request": request_id, "secret": pending.secret, "env": pending.env,
             "agent": pending.agent, "reason": "denied"},
        )  # fmt: skip
        self.pending.tell(request_id, "denied")
        return pending.public(self.clock())

    def grants(self) -> list[dict[str, Any]]:
        self.load()
        now = self.clock()
        return [public_grant(g) for g in self.state["grants"] if alive(g, now)]

    def revoke(self, secret: str | None, env: str | None, agent: str | None, every: bool) -> int:
        if not every and not secret:
            raise BlindkeyError("name the SECRET whose grants to revoke, or --all")

        def matches(grant: dict[str, Any]) -> bool:
            if every:
                return True
            return (
                grant["secret"] == secret
                and (env is None or grant["env"] == env)
                and (agent is None or grant["agent"] == agent)
            )

        def work(state: State) -> int:
            drop_expired(state["grants"], self.clock())
            gone = [g for g in state["grants"] if matches(g)]
            if not gone:
                raise BlindkeyError("no grant matches; see `blindkey grants list`")
            for grant in gone:
                state["grants"].remove(grant)
                self.note("grant_revoked", grant=grant["id"], secret=grant["secret"],
                           env=grant["env"], agent=grant["agent"])  # fmt: skip
            return len(gone)

        count = self.edit(work)
        self._changed()
        return count

    def expire(self) -> bool:
        """Drop grants whose time ran out (and audit it); True when one was in force."""
        now = self.clock()
        if not self.index.expired(now):
            self.pending.forget_old(now)
            return False

        def work(state: State) -> bool:
            gone = drop_expired(state["grants"], now)
            for grant in gone:
                if complete(grant):
                    self.note("grant_expired", grant=grant["id"], secret=grant["secret"],
                               env=grant["env"], agent=grant["agent"])  # fmt: skip
            return any(complete(g) for g in gone)

        changed = self.edit(work)
        if changed:
            self._changed()
        return changed

    def consent_to_copy(
        self, source: str, target: str, by: str | None, code: str | None
    ) -> dict[str, Any]:
        """`environment copy`: copying from production (live values), or into an
        environment whose grants would then release the copied values, needs an approver's
        code once one exists. Returns the consenting approver ("" when none was needed)."""

        def work(state: State) -> dict[str, Any]:
            drop_expired(state["grants"], self.clock())
            granted = any(g["env"] == target for g in state["grants"])
            if source != PRODUCTION and not granted:
                return {"approver": ""}
            why = f"{source}'s live values" if source == PRODUCTION else "grants in force there"
            approver = self._consent(state, by, code, f"copy {source} into {target} ({why})")
            return {"approver": approver}

        return self.edit(work)

    # --- tiers: what an approver allowed is the floor -------------------------------------

    def follow(self, settings: Settings) -> None:
        """config.toml may raise a tier freely; lowering it needs a code (set_policy), so a
        hand edit that lowers one leaves the broker serving the floor."""
        self.load()
        if self.floors.follows(settings.secrets):
            return
        self.edit(lambda state: Floors(state["floors"], self._has_approvers(state)).follow(
            settings.secrets))  # fmt: skip

    def set_policy(
        self,
        settings: Settings,
        name: str,
        tier: str | None,
        approvals: int | None,
        by: str | None,
        code: str | None,
        anyway: bool = False,
    ) -> dict[str, Any]:
        """Returns {"approvable": False} when the tier is gated and no approver is active
        (allowed only `anyway`: whoever enrols first could then approve it)."""
        self.load()
        current_tier, current_needed = self.effective(name, settings.policy(name))
        new_tier = tier or current_tier
        new_needed = approvals or current_needed
        lowers = RANK[new_tier] < RANK[current_tier] or new_needed < current_needed

        def work(state: State) -> dict[str, Any]:
            approvable = self._has_approvers(state)
            if tier in GATED_TIERS and not approvable and not anyway:
                raise BlindkeyError(
                    f"no approver is active: a {tier} secret waits for a grant nobody can "
                    "give yet, and whoever enrols first could give it. Enrol one first "
                    "(`blindkey totp enroll`, then `blindkey totp confirm`), or pass --yes "
                    "to set it anyway"
                )
            if lowers:
                self._consent(state, by, code, f"lower the protection of {name}")
            state["floors"][name] = {"tier": new_tier, "approvals": new_needed}
            return {"approvable": approvable}

        return self.edit(work)

    def forget_secret(
        self, settings: Settings, name: str, env: str, last: bool, by: str | None, code: str | None
    ) -> None:
        self.load()
        tier, _ = self.effective(name, settings.policy(name))

        def work(state: State) -> None:
            if tier != "open":
                self._consent(state, by, code, f"delete {tier} secret {name}")
            state["grants"] = [
                g for g in state["grants"] if not (g["secret"] == name and g["env"] == env)
            ]
            if last:
                state["floors"].pop(name, None)

        self.edit(work)
        self._changed()
