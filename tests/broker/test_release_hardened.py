"""`exec` in the hardened deployment: the broker runs as its own user and owns the vault;
the agent's user, listed in `[broker] release_uids` and in the broker's group, reaches the
socket and gets the values released to exec, and nothing else of the broker's: `resolve`
(the proxy's op, which would hand out values for any claimed host) is refused, and the
vault stays unreadable. Real users, blindkey from its wheel (tests/staging.py)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.broker.test_separate_user import (
    AGENT,
    AS_PROXY,
    BROKER,
    PROXY,
    VALUE,
    Deployment,
    _deploy,
    serving_broker,
)
from tests.staging import Installed
from tests.users import system_users

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def hardened(installed: Installed) -> Iterator[Deployment]:
    assert os.geteuid() == 0, "this test creates users and runs as them: run it as root"
    base = Path(tempfile.mkdtemp(prefix="bk-release-", dir="/tmp"))
    try:
        with system_users((BROKER, ()), (PROXY, (BROKER,)), (AGENT, (BROKER,))):
            deployment = _deploy(base, [installed.python])
            config = deployment.broker_home / "config.toml"
            agent_uid = pwd.getpwnam(AGENT).pw_uid
            text = config.read_text().replace("release_uids = []", f"release_uids = [{agent_uid}]")
            config.write_text(text + '\n[secrets.GH]\nrelease = ["proxy", "exec"]\n')
            yield deployment
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def broker(hardened: Deployment) -> Iterator[subprocess.Popen[bytes]]:
    with serving_broker(hardened) as process:
        yield process


def as_agent(
    deployment: Deployment, home: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Python as the agent's user, a member of the broker's group (to reach the socket)."""
    return subprocess.run(
        [*deployment.python, *args],
        user=AGENT, group=AGENT, extra_groups=[BROKER],
        env={**deployment.env(home), "BLINDKEY_AGENT_TOKEN": deployment.token},
        cwd=deployment.base, input=stdin, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


def test_the_agents_user_gets_exec_values_and_nothing_else(
    hardened: Deployment, broker: subprocess.Popen[bytes]
) -> None:
    agent_home = hardened.base / "agent-home"
    agent_home.mkdir(mode=0o700)
    shutil.chown(agent_home, AGENT, AGENT)
    hardened.blindkey(AGENT, agent_home, "init")
    config = agent_home / "config.toml"
    config.write_text(config.read_text().replace('socket = ""', f'socket = "{hardened.socket}"'))
    request = json.dumps({"protocolVersion": 1, "provider": "blindkey", "ids": ["GH", "NOPE"]})
    run = as_agent(hardened, agent_home, "-m", "blindkey.cli", "exec", stdin=request)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["values"] == {"GH": VALUE}, run.stdout
    assert answer["errors"]["NOPE"]["message"].startswith("unknown_secret:")

    # The proxy's op is not the agent's: no value for a host it merely claims.
    asked = as_agent(hardened, agent_home, "-c", AS_PROXY, str(hardened.socket), hardened.token)
    assert asked.returncode != 0 and "unknown op 'resolve'" in asked.stderr
    assert VALUE not in asked.stdout + asked.stderr
    read = hardened.run(AGENT, "cat", str(hardened.broker_home / "vault.bin"), check=False)
    assert read.returncode != 0 and "Permission denied" in read.stderr

    # The broker wrote the record, in its own audit.
    audit = (hardened.broker_home / "audit" / "audit.jsonl").read_bytes().splitlines()
    (record,) = [r for r in map(orjson.loads, audit) if r.get("event") == "exec"]
    assert (record["agent"], record["secrets"]) == ("agent", ["GH"])
