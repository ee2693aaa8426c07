"""An agent that can write config.toml widens policy by hand (or the file loses its tail):
once an approver exists the broker refuses the widened file at reload, keeps serving the
approved policy, `proxy status` says why, and the calls it would allow stay refused until
`blindkey config approve` with a code. Every reload that changes policy is on the record."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.approvals_helpers import Approver, acli, audit_events, seed_of
from tests.proxy.conftest import Env, open_env
from tests.upstream import start_upstream


def _bound_to_someone_else(document: Any) -> None:
    # Last in the file, as the truncated file lost it.
    section = toml_table(document, "secrets", "GITHUB_TOKEN")
    section["agents"] = string_array(["other"])


@pytest.fixture
async def bound(home: Paths) -> AsyncIterator[Env]:
    async with open_env(home, _bound_to_someone_else) as running:
        yield running


async def _enrol() -> Approver:
    code, out, err = await acli("totp", "enroll", "--json")
    assert code == 0, err
    approver = Approver("default", seed_of(json.loads(out)["otpauth_uri"]))
    code, _, err = await acli("totp", "confirm", "--code", approver.code())
    assert code == 0, err
    return approver


async def _refused_call(env: Env) -> None:
    status, _, body = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert (status, orjson.loads(body)["error"]) == (403, "secret_denied")


def _status(env: Env) -> dict[str, Any]:
    status: dict[str, Any] = orjson.loads(env.paths.status_file.read_bytes())
    return status


async def _widened_by_hand_is_refused(env: Env, approver: Approver, text: str) -> None:
    env.paths.config_file.write_text(text)
    assert await env.server.reload() is False
    assert "widens the approved policy" in str(_status(env)["config_error"])
    await _refused_call(env)  # the agent is still not bound
    (reload,) = audit_events(env.paths.audit_dir, "config")[-1:]
    assert reload["change"] == "reload" and reload["refused"] is True
    assert "secrets.GITHUB_TOKEN" in reload["names"]
    code, _, err = await acli("config", "approve")
    assert code == 4 and "--code" in err
    await _refused_call(env)
    code, _, err = await acli("config", "approve", "--code", approver.code())
    assert code == 0, err
    status, _, _ = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert status == 200
    approved = audit_events(env.paths.audit_dir, "config")[-1]
    assert approved["approver"] == "default" and approved["via"] == "approve"
    assert await env.server.reload() is True
    assert _status(env)["config_error"] is None


async def test_a_hand_edit_that_widens_waits_for_a_code(bound: Env) -> None:
    await _refused_call(bound)
    approver = await _enrol()
    text = bound.paths.config_file.read_text()
    assert 'agents = ["other"]' in text
    await _widened_by_hand_is_refused(bound, approver, text.replace('["other"]', '["*"]'))


async def test_a_file_that_lost_its_tail_is_refused(bound: Env) -> None:
    approver = await _enrol()
    text = bound.paths.config_file.read_text()
    # Cut where the last table starts: the file still parses, the binding is gone.
    await _widened_by_hand_is_refused(bound, approver, text[: text.index("[secrets.GITHUB")])


async def test_without_an_approver_a_hand_edit_applies_and_is_recorded(bound: Env) -> None:
    text = bound.paths.config_file.read_text()
    bound.paths.config_file.write_text(text.replace('["other"]', '["*"]'))
    assert await bound.server.reload() is True
    status, _, _ = await bound.call(headers=bound.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert status == 200
    (reload,) = audit_events(bound.paths.audit_dir, "config")
    assert reload["change"] == "reload" and reload["refused"] is False
    assert reload["before"]["secrets.GITHUB_TOKEN"]["agents"] == ["other"]
    assert reload["after"]["secrets.GITHUB_TOKEN"]["agents"] == ["*"]


async def test_a_hand_edit_that_narrows_applies_without_a_code(bound: Env) -> None:
    await _enrol()
    text = bound.paths.config_file.read_text()
    bound.paths.config_file.write_text(text + '\n[secrets.STRIPE_KEY]\nagents = ["nobody"]\n')
    assert await bound.server.reload() is True
    status, _, body = await bound.call(headers=bound.headers(X_AS_Inject_Bearer="STRIPE_KEY"))
    assert (status, orjson.loads(body)["error"]) == (403, "secret_denied")
    reload = audit_events(bound.paths.audit_dir, "config")[-1]
    assert reload["refused"] is False and reload["names"] == ["secrets.STRIPE_KEY"]


async def test_an_allowlist_added_by_hand_stays_out_until_approved(bound: Env) -> None:
    other, port = await start_upstream()
    try:
        approver = await _enrol()
        target = f"http://127.0.0.1:{port}"
        text = bound.paths.config_file.read_text()
        old = f'hosts = ["http://127.0.0.1:{bound.upstream_port}"]'
        assert old in text
        widened = text.replace(
            old, f'hosts = ["http://127.0.0.1:{bound.upstream_port}", "{target}"]'
        )
        bound.paths.config_file.write_text(widened)
        assert await bound.server.reload() is False
        # STRIPE_KEY is bound to no host: "any allowlisted host" is the approved allowlist.
        headers = bound.to(target + "/echo", X_AS_Inject_Bearer="STRIPE_KEY")
        status, _, body = await bound.call(headers=headers)
        assert (status, orjson.loads(body)["error"]) == (403, "host_not_allowed")
        code, _, err = await acli("config", "approve", "--code", approver.code())
        assert code == 0, err
        status, _, _ = await bound.call(headers=headers)
        assert status == 200
    finally:
        await other.cleanup()


async def test_where_audit_copies_and_notices_go_waits_for_a_code(bound: Env) -> None:
    """Re-pointing the approvers' webhook (or the SIEM's copy) is how an agent that writes
    config.toml would act unseen: a change of [notify] or [audit.ship] waits for a code,
    and the record names it without the webhook's path, which is its credential."""
    approver = await _enrol()
    text = bound.paths.config_file.read_text()
    hook = "https://hooks.example.com/services/T0/B0/Sekrit0Path"
    assert 'webhook = ""' in text
    pointed = text.replace('webhook = ""', f'webhook = "{hook}"', 1)
    bound.paths.config_file.write_text(pointed)
    assert await bound.server.reload() is False
    error = str(_status(bound)["config_error"])
    assert "[notify] webhook changes" in error and "Sekrit0Path" not in error
    (reload,) = audit_events(bound.paths.audit_dir, "config")[-1:]
    assert reload["refused"] is True and "notify" in reload["names"]
    assert reload["after"]["notify"]["webhook"].startswith("https://hooks.example.com/... (")
    assert not any("Sekrit0Path" in p.read_text() for p in bound.paths.audit_dir.glob("*.jsonl"))
    code, _, err = await acli("config", "approve", "--code", approver.code())
    assert code == 0, err
    assert await bound.server.reload() is True
    # Sending the notices nowhere again is as much a change as pointing them elsewhere.
    bound.paths.config_file.write_text(text)
    assert await bound.server.reload() is False
    assert "[notify] webhook changes" in str(_status(bound)["config_error"])
