"""Every policy command leaves an `event: config` record (who, what, before, after, never a
value); once an approver exists a widening needs a code (exit 4 and nothing changed
without one), narrowing never does. No broker runs: the CLI works on its files itself."""

from __future__ import annotations

import json
import os
import pwd

import pytest

from blindkey.broker.policy import policy_view, widenings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.config.secrets_table import SecretPolicy
from tests.approvals_helpers import Approver, audit_events, cli, enrol

VALUE = "ghp_policyValue0123456789abcdef"
ME = pwd.getpwuid(os.getuid()).pw_name

# (argv, stdin, change, names): run in order, each on the state the previous one left.
COMMANDS = [
    (("allowlist", "add", "api.example.com"), "", "allowlist_add", ["api.example.com"]),
    (("allowlist", "remove", "api.example.com"), "", "allowlist_remove", ["api.example.com"]),
    (("secrets", "set", "GH", "--host", "api.github.com"), VALUE, "secret_set", ["GH"]),
    (("secrets", "policy", "GH", "--add-agent", "bot"), "", "secret_policy", ["GH"]),
    (("agent", "add", "bot"), "", "agent_add", ["bot"]),
    (("agent", "revoke", "bot"), "", "agent_revoke", ["bot"]),
    (("route", "add", "oa", "--to", "https://api.openai.com", "--bearer", "GH"), "",
     "route_add", ["oa"]),
    (("route", "remove", "oa"), "", "route_remove", ["oa"]),
    (("environment", "switch", "staging"), "", "environment_switch", ["staging"]),
    (("secrets", "import", "-"), f"export ONE='{VALUE}'\nTWO=\"{VALUE}2\"\n", "secret_set",
     ["ONE", "TWO"]),
    (("secrets", "delete", "ONE", "--env", "staging"), "", "secret_delete", ["ONE"]),
]  # fmt: skip


def test_every_command_leaves_its_record(home: Paths) -> None:
    for argv, stdin, change, names in COMMANDS:
        code, _, err = cli(*argv, stdin=stdin)
        assert code == 0, (argv, err)
        last = audit_events(home.audit_dir, "config")[-1]
        assert (last["change"], last["names"], last["by"]) == (change, names, ME), argv
    records = audit_events(home.audit_dir, "config")
    assert len(records) == len(COMMANDS)
    added = records[0]
    assert added["before"] == {"allowlist": []}
    assert added["after"] == {"allowlist": ["api.example.com"]}
    policy = records[3]
    assert policy["before"]["secrets.GH"]["agents"] == ["*"]
    assert policy["after"]["secrets.GH"]["agents"] == ["*", "bot"]
    assert records[8]["after"] == {"active_env": "staging"}
    audit = "".join(p.read_text() for p in home.audit_dir.glob("*.jsonl*"))
    assert VALUE not in audit  # never a value


@pytest.fixture
def guarded(home: Paths) -> Approver:
    """A secret bound to one host and one agent, then an approver: the gate is on."""
    code, _, err = cli("secrets", "set", "GH", "--host", "api.github.com", "--agent", "bot",
                       stdin=VALUE)  # fmt: skip
    assert code == 0, err
    assert cli("allowlist", "add", "api.github.com")[0] == 0
    return enrol()


WIDENINGS = [
    ("allowlist", "add", "evil.example"),
    ("route", "add", "ev", "--to", "https://evil.example", "--bearer", "GH"),
    ("secrets", "policy", "GH", "--add-host", "evil.example"),
    ("secrets", "policy", "GH", "--remove-host", "api.github.com"),  # emptied: any host
    ("secrets", "policy", "GH", "--add-agent", "other"),
    ("secrets", "policy", "GH", "--release", "proxy,exec"),
    ("secrets", "set", "GH", "--release", "proxy,env"),
    ("secrets", "import", "-"),  # without a code it must not reach the file's tables
]


@pytest.mark.parametrize("argv", WIDENINGS[:-1], ids=lambda a: " ".join(a[:3]))
def test_a_widening_needs_a_code(home: Paths, guarded: Approver, argv: tuple[str, ...]) -> None:
    before = home.config_file.read_bytes()
    records = len(audit_events(home.audit_dir, "config"))
    stdin = VALUE if argv[1] == "set" else ""
    code, _, err = cli(*argv, stdin=stdin)
    assert code == 4, err
    assert "--code" in err and "nothing changed" in err
    assert home.config_file.read_bytes() == before
    assert len(audit_events(home.audit_dir, "config")) == records
    code, _, err = cli(*argv, "--code", "000000", stdin=stdin)
    assert code == 4 and "wrong code" in err
    assert home.config_file.read_bytes() == before
    code, _, err = cli(*argv, "--code", guarded.code(), stdin=stdin)
    assert code == 0, err
    assert home.config_file.read_bytes() != before
    assert audit_events(home.audit_dir, "config")[-1]["approver"] == "default"


def test_narrowing_needs_no_code(home: Paths, guarded: Approver) -> None:
    for argv in (
        ("secrets", "policy", "GH", "--remove-agent", "bot"),
        ("allowlist", "remove", "api.github.com"),
        ("secrets", "delete", "GH"),
    ):
        code, _, err = cli(*argv)
        assert code == 0, (argv, err)
        assert "approver" not in audit_events(home.audit_dir, "config")[-1]


def test_import_refuses_bad_lines_by_number_and_stores_nothing(home: Paths) -> None:
    text = f"# comment\n\nGOOD={VALUE}\nno equals sign {VALUE}\nBAD='{VALUE}\n1X={VALUE}\n"
    code, _, err = cli("secrets", "import", "-", stdin=text)
    assert code == 1
    assert "line 4: not NAME=VALUE" in err and "line 5: BAD: a quote is not closed" in err
    assert "line 6" in err and VALUE not in err
    code, out, _ = cli("secrets", "list", "--json")
    assert json.loads(out) == []
    assert audit_events(home.audit_dir, "config") == []


def test_allowing_parts_is_a_widening_and_disallowing_them_is_not() -> None:
    """`allow_range = true` lets a value be read in slices (SECURITY.md, Range)."""
    closed = policy_view(Settings(secrets={"K": SecretPolicy(allow_range=False)}))
    opened = policy_view(Settings(secrets={"K": SecretPolicy(allow_range=True)}))
    assert widenings(closed, opened, lambda name: True) == [
        "secret K may be read in slices (allow_range)"
    ]
    assert widenings(opened, closed, lambda name: True) == []
    kept_before_the_key = {**closed, "secrets": {"K": {**closed["secrets"]["K"]}}}
    del kept_before_the_key["secrets"]["K"]["allow_range"]
    assert widenings(kept_before_the_key, opened, lambda name: True)
