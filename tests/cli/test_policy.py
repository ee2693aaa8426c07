"""`blindkey policy test` decides a call as the broker does and names the rule;
`blindkey policy replay` decides recorded calls again under a proposed config."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from blindkey.audit.events import append_event
from blindkey.audit.record import rfc3339
from blindkey.broker.agents import AgentStore
from blindkey.broker.vault import FileVault
from blindkey.config.atomic import write_atomic
from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG
from tests.conftest import RunCli

POLICY = """
[secrets.GH]
hosts = ["api.github.com"]
methods = ["GET"]
paths = ["/repos/acme/**"]

[secrets.BOUND]
agents = ["someone"]

[secrets.CTRL]
tier = "controlled"

[secrets.FEW]
rate = "2/h"

[agents.builder]
methods = ["GET", "POST"]
"""
HOSTS = 'hosts = ["api.github.com", "uploads.github.com"]'


def configure(home: Paths, policy: str = POLICY) -> None:
    text = DEFAULT_CONFIG.replace("hosts = []", HOSTS, 1)
    assert HOSTS in text
    write_atomic(home.config_file, (text + policy).encode())


@pytest.fixture
def policy_home(home: Paths) -> Paths:
    configure(home)
    vault = FileVault(home)
    for name in ("GH", "BOUND", "CTRL", "FEW"):
        vault.set("development", name, f"{name.lower()}-value-0123456789")
    AgentStore(home.agents_file, home.lock_file).add("builder")
    return home


CASES = [
    ("GET", "https://api.github.com/repos/acme/x?q=1", ["GH"], None, "allowlist api.github.com"),
    ("DELETE", "https://api.github.com/repos/acme/x", ["GH"], "secret_denied",
     "agents.builder.methods"),
    ("POST", "https://api.github.com/repos/acme/x", ["GH"], "secret_denied", "secrets.GH.methods"),
    ("GET", "https://api.github.com/admin", ["GH"], "secret_denied", "secrets.GH.paths"),
    ("GET", "https://api.github.com/repos/acme/../../admin", ["GH"], "secret_denied",
     "secrets.GH.paths"),
    ("GET", "https://uploads.github.com/repos/acme/x", ["GH"], "secret_denied", "secrets.GH.hosts"),
    ("GET", "https://evil.example/", ["GH"], "host_not_allowed", "allowlist"),
    ("GET", "https://api.github.com:8443/", ["GH"], "host_not_allowed", "allowlist"),
    ("GET", "https://api.github.com/repos/acme/x", ["BOUND"], "secret_denied",
     "secrets.BOUND.agents"),
    ("GET", "https://api.github.com/", ["CTRL"], "approval_required", "secrets.CTRL.tier"),
    ("GET", "https://api.github.com/", ["NOPE"], "unknown_secret", "secrets.NOPE"),
]  # fmt: skip


def test_policy_test_names_the_deciding_rule(policy_home: Paths, run_cli: RunCli) -> None:
    for method, url, names, error, rule in CASES:
        secrets = [arg for name in names for arg in ("--secret", name)]
        done = run_cli("policy", "test", "--agent", "builder", "--method", method,
                       "--url", url, *secrets, "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert (result["error"], result["rule"]) == (error, rule), (method, url, result)
        assert result["decision"] == ("allowed" if error is None else "blocked")
    words = run_cli("policy", "test", "--agent", "builder", "--method", "POST", "--url",
                    "https://api.github.com/repos/acme/x", "--secret", "GH")  # fmt: skip
    assert "blocked: secret_denied by rule secrets.GH.methods" in words.stdout


def test_policy_test_looks_at_a_rate_without_spending_it(
    policy_home: Paths, run_cli: RunCli
) -> None:
    asks = ("policy", "test", "--agent", "builder", "--method", "GET", "--url",
            "https://api.github.com/", "--secret", "FEW", "--json")  # fmt: skip
    for _ in range(4):  # a rate of 2/h: testing never uses it up
        assert json.loads(run_cli(*asks).stdout)["decision"] == "allowed"


def request(home: Paths, method: str, url: str, names: list[str], decision: str,
            reason: str | None = None, ts: float | None = None) -> None:  # fmt: skip
    fields: dict[str, Any] = {
        "ts": rfc3339(ts or time.time()), "request_id": f"r{time.monotonic_ns()}",
        "agent": "builder", "env": "development", "method": method, "url": url,
        "host": url.split("/")[2], "secrets": names, "decision": decision, "reason": reason,
    }  # fmt: skip
    append_event(home.audit_dir, "request", fields)


def test_replay_reports_what_a_proposed_config_would_change(
    policy_home: Paths, run_cli: RunCli
) -> None:
    url = "https://api.github.com/repos/acme/x"
    request(policy_home, "GET", url, ["GH"], "allowed")
    request(policy_home, "POST", url, ["GH"], "blocked", "secret_denied")
    request(policy_home, "GET", "https://api.github.com/", ["CTRL"], "allowed")  # had a grant
    request(policy_home, "GET", url, ["GH"], "blocked", "upstream_error")  # not policy's
    old = time.time() - 30 * 86400
    request(policy_home, "DELETE", url, ["GH"], "allowed", ts=old)  # before --since
    for _ in range(3):
        request(policy_home, "GET", "https://api.github.com/", ["FEW"], "allowed")
    unchanged = run_cli("policy", "replay", "--json")
    assert unchanged.returncode == 0, unchanged.stderr
    summary = json.loads(unchanged.stdout)
    # The third FEW call within the hour is past 2/h: the one change the current file makes.
    assert (summary["replayed"], summary["changed"]) == (6, 1)
    (change,) = summary["changes"]
    assert (change["was"], change["now"], change["rule"]) == (
        "allowed", "rate_limited", "secrets.FEW.rate",
    )  # fmt: skip
    proposed = policy_home.config_dir / "proposed.toml"
    text = policy_home.config_file.read_text()
    text = text.replace('methods = ["GET"]\npaths', 'methods = ["GET", "POST"]\npaths')
    text = text.replace('rate = "2/h"', 'rate = "10/h"').replace('"/repos/acme/**"', '"/user"')
    proposed.write_text(text)
    done = run_cli("policy", "replay", "--since", "7d", "--config", str(proposed), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    moved = sorted((c["method"], c["was"], c["now"], c["rule"]) for c in summary["changes"])
    # POST is refused still (by the path now, not the method): the same decision.
    assert moved == [("GET", "allowed", "secret_denied", "secrets.GH.paths")]
    assert (summary["replayed"], summary["now_blocked"], summary["now_allowed"]) == (6, 1, 0)
    words = run_cli("policy", "replay", "--config", str(proposed))
    assert "would change" in words.stdout and "secrets.GH.paths" in words.stdout
