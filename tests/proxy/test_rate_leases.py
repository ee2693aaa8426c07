"""Leased rate calls through the real proxy and its broker subprocess: a call decided with
calls the broker leased carries the value like any other, and a reload that tightens the
rate voids what the proxy held of the old one."""

from __future__ import annotations

from typing import Any

import orjson

from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import OTHER, Env, open_env
from tests.upstream import HITS


def _generous(document: Any) -> None:
    toml_table(document, "secrets", "STRIPE_KEY")["rate"] = "1000/s"


async def _charge(env: Env) -> tuple[int, dict[str, str], bytes]:
    headers = env.headers("/echo", X_AS_Inject_Bearer="STRIPE_KEY")
    return await env.call(headers=headers)


async def test_leased_calls_carry_the_value_and_a_tighter_rate_voids_them(home: Paths) -> None:
    async with open_env(home, _generous) as env:
        for _ in range(50):
            status, _, body = await _charge(env)
            assert status == 200, body
            assert OTHER not in body.decode()  # the echo of the value is redacted
        assert env.server.runtime.authoriser.leases.pools, "calls are leased"
        sent = [headers.get("Authorization") for _, _, headers in env.upstream.app[HITS]]
        assert sent[-50:] == [f"Bearer {OTHER}"] * 50

        env.configure(lambda document: toml_table(document, "secrets", "STRIPE_KEY").update(
            rate="2/h"))  # fmt: skip
        await env.server.reload()
        answers = [await _charge(env) for _ in range(3)]
        assert [status for status, _, _ in answers] == [200, 200, 429]
        _, headers, body = answers[-1]
        error = orjson.loads(body)
        assert error["error"] == "rate_limited" and error["detail"] == "secrets.STRIPE_KEY.rate"
        assert 1700 <= int(headers["Retry-After"]) <= 1800
