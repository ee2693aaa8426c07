"""`secrets set --kind`: the kind and its keys land in [secrets.NAME], the material in the
store, and a kind that lacks what it needs (or asks to be released to env/exec) is refused."""

from __future__ import annotations

from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from tests.broker.credentials.helpers import stored
from tests.conftest import RunCli


def test_oauth2_secret_set(home: Paths, run_cli: RunCli) -> None:
    done = run_cli(
        "secrets", "set", "GOOGLE", "--kind", "oauth2", "--token-url",
        "https://oauth2.googleapis.com/token", "--client-id", "cid.apps", "--scope", "drive",
        input="refresh-token-value-123\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refresh-token-value-123" not in done.stdout + done.stderr
    policy = load_settings(home.config_file).policy("GOOGLE")
    assert (policy.kind, policy.token_url, policy.client_id, policy.scope) == (
        "oauth2", "https://oauth2.googleapis.com/token", "cid.apps", "drive",
    )  # fmt: skip
    assert policy.grant == "refresh_token"
    assert stored(home, "GOOGLE") == "refresh-token-value-123"
    # Back to a plain value: the oauth2 keys go with the kind.
    done = run_cli("secrets", "set", "GOOGLE", "--kind", "value", input="plain-value-456\n")
    assert done.returncode == 0, done.stderr
    policy = load_settings(home.config_file).policy("GOOGLE")
    assert (policy.kind, policy.token_url, policy.scope) == ("value", "", "")


def test_github_app_secret_set(home: Paths, run_cli: RunCli) -> None:
    done = run_cli(
        "secrets", "set", "GH_APP", "--kind", "github-app", "--app-id", "123",
        "--installation-id", "456", input="-----BEGIN PRIVATE KEY-----\nabc\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    policy = load_settings(home.config_file).policy("GH_APP")
    assert (policy.kind, policy.app_id, policy.installation_id) == ("github-app", "123", "456")


def test_a_kind_without_its_keys_is_refused(home: Paths, run_cli: RunCli) -> None:
    done = run_cli(
        "secrets", "set", "GOOGLE", "--kind", "oauth2", "--client-id", "c", input="x" * 20
    )
    assert done.returncode == 2 and "--kind oauth2 needs --token-url" in done.stderr
    done = run_cli("secrets", "set", "GOOGLE", "--token-url", "https://a/t", input="x" * 20)
    assert done.returncode == 2 and "--token-url needs --kind" in done.stderr
    done = run_cli(
        "secrets", "set", "GOOGLE", "--kind", "oauth2", "--token-url", "https://a/t",
        "--client-id", "c", "--release", "proxy,env", input="x" * 20,
    )  # fmt: skip
    assert done.returncode == 2 and "for the proxy only" in done.stderr
    assert "GOOGLE" not in load_settings(home.config_file).secrets


def test_aws_secret_with_a_role(home: Paths, run_cli: RunCli) -> None:
    arn = "arn:aws:iam::123456789012:role/agent-reader"
    keys = '{"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "' + "s" * 40 + '"}'
    done = run_cli("secrets", "set", "AWS", "--kind", "aws", "--role-arn", arn, input=keys)
    assert done.returncode == 0, done.stderr
    policy = load_settings(home.config_file).policy("AWS")
    assert (policy.kind, policy.role_arn) == ("aws", arn)
    done = run_cli("secrets", "set", "AWS", "--kind", "aws", input=keys)
    assert done.returncode == 0, done.stderr
    assert load_settings(home.config_file).policy("AWS").role_arn == ""  # the kind's keys go
    done = run_cli("secrets", "set", "G", "--kind", "oauth2", "--token-url", "https://a/t",
                   "--client-id", "c", "--role-arn", arn, input="x" * 20)  # fmt: skip
    assert done.returncode == 2 and "--role-arn is for --kind aws" in done.stderr
    done = run_cli("secrets", "set", "AWS", "--kind", "aws", "--role-arn", "reader", input=keys)
    assert done.returncode == 2 and "is not an IAM role's ARN" in done.stderr
