"""The hardened deployment whose agent's user may reach the broker's socket (listed in
`[broker] release_uids` for `exec`): its approvals attempts through the real CLI (watching
the pending list included) are refused, and each refusal is on the broker's record as
SECURITY.md promises (`code_refused`, reason `not_broker_user`).
Real users, blindkey from its wheel."""

from __future__ import annotations

import pwd
import shutil
import subprocess

from tests.approvals_helpers import audit_events
from tests.broker.test_release_hardened import (  # noqa: F401 - fixtures
    as_agent,
    broker,
    hardened,
)
from tests.broker.test_separate_user import AGENT, Deployment


def test_the_agents_approvals_attempts_are_refused_on_the_record(
    hardened: Deployment,  # noqa: F811 - the fixture imported above
    broker: subprocess.Popen[bytes],  # noqa: F811
) -> None:
    agent_home = hardened.base / "agent-home"
    agent_home.mkdir(mode=0o700)
    shutil.chown(agent_home, AGENT, AGENT)
    hardened.blindkey(AGENT, agent_home, "init")
    config = agent_home / "config.toml"
    config.write_text(config.read_text().replace('socket = ""', f'socket = "{hardened.socket}"'))
    attempts = {
        "approve": ["approve", "GH", "--code", "123456"],
        "enroll": ["totp", "enroll", "--approver", "evil", "--json"],
        "revoke": ["grants", "revoke", "--all"],
        # Whose requests wait, and when a human is away, are the human's to see.
        "watch": ["approvals", "watch", "--json"],
    }
    for args in attempts.values():
        run = as_agent(hardened, agent_home, "-m", "blindkey.cli", *args)
        assert run.returncode == 1, (args, run.stdout, run.stderr)
        assert "approvals are managed by the broker's user only" in run.stderr, run.stderr
    refused = audit_events(hardened.broker_home / "audit", "code_refused")
    uid = pwd.getpwnam(AGENT).pw_uid
    assert [(r["reason"], r["uid"], r["action"]) for r in refused] == [
        ("not_broker_user", uid, action) for action in attempts
    ]
