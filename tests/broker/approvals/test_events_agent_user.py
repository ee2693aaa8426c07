"""The hardened deployment: the agent's user, which may reach the broker's socket for
`exec` ([broker] release_uids), cannot watch the approvals (whose requests, and when a
human is away, are the human's to see): `approvals watch` is refused, on the record.
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


def test_the_agent_cannot_watch_approvals(
    hardened: Deployment,  # noqa: F811 - the fixture imported above
    broker: subprocess.Popen[bytes],  # noqa: F811
) -> None:
    agent_home = hardened.base / "agent-home"
    agent_home.mkdir(mode=0o700)
    shutil.chown(agent_home, AGENT, AGENT)
    hardened.blindkey(AGENT, agent_home, "init")
    config = agent_home / "config.toml"
    config.write_text(config.read_text().replace('socket = ""', f'socket = "{hardened.socket}"'))
    for args in (["approvals", "watch"], ["approvals", "watch", "--json"]):
        run = as_agent(hardened, agent_home, "-m", "blindkey.cli", *args)
        assert run.returncode == 1, (run.stdout, run.stderr)
        assert run.stderr == "blindkey: approvals are managed by the broker's user only\n"
        assert run.stdout == ""
    refused = audit_events(hardened.broker_home / "audit", "code_refused")
    uid = pwd.getpwnam(AGENT).pw_uid
    assert [(r["reason"], r["uid"], r["action"]) for r in refused] == [
        ("not_broker_user", uid, "watch")
    ] * 2
