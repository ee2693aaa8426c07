"""The approvals guarantee in the hardened deployment, tried as an attacker would: the
broker runs as bk-broker, the proxy as bk-proxy, the agent as bk-agent (the three-user
setup of test_separate_user.py). The agent's user tries to read the seed, grants and
recovery hashes; to write a grant or reset a lockout; to replay a code it saw; to enrol an
approver of its own; to lower a tier; to approve over HTTP; and the proxy's user tries to
approve through the broker's socket. Every attempt fails; the ones that reach the broker
are audited. Codes come from pyotp with the enrolled seed."""

# ruff: noqa: F811 - the deployment fixtures are imported, then named as test parameters

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pyotp
import pytest

from tests.approvals_helpers import audit_events, seed_of
from tests.broker.test_separate_user import (  # noqa: F401 - fixtures
    AGENT,
    BROKER,
    PROXY,
    Deployment,
    _configure,
    broker_service,
    deployment,
)

pytestmark = pytest.mark.timeout(300)

AS_PROXY_APPROVE = """
import asyncio, sys
from pathlib import Path
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import BrokerDenied

async def main():
    client = BrokerClient(Path(sys.argv[1]))
    try:
        await client.call("approvals", action="approve",
                          params={"secret": "GH", "code": sys.argv[2]})
    except BrokerDenied as exc:
        print(exc.code, exc)
    await client.close()

asyncio.run(main())
"""


def _enrol(deployment: Deployment) -> pyotp.TOTP:
    home = deployment.broker_home
    out = deployment.blindkey(BROKER, home, "totp", "enroll", "--json")
    app = pyotp.TOTP(seed_of(json.loads(out)["otpauth_uri"]))
    deployment.blindkey(BROKER, home, "totp", "confirm", "--code", app.now())
    return app


def _curl(deployment: Deployment, port: int, upstream: str, *extra: str) -> str:
    called = deployment.run(
        AGENT, "curl", "-sS", f"http://127.0.0.1:{port}/proxy",
        "-H", f"X-AS-Agent-Token: {deployment.token}",
        "-H", f"X-AS-Target-URL: {upstream}/echo",
        "-H", "X-AS-Inject-Bearer: GH", *extra, check=False,
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    return called.stdout


def test_agent_cannot_approve_itself(
    deployment: Deployment, broker_service: subprocess.Popen[bytes], upstream_port: int
) -> None:
    home = deployment.broker_home
    app = _enrol(deployment)
    code_seen = app.at(time.time() + 30)
    deployment.blindkey(BROKER, home, "secrets", "set", "GH", "--tier", "controlled",
                        stdin="ghp_separateUserValue0123456789XYZ")  # fmt: skip
    approvals = home / "approvals.bin"
    assert approvals.exists() and oct(approvals.stat().st_mode & 0o777) == "0o600"

    # Files: the seed, grants, recovery hashes and lockout counters are out of reach.
    for attempt in (["cat", str(approvals)], ["sh", "-c", f"echo x > {approvals}"],
                    ["rm", "-f", str(approvals)], ["ls", str(home)]):  # fmt: skip
        result = deployment.run(AGENT, *attempt, check=False)
        assert result.returncode != 0 and "Permission denied" in result.stderr, attempt
    # The CLI against the broker's home: no file, no socket.
    attempts = [
        ["approve", "GH", "--code", code_seen],
        ["totp", "enroll", "--approver", "me"],
        ["secrets", "set", "GH", "--tier", "open"],
        ["grants", "revoke", "--all"],
    ]
    for args in attempts:
        result = deployment.run(AGENT, *deployment.python, "-m", "blindkey.cli", *args,
                                home=home, stdin="x" * 20, check=False)  # fmt: skip
        assert result.returncode != 0, args
    # An approver of its own, in a home of its own, approves nothing the broker serves.
    own = Path(deployment.base) / "agent-home"
    own.mkdir(mode=0o700)
    shutil.chown(own, AGENT, AGENT)
    enrolled = deployment.run(AGENT, *deployment.python, "-m", "blindkey.cli", "totp",
                              "enroll", "--json", home=own)  # fmt: skip
    mine = pyotp.TOTP(seed_of(json.loads(enrolled.stdout)["otpauth_uri"]))
    deployment.run(AGENT, *deployment.python, "-m", "blindkey.cli", "totp", "confirm",
                   "--code", mine.now(), home=own)  # fmt: skip
    _configure(own / "config.toml", deployment.socket, [])
    result = deployment.run(AGENT, *deployment.python, "-m", "blindkey.cli", "approve", "GH",
                            "--code", mine.at(time.time() + 30), home=own,
                            check=False)  # fmt: skip
    assert result.returncode != 0
    assert "broker's user" in result.stderr or "not open" in result.stderr, result.stderr

    # The proxy's user may open the socket, but not approve (neither may HTTP or MCP,
    # which reach the broker only through the proxy).
    asked = deployment.run(PROXY, *deployment.python, "-c", AS_PROXY_APPROVE,
                           str(deployment.socket), code_seen)  # fmt: skip
    assert asked.stdout.startswith("refused approvals are managed by the broker's user")
    refused = audit_events(home / "audit", "code_refused")
    assert refused[-1]["reason"] == "not_broker_user" and refused[-1]["action"] == "approve"

    # Through the proxy run as bk-proxy: the agent meets the gate, cannot approve over
    # HTTP, and goes through once the human (the broker's user) approves its request.
    proxy_home = deployment.proxy_home
    deployment.blindkey(PROXY, proxy_home, "init")
    _configure(proxy_home / "config.toml", deployment.socket, [])
    upstream = f"http://127.0.0.1:{upstream_port}"
    deployment.blindkey(PROXY, proxy_home, "allowlist", "add", upstream)
    deployment.blindkey(PROXY, proxy_home, "proxy", "start", "--port", "0")
    try:
        port = json.loads(deployment.blindkey(PROXY, proxy_home, "proxy", "status", "--json"))[
            "port"
        ]
        gate = json.loads(_curl(deployment, port, upstream))
        assert gate["error"] == "approval_required"
        approval_id = gate["approval_id"]
        for path in ("/approve", "/approvals", f"/approve?request={approval_id}"):
            answer = deployment.run(AGENT, "curl", "-sS", "-X", "POST",
                                    f"http://127.0.0.1:{port}{path}",
                                    "-H", f"X-AS-Agent-Token: {deployment.token}",
                                    check=False)  # fmt: skip
            assert json.loads(answer.stdout)["error"] == "bad_request"
        assert json.loads(_curl(deployment, port, upstream))["error"] == "approval_required"
        # The human approves with the code the agent saw; the agent's copy is then spent.
        deployment.blindkey(BROKER, home, "approve", "--request", approval_id,
                            "--code", code_seen)  # fmt: skip
        assert '"error"' not in _curl(deployment, port, upstream)
        replay = deployment.run(BROKER, *deployment.python, "-m", "blindkey.cli", "approve",
                                "GH", "--code", code_seen, home=home, check=False)  # fmt: skip
        assert replay.returncode == 4 and "already used" in replay.stderr
        deployment.blindkey(BROKER, home, "grants", "revoke", "GH")
        assert json.loads(_curl(deployment, port, upstream))["error"] == "approval_required"
    finally:
        deployment.blindkey(PROXY, proxy_home, "proxy", "stop")
    reasons = [r["reason"] for r in audit_events(home / "audit", "code_refused")]
    assert "code_reused" in reasons
    assert audit_events(home / "audit", "grant_revoked")
