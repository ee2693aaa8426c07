"""The redactor is built when the proxy starts, not by the first call that needs it: with
thousands of secrets that build takes seconds, and the first agent would wait for it."""

from __future__ import annotations

from typing import Any

import pytest

from blindkey.config.paths import Paths
from tests.proxy.conftest import open_env


async def test_the_first_call_finds_the_redactor_built(
    home: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(home) as env:
        assert env.server.warming is not None
        await env.server.warming  # the event: the build started at start is done
        broker = env.server.runtime.authoriser.broker
        asked: list[str] = []
        real = broker.call

        async def counted(op: str, **params: Any) -> Any:
            asked.append(op)
            return await real(op, **params)

        monkeypatch.setattr(broker, "call", counted)
        status, _, _ = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
        assert status == 200
        assert "resolve" in asked and "redaction_set" not in asked
