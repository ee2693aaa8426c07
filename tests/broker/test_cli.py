"""`blindkey secrets|agent|allowlist|broker` as a user runs them, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest

from blindkey.broker.agents import AgentStore, token_hash
from blindkey.broker.vault import FileVault
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from tests.conftest import RunCli

VALUE = "ghp_Zx9Q7vLm2Kp4Rt8Wn3Yb6Hc1Jd5Fs0Ga"


def ok(result: subprocess.CompletedProcess[str], *values: str) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for value in values:
        assert value not in result.stdout
        assert value not in result.stderr
    return result


def failed(result: subprocess.CompletedProcess[str], *values: str) -> str:
    """Exit 1 with exactly one `blindkey: ...` line on stderr; returns that line."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("blindkey: ")
    for value in values:
        assert value not in result.stdout
        assert value not in result.stderr
    return lines[0]


def vault(home: Paths) -> dict[str, dict[str, str]]:
    return FileVault(home).load()


# --- secrets set ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdin", "stored"),
    [
        (VALUE + "\n", VALUE),
        (VALUE + "\r\n", VALUE),
        (VALUE, VALUE),
        ("two\nlines\n", "two\nlines"),
        ("keeps one\n\n", "keeps one\n"),
        ("  spaced  \n", "  spaced  "),
    ],
)
def test_set_reads_stdin_and_strips_one_trailing_newline(
    home: Paths, run_cli: RunCli, stdin: str, stored: str
) -> None:
    result = ok(run_cli("secrets", "set", "GITHUB_TOKEN", input=stdin), stored)
    assert result.stderr == ""
    assert "stored GITHUB_TOKEN in development" in result.stdout
    assert vault(home) == {"development": {"GITHUB_TOKEN": stored}}


def test_set_into_another_environment(home: Paths, run_cli: RunCli) -> None:
    ok(run_cli("secrets", "set", "K", "--env", "staging", input="stage-value\n"), "stage-value")
    assert vault(home) == {"staging": {"K": "stage-value"}}
    failed(run_cli("secrets", "set", "K", "--env", "nowhere", input="x-long-value\n"))
    assert vault(home) == {"staging": {"K": "stage-value"}}


def test_set_name_equals_value_works_but_warns(home: Paths, run_cli: RunCli) -> None:
    result = ok(run_cli("secrets", "set", f"GITHUB_TOKEN={VALUE}=tail"), VALUE)
    assert vault(home) == {"development": {"GITHUB_TOKEN": f"{VALUE}=tail"}}
    warning = result.stderr.strip()
    assert warning.startswith("blindkey: warning:")
    assert "shell history" in warning
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "name",
    ["BAD NAME", "A\r\nB", "1abc", "A" * 129, "A\n", "name;rm", "ünï", "a/b", "."],
)
def test_invalid_secret_names_are_refused(home: Paths, run_cli: RunCli, name: str) -> None:
    config = home.config_file.read_bytes()
    line = failed(run_cli("secrets", "set", name, "--tier", "restricted", input=VALUE + "\n"))
    assert "invalid secret name" in line
    assert vault(home) == {}
    assert home.config_file.read_bytes() == config


def test_longest_valid_name_is_accepted(home: Paths, run_cli: RunCli) -> None:
    name = "A" * 128
    ok(run_cli("secrets", "set", name, input="value-of-the-longest\n"))
    assert vault(home) == {"development": {name: "value-of-the-longest"}}


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_empty_value_is_refused(home: Paths, run_cli: RunCli, stdin: str) -> None:
    config = home.config_file.read_bytes()
    line = failed(run_cli("secrets", "set", "EMPTY", "--tier", "controlled", input=stdin))
    assert "empty value" in line
    assert vault(home) == {}
    assert home.config_file.read_bytes() == config
    # NAME= : the shell-history warning, then the refusal
    result = run_cli("secrets", "set", "EMPTY=")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("blindkey: empty value for EMPTY")
    assert "Traceback" not in result.stderr
    assert vault(home) == {}


def test_tier_host_and_agent_write_metadata(home: Paths, run_cli: RunCli) -> None:
    result = run_cli(
        "secrets", "set", "GITHUB_TOKEN",
        "--tier", "controlled", "--yes",  # no approver here: set it all the same
        "--host", "api.github.com",
        "--host", "*.githubusercontent.com",
        "--agent", "claude",
        "--agent", "ci-bot",
        input=VALUE + "\n",
    )  # fmt: skip
    ok(result, VALUE)
    assert "tier controlled" in result.stdout
    raw = tomllib.loads(home.config_file.read_text())
    assert raw["secrets"]["GITHUB_TOKEN"] == {
        "tier": "controlled",
        "hosts": ["api.github.com", "*.githubusercontent.com"],
        "agents": ["claude", "ci-bot"],
    }
    policy = load_settings(home.config_file).policy("GITHUB_TOKEN")
    assert policy.tier == "controlled"
    assert policy.allows_host("https", "api.github.com", 443)
    assert policy.allows_host("https", "raw.githubusercontent.com", 443)
    assert not policy.allows_host("https", "api.stripe.com", 443)
    assert not policy.allows_host("http", "api.github.com", 80)
    assert policy.allows_agent("claude")
    assert not policy.allows_agent("other")
    assert VALUE not in home.config_file.read_text()
    assert vault(home) == {"development": {"GITHUB_TOKEN": VALUE}}


@pytest.mark.parametrize("host", ["http://api.github.com", "a*.github.com", "2130706433", "a b"])
def test_invalid_host_binding_is_refused(home: Paths, run_cli: RunCli, host: str) -> None:
    config = home.config_file.read_bytes()
    failed(run_cli("secrets", "set", "K", "--host", host, input="v\n"))
    assert vault(home) == {}
    assert home.config_file.read_bytes() == config


def test_a_host_off_the_allowlist_warns_and_still_stores(home: Paths, run_cli: RunCli) -> None:
    ok(run_cli("allowlist", "add", "api.github.com", "*.stripe.com"))
    args = ("secrets", "set", "K", "--host", "not-allowlisted.example", "--host", "api.github.com")
    result = ok(run_cli(*args, input=VALUE), VALUE)
    assert result.stderr.splitlines() == [
        "blindkey: warning: not-allowlisted.example is not on the allowlist: the proxy refuses "
        "every call to it until `blindkey allowlist add not-allowlisted.example`"
    ]
    assert vault(home) == {"development": {"K": VALUE}}
    assert [str(h) for h in load_settings(home.config_file).policy("K").hosts] == [
        "not-allowlisted.example",
        "api.github.com",
    ]
    # Covered by an entry, exactly or through a wildcard on either side: no warning.
    for host in ("API.GitHub.com.", "api.stripe.com", "*.stripe.com", "*.eu.stripe.com"):
        covered = ok(run_cli("secrets", "set", "K", "--host", host, input=VALUE), VALUE)
        assert covered.stderr == "", host
    # A wildcard binding is quoted in the command it suggests.
    wild = ok(run_cli("secrets", "set", "K", "--host", "*.stripe.org", input=VALUE), VALUE)
    assert "`blindkey allowlist add '*.stripe.org'`" in wild.stderr


def test_bad_tier_is_a_usage_error(home: Paths, run_cli: RunCli) -> None:
    result = run_cli("secrets", "set", "K", "--tier", "secret", input="v\n")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert vault(home) == {}


# --- secrets list / delete / diff ----------------------------------------------------------


def test_list_json_names_policy_and_never_values(home: Paths, run_cli: RunCli) -> None:
    ok(run_cli("secrets", "set", "GITHUB_TOKEN", "--host", "api.github.com", input=VALUE))
    ok(run_cli("secrets", "set", "GITHUB_TOKEN", "--env", "staging", input="staging-value-42"))
    ok(
        run_cli(
            "secrets", "set", "STRIPE", "--tier", "restricted", "--yes", input="sk_live_value_77"
        )
    )

    result = ok(run_cli("secrets", "list", "--json"), VALUE, "staging-value-42", "sk_live_value_77")
    rows = json.loads(result.stdout)
    assert rows == [
        {
            "name": "GITHUB_TOKEN",
            "envs": ["development", "staging"],
            "tier": "open",
            "hosts": ["api.github.com"],
            "agents": ["*"],
            "release": ["proxy"],
        },
        {
            "name": "STRIPE",
            "envs": ["development"],
            "tier": "restricted",
            "hosts": [],
            "agents": ["*"],
            "release": ["proxy"],
        },
    ]
    human = ok(run_cli("secrets", "list"), VALUE, "staging-value-42", "sk_live_value_77")
    assert "GITHUB_TOKEN" in human.stdout
    assert "STRIPE" in human.stdout


def test_list_json_when_empty(run_cli: RunCli) -> None:
    assert json.loads(ok(run_cli("secrets", "list", "--json")).stdout) == []


def test_delete(home: Paths, run_cli: RunCli) -> None:
    ok(run_cli("secrets", "set", "A", "--tier", "controlled", "--yes", input="alpha-value"))
    ok(run_cli("secrets", "set", "B", input="beta-value"))

    result = ok(run_cli("secrets", "delete", "A"), "alpha-value", "beta-value")
    assert "deleted A" in result.stdout
    assert vault(home) == {"development": {"B": "beta-value"}}
    # the last copy is gone, so its metadata goes too
    assert "A" not in tomllib.loads(home.config_file.read_text()).get("secrets", {})

    line = failed(run_cli("secrets", "delete", "A"))
    assert "no secret named A" in line
    failed(run_cli("secrets", "delete", "NEVER_SET"))
    failed(run_cli("secrets", "delete", "BAD NAME"))
    assert vault(home) == {"development": {"B": "beta-value"}}


def test_delete_in_one_environment_keeps_metadata_used_elsewhere(
    home: Paths, run_cli: RunCli
) -> None:
    ok(run_cli("secrets", "set", "A", "--tier", "controlled", "--yes", input="dev-a-value"))
    ok(run_cli("secrets", "set", "A", "--env", "staging", input="stage-a-value"))
    ok(run_cli("secrets", "delete", "A", "--env", "staging"))
    assert vault(home) == {"development": {"A": "dev-a-value"}}
    assert load_settings(home.config_file).policy("A").tier == "controlled"


def test_diff_json(home: Paths, run_cli: RunCli) -> None:
    store = FileVault(home)
    store.set("development", "SAME", "same-value")
    store.set("staging", "SAME", "same-value")
    store.set("development", "CHANGED", "dev-changed-value")
    store.set("staging", "CHANGED", "stage-changed-value")
    store.set("development", "DEV_ONLY", "dev-only-value")
    store.set("staging", "STAGE_ONLY", "stage-only-value")
    values = ("same-value", "dev-changed-value", "stage-changed-value", "dev-only-value")

    result = differs(
        run_cli("secrets", "diff", "--from", "development", "--to", "staging", "--json"),
        *values,
        "stage-only-value",
    )
    assert json.loads(result.stdout) == {
        "from": "development",
        "to": "staging",
        "only_in_from": ["DEV_ONLY"],
        "only_in_to": ["STAGE_ONLY"],
        "differ": ["CHANGED"],
    }
    human = differs(run_cli("secrets", "diff", "--from", "development", "--to", "staging"), *values)
    assert "DEV_ONLY" in human.stdout
    assert "CHANGED" in human.stdout
    failed(run_cli("secrets", "diff", "--from", "development", "--to", "nowhere", "--json"))


def differs(
    result: subprocess.CompletedProcess[str], *values: str
) -> subprocess.CompletedProcess[str]:
    """Exit 1 as diff(1) does when the sides differ: no error line, no value shown."""
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    for value in values:
        assert value not in result.stdout
    return result


@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["human", "json"])
def test_diff_exits_0_when_the_same_and_1_when_one_value_differs(
    home: Paths, run_cli: RunCli, json_flag: tuple[str, ...]
) -> None:
    store = FileVault(home)
    store.set("development", "A", "same-value-a")
    store.set("staging", "A", "same-value-a")
    args = ("secrets", "diff", "--from", "development", "--to", "staging", *json_flag)
    same = ok(run_cli(*args), "same-value-a")
    assert same.stderr == ""
    store.set("staging", "A", "other-value-a")
    differs(run_cli(*args), "same-value-a", "other-value-a")
    store.set("staging", "A", "same-value-a")
    store.set("staging", "B", "only-in-staging")
    differs(run_cli(*args), "only-in-staging")


def test_missing_key_with_an_existing_vault_is_refused_and_nothing_is_lost(
    home: Paths, run_cli: RunCli
) -> None:
    ok(run_cli("secrets", "set", "A", input=VALUE))
    before = home.vault_file.read_bytes()
    home.vault_key.unlink()

    for args in (("secrets", "list", "--json"), ("secrets", "set", "B")):
        line = failed(run_cli(*args, input="other-value"), VALUE, "other-value")
        assert f"{home.vault_key}: vault key missing" in line
        assert "restore the key" in line
    assert home.vault_file.read_bytes() == before
    # a fresh key next to an existing vault would never decrypt it: none is made
    assert not home.vault_key.exists()


# --- agent ---------------------------------------------------------------------------------


def test_agent_add_json_prints_exactly_agent_and_token(home: Paths, run_cli: RunCli) -> None:
    result = ok(run_cli("agent", "add", "claude", "--json"))
    shown = json.loads(result.stdout)
    assert set(shown) == {"agent", "token"}
    assert shown["agent"] == "claude"
    token = shown["token"]
    assert token.startswith("bk_")
    assert token not in home.agents_file.read_text()
    assert AgentStore(home.agents_file, home.lock_file).load()["claude"].token_sha256 == (
        token_hash(token)
    )

    listing = ok(run_cli("agent", "list", "--json"), token)
    rows = json.loads(listing.stdout)
    assert [r["agent"] for r in rows] == ["claude"]
    assert rows[0]["revoked"] is None
    assert rows[0]["created"].endswith("Z")

    line = failed(run_cli("agent", "add", "claude", "--json"))
    assert "already exists" in line

    human = ok(run_cli("agent", "add", "other"))
    assert "shown this once" in human.stdout


def test_agent_revoke(home: Paths, run_cli: RunCli) -> None:
    ok(run_cli("agent", "add", "claude", "--json"))
    ok(run_cli("agent", "add", "keeper", "--json"))
    result = ok(run_cli("agent", "revoke", "claude"))
    assert "revoked" in result.stdout

    rows = {r["agent"]: r for r in json.loads(ok(run_cli("agent", "list", "--json")).stdout)}
    assert rows["claude"]["revoked"] is not None
    assert rows["keeper"]["revoked"] is None
    failed(run_cli("agent", "revoke", "ghost"))


@pytest.mark.parametrize("name", ["two words", "crlf\r\nname", "", "bob\n", "-x-"])
def test_agent_add_refuses_invalid_names(home: Paths, run_cli: RunCli, name: str) -> None:
    result = run_cli("agent", "add", name, "--json")
    if name.startswith("-"):
        assert result.returncode == 2  # argparse reads it as an option
    else:
        assert "invalid agent name" in failed(result)
    assert result.stdout == ""
    assert not home.agents_file.exists()


def test_agent_list_json_when_empty(run_cli: RunCli) -> None:
    assert json.loads(ok(run_cli("agent", "list", "--json")).stdout) == []


# --- allowlist -----------------------------------------------------------------------------


def allowlist(run_cli: RunCli) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(ok(run_cli("allowlist", "list", "--json")).stdout)
    return rows


def test_allowlist_add_list_remove(home: Paths, run_cli: RunCli) -> None:
    ok(run_cli("allowlist", "add", "api.github.com", "*.stripe.com", "http://127.0.0.1:9000"))
    assert allowlist(run_cli) == [
        {"entry": "api.github.com", "scheme": "https", "host": "api.github.com", "port": 443},
        {"entry": "*.stripe.com", "scheme": "https", "host": "*.stripe.com", "port": 443},
        {"entry": "http://127.0.0.1:9000", "scheme": "http", "host": "127.0.0.1", "port": 9000},
    ]
    ok(run_cli("allowlist", "add", "api.github.com"))  # already there: no duplicate
    assert len(allowlist(run_cli)) == 3

    ok(run_cli("allowlist", "remove", "*.stripe.com"))
    assert [r["entry"] for r in allowlist(run_cli)] == ["api.github.com", "http://127.0.0.1:9000"]
    assert tomllib.loads(home.config_file.read_text())["allowlist"]["hosts"] == [
        "api.github.com",
        "http://127.0.0.1:9000",
    ]
    line = failed(run_cli("allowlist", "remove", "*.stripe.com"))
    assert "not on the allowlist" in line


def test_allowlist_treats_equivalent_spellings_as_one_entry(run_cli: RunCli) -> None:
    ok(run_cli("allowlist", "add", "api.github.com"))
    ok(run_cli("allowlist", "add", "API.GitHub.com", "api.github.com.", "api.github.com:443"))
    assert [r["entry"] for r in allowlist(run_cli)] == ["api.github.com"]
    ok(run_cli("allowlist", "remove", "API.GITHUB.COM"))
    assert allowlist(run_cli) == []


@pytest.mark.parametrize(
    "entry",
    [
        "http://2130706433",
        "http://0x7f.1",
        "127.1",
        "ftp://example.com",
        "example.com/path",
        "user@example.com",
        "*.10.0.0.1",
        "example.com:0",
        "example.com:99999",
        "exa*mple.com",
        "",
    ],
)
def test_bad_allowlist_entry_is_refused_and_config_unchanged(
    home: Paths, run_cli: RunCli, entry: str
) -> None:
    ok(run_cli("allowlist", "add", "api.github.com"))
    config = home.config_file.read_bytes()
    line = failed(run_cli("allowlist", "add", "good.example.com", entry))
    assert "invalid allowlist entry" in line
    assert home.config_file.read_bytes() == config
    failed(run_cli("allowlist", "remove", "api.github.com", entry))
    assert home.config_file.read_bytes() == config


@pytest.mark.parametrize(
    "entry", ["*.com", "*.co.uk", "http://*.CO.UK.:8080", "*.github.io", "*.internal"]
)
def test_a_wildcard_over_a_public_suffix_is_refused(
    home: Paths, run_cli: RunCli, entry: str
) -> None:
    ok(run_cli("allowlist", "add", "api.github.com"))
    config = home.config_file.read_bytes()
    line = failed(run_cli("allowlist", "add", entry))
    assert "invalid allowlist entry" in line and "is a public suffix" in line
    assert home.config_file.read_bytes() == config
    # Written by hand it is refused the same way: the proxy would not load it either.
    text = config.decode().replace('"api.github.com"', f'"api.github.com", "{entry}"')
    home.config_file.write_text(text)
    checked = run_cli("config", "check")
    assert checked.returncode == 1 and "is a public suffix" in checked.stderr


def test_a_wildcard_under_a_public_suffix_is_accepted(run_cli: RunCli) -> None:
    ok(run_cli("allowlist", "add", "*.example.co.uk", "*.octocat.github.io"))
    assert [r["entry"] for r in allowlist(run_cli)] == ["*.example.co.uk", "*.octocat.github.io"]


def test_allowlist_list_json_when_empty(run_cli: RunCli) -> None:
    assert allowlist(run_cli) == []


# --- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("secrets",),
        ("secrets", "set"),
        ("secrets", "list"),
        ("secrets", "delete"),
        ("secrets", "diff"),
        ("secrets", "push"),
        ("secrets", "pull"),
        ("environment",),
        ("environment", "list"),
        ("environment", "switch"),
        ("environment", "copy"),
        ("agent",),
        ("agent", "add"),
        ("agent", "list"),
        ("agent", "revoke"),
        ("allowlist",),
        ("allowlist", "add"),
        ("allowlist", "remove"),
        ("allowlist", "list"),
        ("broker",),
        ("broker", "serve"),
    ],
)
def test_help_exits_zero(run_cli: RunCli, args: tuple[str, ...]) -> None:
    result = ok(run_cli(*args, "--help"))
    assert result.stdout.startswith(f"usage: blindkey {' '.join(args)}")
    assert result.stderr == ""


@pytest.mark.parametrize("group", ["secrets", "environment", "agent", "allowlist", "broker"])
def test_group_without_action_is_a_usage_error(run_cli: RunCli, group: str) -> None:
    result = run_cli(group)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_short_value_is_refused_without_allow_short(home: Paths, run_cli: RunCli) -> None:
    line = failed(run_cli("secrets", "set", "PIN", input="1234567\n"), "1234567")
    assert "cannot be redacted safely" in line and "--allow-short" in line
    assert vault(home) == {}


def test_allow_short_stores_and_marks_the_policy(home: Paths, run_cli: RunCli) -> None:
    ok(run_cli("secrets", "set", "PIN", "--allow-short", input="1234\n"))
    assert vault(home) == {"development": {"PIN": "1234"}}
    assert load_settings(home.config_file).policy("PIN").allow_short is True
    ok(run_cli("secrets", "set", "PIN", input="now-long-enough\n"))
    assert load_settings(home.config_file).policy("PIN").allow_short is False
