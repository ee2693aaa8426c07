"""`secrets set NAME --kind aws`: the JSON on stdin is checked and stored in one canonical
form, the kind and region go to config.toml, and no message ever repeats a key."""

from __future__ import annotations

import orjson
import pytest

from blindkey.broker.credentials.aws import AwsKeys, AwsKeysError, parse_keys, redaction_parts
from blindkey.broker.vault import FileVault
from blindkey.config.loader import load_settings
from blindkey.config.model import Route
from blindkey.config.paths import Paths
from tests.conftest import RunCli

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_set_aws_stores_canonical_keys(run_cli: RunCli, home: Paths) -> None:
    given = f'  {{"secret_access_key": "{SECRET}", "access_key_id": "{KEY_ID}"}}\n'
    done = run_cli("secrets", "set", "AWS", "--kind", "aws", "--region", "eu-west-1", input=given)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    policy = load_settings(home.config_file).policy("AWS")
    assert (policy.kind, policy.region) == ("aws", "eu-west-1")
    stored = FileVault(home).load()["development"]["AWS"]
    assert stored == AwsKeys(KEY_ID, SECRET).to_value()
    # Set again without --kind: still aws, still checked.
    again = run_cli("secrets", "set", "AWS", input='{"access_key_id": "short"}')
    assert again.returncode == 1 and "access_key_id" in again.stderr
    listed = run_cli("secrets", "list", "--json")
    assert SECRET not in listed.stdout and KEY_ID not in listed.stdout


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("AKIA-not-json", "JSON object"),
        (f'["{KEY_ID}", "{SECRET}"]', "JSON object"),
        (f'{{"access_key_id": "{KEY_ID}", "secret_access_key": "{SECRET}", "x": 1}}', "unknown"),
        (f'{{"access_key_id": "{KEY_ID.lower()}", "secret_access_key": "{SECRET}"}}', "capital"),
        (f'{{"access_key_id": "{KEY_ID}", "secret_access_key": "short"}}', "at least 16"),
        (f'{{"access_key_id": "{KEY_ID}", "secret_access_key": 7}}', "string"),
    ],
)
def test_set_aws_refuses_what_is_not_keys(
    run_cli: RunCli, home: Paths, given: str, said: str
) -> None:
    done = run_cli("secrets", "set", "AWS", "--kind", "aws", input=given)
    assert done.returncode == 1 and said in done.stderr
    assert SECRET not in done.stderr and KEY_ID.lower() not in done.stderr
    assert "AWS" not in FileVault(home).load().get("development", {})


def test_region_only_with_aws(run_cli: RunCli) -> None:
    done = run_cli("secrets", "set", "TOKEN", "--region", "eu-west-1", input="x" * 20)
    assert done.returncode == 2 and "--kind aws" in done.stderr


def test_parts_are_redacted_under_their_names() -> None:
    value = AwsKeys(KEY_ID, SECRET, "FwoGZXIvYXdzEXAMPLETOKEN").to_value()
    parts = redaction_parts({"AWS": value, "PLAIN": "ghp_plain_value_0123"})
    assert parts == {
        "AWS": value,
        "AWS.access_key_id": KEY_ID,
        "AWS.secret_access_key": SECRET,
        "AWS.session_token": "FwoGZXIvYXdzEXAMPLETOKEN",
        "PLAIN": "ghp_plain_value_0123",
    }
    assert orjson.loads(value)["session_token"] == "FwoGZXIvYXdzEXAMPLETOKEN"
    with pytest.raises(AwsKeysError):
        parse_keys('{"access_key_id": "AKIAIOSFODNN7EXAMPLE"}')


def test_route_add_sigv4(run_cli: RunCli, home: Paths) -> None:
    to = "https://dynamodb.eu-west-1.amazonaws.com"
    done = run_cli("route", "add", "ddb", "--to", to, "--sigv4", "AWS")
    assert done.returncode == 0, done.stderr
    assert load_settings(home.config_file).routes["ddb"] == Route(to, "sigv4", "AWS")
    both = run_cli("route", "add", "two", "--to", to, "--sigv4", "AWS", "--bearer", "AWS")
    assert both.returncode == 2 and "exactly one" in both.stderr
