"""Issue 30: smokescreen's canonical decision record. Each request record names the
address dialled (`peer`), the allowlist entry that matched (`rule`) and a sentence for
people beside `reason` (`detail`), for calls allowed and refused at each stage."""

from __future__ import annotations

from typing import Any

import orjson

from blindkey.audit.store import audit_file
from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import Env, open_env


async def record_of(env: Env, headers: dict[str, str]) -> tuple[int, dict[str, Any], bytes]:
    status, answer, body = await env.call(headers=headers)
    await env.server.audit.flush()
    request_id = answer["X-Blindkey-Request-Id"]
    for line in audit_file(env.paths.audit_dir).read_bytes().splitlines():
        record = orjson.loads(line)
        if record.get("request_id") == request_id:
            return status, record, body
    raise AssertionError(f"no record for {request_id}")


async def test_allowed_call_names_peer_rule_and_detail(env: Env) -> None:
    status, record, _ = await record_of(env, env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert status == 200 and record["decision"] == "allowed"
    rule = f"http://127.0.0.1:{env.upstream_port}"
    # The upstream's own listening address: the one the proxy connected to.
    assert record["peer"] == f"127.0.0.1:{env.upstream_port}"
    assert record["rule"] == rule
    assert record["detail"] == (
        f"allowed: 127.0.0.1 matched the allowlist entry {rule}, dialled {record['peer']}"
    )


async def test_refused_off_the_allowlist(env: Env) -> None:
    headers = env.to("https://evil.example/x", X_AS_Inject_Bearer="GITHUB_TOKEN")
    status, record, body = await record_of(env, headers)
    assert status == 403 and record["reason"] == "host_not_allowed"
    assert record["rule"] is None and record["peer"] is None
    assert record["detail"] == orjson.loads(body)["message"]
    assert "evil.example is not on the allowlist" in record["detail"]


async def test_refused_after_the_allowlist_matched(env: Env) -> None:
    """The entry matched, the secret did not exist: the rule is named, nothing dialled."""
    status, record, body = await record_of(env, env.headers(X_AS_Inject_Bearer="NO_SUCH"))
    assert status == 404 and record["reason"] == "unknown_secret"
    assert record["rule"] == f"http://127.0.0.1:{env.upstream_port}"
    assert record["peer"] is None
    assert record["detail"] == orjson.loads(body)["message"]


async def test_blocked_address_names_the_rule_that_matched(home: Paths) -> None:
    """`localhost` is on the allowlist by name, but resolves to loopback: refused at the
    address, with the entry that let the name through."""

    def allow_localhost(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].append("http://localhost:9")

    async with open_env(home, allow_localhost) as env:
        headers = env.to("http://localhost:9/x", X_AS_Inject_Bearer="GITHUB_TOKEN")
        status, record, body = await record_of(env, headers)
    assert status == 403 and record["reason"] == "blocked_address"
    assert record["rule"] == "http://localhost:9" and record["peer"] is None
    assert record["detail"] == orjson.loads(body)["message"]
