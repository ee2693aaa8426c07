"""The audit directory on a real tmpfs, filled up: calls fail 503 audit_unavailable and
nothing reaches the upstream, `proxy status` and the log say why, and once space returns
calls are served again by themselves with no record lost."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from blindkey.audit.store import audit_files
from blindkey.audit.verify import verify
from blindkey.config.paths import Paths
from tests.audit.tmpfs import fill, small_tmpfs
from tests.proxy.conftest import eventually_status, open_env
from tests.upstream import HITS


def _ids(audit_dir: Path) -> set[str]:
    found = set()
    for path in audit_files(audit_dir):
        if path.exists():
            found |= {
                orjson.loads(line).get("request_id") for line in path.read_bytes().splitlines()
            }
    return found


@pytest.mark.timeout(60)
async def test_full_disk_fails_closed_and_recovers(
    home: Paths, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "blindkey.audit")
    with small_tmpfs(home.audit_dir, "256k") as disk:
        async with open_env(home) as env:
            headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
            answered: list[str] = []

            async def call() -> tuple[int, dict[str, str], bytes]:
                status, got, body = await env.call(headers=headers)
                answered.append(got["X-Blindkey-Request-Id"])
                return status, got, body

            assert (await call())[0] == 200
            fill(disk / "filler")
            for _ in range(500):  # the audit file's last page may still take a few records
                status, _, body = await call()
                if status == 503:
                    break
                assert status == 200
            assert status == 503 and orjson.loads(body)["error"] == "audit_unavailable"
            hits = len(env.upstream.app[HITS])
            for _ in range(20):
                status, _, body = await call()
                assert status == 503 and orjson.loads(body)["error"] == "audit_unavailable"
            assert len(env.upstream.app[HITS]) == hits, "a call went upstream unaudited"
            env.server.write_status()  # as the writer's retry does every quarter second
            shown = orjson.loads(home.status_file.read_bytes())["audit"]
            assert shown["state"] == "unavailable" and shown["error"] and shown["held"] >= 21
            async with env.session.get(f"http://127.0.0.1:{env.server.port}/health") as health:
                assert health.status == 503
                answered.append(health.headers["X-Blindkey-Request-Id"])
            assert any("audit unavailable" in r.getMessage() for r in caplog.records)

            (disk / "filler").unlink()
            await eventually_status(env, 200, headers, timeout=5)
            assert orjson.loads(home.status_file.read_bytes())["audit"]["state"] == "ok"
            assert any("writable again" in r.getMessage() for r in caplog.records)
            await env.server.audit.flush()
            missing = [rid for rid in answered if rid not in _ids(home.audit_dir)]
            assert missing == []
            verdict = verify(home.audit_dir, None)
            assert verdict.ok, verdict.reason
