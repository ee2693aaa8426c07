"""A role's keys through the real proxy and its broker: X-AS-Inject-Sigv4 signs with the
temporary keys STS issued (and their session token), which the upstream checks with
botocore; the stored keys reach neither the upstream nor the agent nor any record."""

from __future__ import annotations

from typing import Any

import orjson

from blindkey.broker.credentials.aws import AwsKeys
from blindkey.broker.vault import FileVault
from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.broker.credentials.helpers import everything_written
from tests.broker.credentials.test_assume_role import ARN, Sts, sts
from tests.proxy.conftest import open_env
from tests.proxy.sigv4_oracle import KEYS, SEEN, start_oracle

__all__ = ["sts"]  # the fixture, shared with the broker's role tests

TEMPORARY = AwsKeys(
    "ASIA0000000000000042", "tEmPoRaRySeCrEtKeY0123456789abcdefABCDEF", "IQoJb3JpZ2luX2Vj" * 8
)


async def test_the_call_is_signed_with_the_role_s_keys(home: Paths, sts: Sts) -> None:
    sts.to_issue = [TEMPORARY]
    oracle, port = await start_oracle(TEMPORARY)
    upstream = f"http://127.0.0.1:{port}"
    FileVault(home).set("development", "AWS", KEYS.to_value())

    def configure(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].extend([upstream, sts.url.rstrip("/")])
        section = toml_table(document, "secrets", "AWS")
        section.update({"kind": "aws", "role_arn": ARN, "sts_url": sts.url})
        section["hosts"] = string_array([upstream])

    try:
        async with open_env(home, configure) as env:
            headers = env.to(f"{upstream}/prod/items", **{
                "X-AS-Inject-Sigv4": "AWS", "X-AS-Sigv4-Region": "eu-west-1",
                "X-AS-Sigv4-Service": "execute-api"})  # fmt: skip
            status, _, body = await env.call("GET", headers=headers)
    finally:
        await oracle.cleanup()
    assert status == 200, body
    answer = orjson.loads(body)
    assert answer["signature_ok"] and answer["token_ok"], answer
    (signed, _, _), = sts.calls  # fmt: skip
    assert signed
    _, _, seen, _ = oracle.app[SEEN][-1]
    credential = seen["authorization"].split("Credential=")[1]
    assert credential.startswith(f"{TEMPORARY.access_key_id}/")
    assert seen["x-amz-security-token"] == TEMPORARY.session_token
    assert answer["echo"] == ["[REDACTED:AWS.access_key_id]", "[REDACTED:AWS.secret_access_key]",
                              "[REDACTED:AWS.session_token]"]  # fmt: skip
    written = everything_written(home) + body
    for stored in (KEYS.access_key_id, KEYS.secret_access_key):
        assert stored.encode() not in written and stored not in str(seen)
