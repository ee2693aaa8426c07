"""Policy per request through the real proxy and broker: methods and paths refused naming
the rule, rates answered 429 with Retry-After, report mode, and a hand edit that removes a
rule held back by the policy gate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from blindkey.audit.store import audit_file
from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.approvals_helpers import Approver, acli, seed_of
from tests.proxy.conftest import Env, open_env
from tests.upstream import HITS


def _rules(document: Any) -> None:
    github = toml_table(document, "secrets", "GITHUB_TOKEN")
    github["methods"] = string_array(["GET"])
    github["paths"] = string_array(["/repos/acme/*", "/user"])
    toml_table(document, "secrets", "STRIPE_KEY")["rate"] = "2/h"


def _report(document: Any) -> None:
    _rules(document)
    toml_table(document, "policy")["mode"] = "report"
    toml_table(document, "secrets", "BASIC_PAIR")["agents"] = string_array(["someone"])


@pytest.fixture
async def ruled(home: Paths) -> AsyncIterator[Env]:
    async with open_env(home, _rules) as running:
        yield running


async def records(env: Env) -> dict[str, dict[str, Any]]:
    await env.server.audit.flush()
    lines = audit_file(env.paths.audit_dir).read_bytes().splitlines()
    return {r["request_id"]: r for r in map(orjson.loads, lines) if "request_id" in r}


async def _call(env: Env, path: str, method: str = "GET", name: str = "GITHUB_TOKEN") -> Any:
    headers = env.headers(path, X_AS_Inject_Bearer=name, X_AS_Method=method)
    return await env.call(headers=headers)


def _upstream_paths(env: Env) -> list[str]:
    return [path for _, path, _ in env.upstream.app[HITS]]


PATHS = [
    # path as the agent sent it, method, expected status, the rule a refusal names
    ("/repos/acme/widgets", "GET", 200, None),
    ("/user", "GET", 200, None),
    ("/user/", "GET", 200, None),
    ("/user?per_page=100", "GET", 200, None),
    ("/admin", "GET", 403, "paths"),
    ("/user", "DELETE", 403, "methods"),
    ("/user", "get", 200, None),
    ("/repos/acme/widgets/issues", "GET", 403, "paths"),
    ("/repos/acme/../../admin", "GET", 403, "paths"),
    ("/repos/acme/x%2F..%2F..%2Fadmin", "GET", 403, "paths"),
    ("/admin/../user", "GET", 403, "paths"),
    ("/User", "GET", 403, "paths"),
    ("/admin?/user", "GET", 403, "paths"),
]


async def test_methods_and_paths_decided_per_call(ruled: Env) -> None:
    # One proxy answers them in turn: an answer kept for one path never serves another.
    for _ in range(2):
        for path, method, expected, rule in PATHS:
            status, headers, body = await _call(ruled, path, method)
            assert status == expected, (path, method, body)
            if rule is None:
                continue
            error = orjson.loads(body)
            assert error["error"] == "secret_denied"
            assert error["detail"] == f"secrets.GITHUB_TOKEN.{rule}"
            assert f"secrets.GITHUB_TOKEN.{rule}" in error["message"]
            assert "Retry-After" not in headers
    hits = _upstream_paths(ruled)
    assert not any("admin" in hit or "issues" in hit or "User" in hit for hit in hits), hits
    # Another secret without rules may go anywhere on its hosts.
    status, _, _ = await _call(ruled, "/admin", "DELETE", name="BASIC_PAIR")
    assert status == 200


async def test_a_rate_answers_429_with_retry_after(ruled: Env) -> None:
    for _ in range(2):
        status, _, _ = await _call(ruled, "/v1/charges", "POST", name="STRIPE_KEY")
        assert status == 200
    status, headers, body = await _call(ruled, "/v1/charges", "POST", name="STRIPE_KEY")
    assert status == 429, body
    error = orjson.loads(body)
    assert error["error"] == "rate_limited" and error["detail"] == "secrets.STRIPE_KEY.rate"
    # 2/h: one call refills in 30 minutes.
    assert 1700 <= int(headers["Retry-After"]) <= 1800
    written = await records(ruled)
    refused = written[headers["X-Blindkey-Request-Id"]]
    assert refused["reason"] == "rate_limited" and refused["status"] == 429
    assert len(_upstream_paths(ruled)) == 2


async def test_report_mode_passes_and_records_would_deny(home: Paths) -> None:
    async with open_env(home, _report) as env:
        status, headers, _ = await _call(env, "/admin", "DELETE")
        assert status == 200
        status, clean, _ = await _call(env, "/user")
        assert status == 200
        for _ in range(3):
            status, limited, _ = await _call(env, "/v1", name="STRIPE_KEY")
            assert status == 200
        written = await records(env)
        would = written[headers["X-Blindkey-Request-Id"]]["would_deny"]
        assert would["error"] == "secret_denied"
        assert would["detail"] == "secrets.GITHUB_TOKEN.methods"
        assert "would_deny" not in written[clean["X-Blindkey-Request-Id"]]
        would = written[limited["X-Blindkey-Request-Id"]]["would_deny"]
        assert (would["error"], would["detail"]) == ("rate_limited", "secrets.STRIPE_KEY.rate")
        # Bindings are enforced whatever the mode.
        status, _, body = await _call(env, "/user", name="BASIC_PAIR")
        assert (status, orjson.loads(body)["error"]) == (403, "secret_denied")


async def _enrol() -> Approver:
    code, out, err = await acli("totp", "enroll", "--json")
    assert code == 0, err
    approver = Approver("default", seed_of(json.loads(out)["otpauth_uri"]))
    code, _, err = await acli("totp", "confirm", "--code", approver.code())
    assert code == 0, err
    return approver


async def test_a_hand_edit_removing_a_rule_waits_for_a_code(ruled: Env) -> None:
    approver = await _enrol()
    text = ruled.paths.config_file.read_text()
    assert 'methods = ["GET"]' in text
    ruled.paths.config_file.write_text(text.replace('methods = ["GET"]', "methods = []"))
    assert await ruled.server.reload() is False
    status, _, body = await _call(ruled, "/user", "DELETE")
    assert status == 403 and orjson.loads(body)["detail"] == "secrets.GITHUB_TOKEN.methods"
    code, _, err = await acli("config", "approve", "--code", approver.code())
    assert code == 0, err
    status, _, _ = await _call(ruled, "/user", "DELETE")
    assert status == 200
