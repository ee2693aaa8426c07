"""The order of the stages is part of the design (proxy/request/pipeline.py): the allowlist is
checked before the broker is asked for values, and an unknown caller learns nothing of it."""

from __future__ import annotations

import orjson

from tests.proxy.conftest import Env


async def last_record(env: Env) -> dict[str, object]:
    await env.server.audit.flush()
    record = orjson.loads((env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()[-1])
    assert isinstance(record, dict)
    return record


async def test_a_target_off_the_allowlist_is_refused_before_the_secret_is_looked_up(
    env: Env,
) -> None:
    # The broker would answer 404 unknown_secret; the allowlist refuses first.
    headers = env.to("https://not-allowed.example/", X_AS_Inject_Bearer="NO_SUCH_SECRET")
    status, _, body = await env.call(headers=headers)
    assert (status, orjson.loads(body)["error"]) == (403, "host_not_allowed")
    # The refusal still names who asked.
    record = await last_record(env)
    assert (record["agent"], record["reason"]) == ("tester", "host_not_allowed")


async def test_an_unknown_caller_is_refused_401_whatever_the_target(env: Env) -> None:
    for target in ("https://not-allowed.example/", f"{env.base}/echo"):
        headers = {**env.to(target, X_AS_Inject_Bearer="GITHUB_TOKEN"), "X-AS-Agent-Token": "x"}
        status, _, body = await env.call(headers=headers)
        assert (status, orjson.loads(body)["error"]) == (401, "unauthenticated"), target
