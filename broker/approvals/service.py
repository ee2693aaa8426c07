"""The broker's approvals: approvers, grants, tier floors and calls waiting for a human.

One object, `Approvals`, used by the broker process (which serves it over its socket) and,
when no broker runs, by the CLI in-process on the same files: whoever can do the latter can
read the broker's files anyway, i.e. is the broker's user. The clock is injected, so tests
never wait for a TOTP step, a lockout or an expiry. The file, its lock and the codes are in
core.py; approvers in approvers.py; grants and tier floors here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from blindkey.audit.record import rfc3339
from blindkey.broker.approvals.approvers import ApproverBook
from blindkey.broker.approvals.grants import (
    Floors,
    covers_text,
    drop_expired,
    find_grant,
    new_grant,
    public_grant,
    span_text,
)
from blindkey.broker.approvals.model import RANK, ApprovalsState, Floor, Grant, Scope
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import AGENT_NAME, SECRET_NAME, Settings
from blindkey.config.secrets_table import SecretPolicy
from blindkey.config.stores import PRODUCTION

GATED_TIERS = ("controlled", "restricted")
# (env, secret) -> whether the store may hold it (False only when it surely does not).
Exists = Callable[[str, str], bool]
# Checks an approver's proof other than a code (a passkey: passkeys.py) under the file's lock.
Proof = Callable[[ApprovalsState, str], None]


@dataclass(frozen=True, slots=True)
class GrantAsk:
    """What one approval asks for, checked before the file is locked."""

    secret: str
    env: str
    agent: str  # "*": every agent
    scope: Scope | None
    needed: int
    span: float
    request: str | None


def _check_names(
    settings: Settings, secret: str, env: str, agent: str | None, exists: Exists | None
) -> None:
    if not SECRET_NAME.fullmatch(secret):
        raise BlindkeyError(f"invalid secret name {secret!r}")
    if env not in settings.environments:
        raise BlindkeyError(f"unknown environment {env!r}")
    if exists is not None and not exists(env, secret):
        raise BlindkeyError(
            f"no secret named {secret} in environment {env}: nothing to approve; see "
            "`blindkey secrets list`"
        )
    if agent is not None and agent != "*" and not AGENT_NAME.fullmatch(agent):
        raise BlindkeyError(f"invalid agent name {agent!r}")


class Approvals(ApproverBook):
    # --- grants -------------------------------------------------------------------------

    def effective(self, name: str, policy: SecretPolicy) -> tuple[str, int]:
        """The tier and approvals count served: never below what an approver last allowed."""
        return self.floors.effective(name, policy)

    def in_force(self, name: str, env: str, agent: str, target: Scope | None = None) -> bool:
        return self.index.covers(name, env, agent, self.clock(), target)

    def progress(
        self, name: str, env: str, agent: str, target: Scope | None, policy: SecretPolicy
    ) -> tuple[int, int]:
        """(approvals a grant of `name` needs, the most a grant still waiting for
        approvers that would cover this call has)."""
        _, needed = self.effective(name, policy)
        now, have = self.clock(), 0
        for grant in self.state.grants:
            if (
                (grant.secret, grant.env) == (name, env)
                and grant.agent in ("*", agent)
                and grant.scope in (None, target)
                and grant.alive(now)
                and not grant.complete
            ):
                have = max(have, len(grant.approvers))
        return needed, have

    def approve(
        self,
        *,
        settings: Settings,
        secret: str,
        env: str,
        agent: str | None = None,
        duration: float | None = None,
        approver: str | None = None,
        code: str | None = None,
        request: str | None = None,
        scope: Scope | None = None,
        exists: Exists | None = None,
        proof: Proof | None = None,
    ) -> dict[str, Any]:
        """A grant of `secret` in `env` to `agent` (None: every agent), for `scope` (the
        scheme, host and port of the request approved) or, without one, for wherever the
        secret may go. `exists(env, secret)`: False when the store surely has no such
        secret (a typo is said as one, before a code is spent)."""
        _check_names(settings, secret, env, agent, exists)
        self.load()
        tier, needed = self.effective(secret, settings.policy(secret))
        longest = settings.approvals.grant_ttl(tier)
        caps = settings.agents.get(agent or "")
        if longest is None and caps is not None and caps.budget is not None:
            # An open secret past an agent's approve_above_usd (broker/budget.py): controlled.
            longest = settings.approvals.grant_ttl("controlled")
        if longest is None:
            raise BlindkeyError(f"{secret} is open: it needs no grant")
        if duration is not None and (duration <= 0 or duration > longest):
            raise BlindkeyError(
                f"--for may shorten a {tier} grant, not lengthen it past {span_text(longest)}"
            )
        ask = GrantAsk(secret, env, agent or "*", scope, needed, duration or longest, request)
        grant, already = self.edit(
            lambda state: self._add_approval(state, ask, approver, code, proof)
        )
        if already is not None:
            raise BlindkeyError(
                f"{already} has already approved {secret}; it needs "
                f"{grant.needed - len(grant.approvers)} more distinct approver(s)"
            )
        if grant.complete:
            self._changed()
            self.pending.settle(secret, env, ask.agent, scope)
        return public_grant(grant)

    def _add_approval(
        self, state: ApprovalsState, ask: GrantAsk, approver: str | None, code: str | None,
        proof: Proof | None = None,
    ) -> tuple[Grant, str | None]:  # fmt: skip
        """The grant with this approver's approval (and who had already given it, if so)."""
        name = self.pick(state, approver)
        now = self.clock()
        if proof is None:
            self.verify(state, name, code, f"approve {ask.secret}")
        else:
            proof(state, name)
        drop_expired(state.grants, now)
        # A grant still waiting for approvers; approving one in force starts its
        # renewal, and the old one stays in force until the renewal is complete.
        grant = find_grant(state.grants, ask.secret, ask.env, ask.agent, ask.scope)
        if grant is None:
            grant = new_grant(ask.secret, ask.env, ask.agent, ask.scope, ask.needed, ask.span, now)
            state.grants.append(grant)
        elif name in grant.approvers:
            # The code is spent all the same (saved by edit): it was shown.
            return grant, name
        added = replace(
            grant,
            approvers=(*grant.approvers, name),
            span=min(grant.span, ask.span),
            needed=max(grant.needed, ask.needed),
        )
        if added.complete:
            added = replace(added, expires=now + added.span)
        state.grants[state.grants.index(grant)] = added
        if added.complete:
            state.grants = [g for g in state.grants if g is added or g.key != added.key]
        self.note("grant", grant=added.id, secret=ask.secret, env=ask.env, agent=ask.agent,
                  approver=name, approvers=list(added.approvers), needed=added.needed,
                  complete=added.complete, expires=rfc3339(added.expires),
                  request=ask.request, covers=covers_text(ask.scope),
                  **({"proof": "passkey"} if proof is not None else {}))  # fmt: skip
        return added, None

    def approve_request(
        self,
        *,
        settings: Settings,
        request_id: str,
        duration: float | None = None,
        approver: str | None = None,
        code: str | None = None,
        proof: Proof | None = None,
    ) -> dict[str, Any]:
        pending = self.pending.get(request_id)
        return self.approve(
            settings=settings,
            secret=pending.secret,
            env=pending.env,
            agent=pending.agent,
            duration=duration,
            approver=approver,
            code=code,
            request=request_id,
            scope=(pending.scheme, pending.host, pending.port),
            proof=proof,
        )

    def deny(self, request_id: str) -> dict[str, Any]:
        pending = self.pending.remove(request_id)
        self._audit(
            "grant_revoked",
            {"request": request_id, "secret": pending.secret, "env": pending.env,
             "agent": pending.agent, "reason": "denied"},
        )  # fmt: skip
        self.pending.tell(pending, "denied")
        return pending.public(self.clock())

    def grants(self) -> list[dict[str, Any]]:
        self.load()
        now = self.clock()
        return [public_grant(g) for g in self.state.grants if g.alive(now)]

    def revoke(self, secret: str | None, env: str | None, agent: str | None, every: bool) -> int:
        if not every and not secret:
            raise BlindkeyError("name the SECRET whose grants to revoke, or --all")

        def matches(grant: Grant) -> bool:
            if every:
                return True
            return (
                grant.secret == secret
                and (env is None or grant.env == env)
                and (agent is None or grant.agent == agent)
            )

        def work(state: ApprovalsState) -> int:
            drop_expired(state.grants, self.clock())
            gone = [g for g in state.grants if matches(g)]
            if not gone:
                raise BlindkeyError("no grant matches; see `blindkey grants list`")
            for grant in gone:
                state.grants.remove(grant)
                self.note("grant_revoked", grant=grant.id, secret=grant.secret,
                           env=grant.env, agent=grant.agent)  # fmt: skip
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

        def work(state: ApprovalsState) -> bool:
            gone = drop_expired(state.grants, now)
            for grant in gone:
                if grant.complete:
                    self.note("grant_expired", grant=grant.id, secret=grant.secret,
                               env=grant.env, agent=grant.agent)  # fmt: skip
            return any(g.complete for g in gone)

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

        def work(state: ApprovalsState) -> dict[str, Any]:
            drop_expired(state.grants, self.clock())
            granted = any(g.env == target for g in state.grants)
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
        self.edit(
            lambda state: Floors(state.floors, state.has_approvers()).follow(settings.secrets)
        )

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

        def work(state: ApprovalsState) -> dict[str, Any]:
            approvable = state.has_approvers()
            if tier in GATED_TIERS and not approvable and not anyway:
                raise BlindkeyError(
                    f"no approver is active: a {tier} secret waits for a grant nobody can "
                    "give yet, and whoever enrols first could give it. Enrol one first "
                    "(`blindkey totp enroll`, then `blindkey totp confirm`), or pass --yes "
                    "to set it anyway"
                )
            if lowers:
                self._consent(state, by, code, f"lower the protection of {name}")
            state.floors[name] = Floor(new_tier, new_needed)
            return {"approvable": approvable}

        return self.edit(work)

    def forget_secret(
        self, settings: Settings, name: str, env: str, last: bool, by: str | None, code: str | None
    ) -> None:
        self.load()
        tier, _ = self.effective(name, settings.policy(name))

        def work(state: ApprovalsState) -> None:
            if tier != "open":
                self._consent(state, by, code, f"delete {tier} secret {name}")
            state.grants = [g for g in state.grants if not (g.secret == name and g.env == env)]
            if last:
                state.floors.pop(name, None)

        self.edit(work)
        self._changed()
