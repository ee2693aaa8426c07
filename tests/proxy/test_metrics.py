"""Issue 30: Prometheus metrics on an opt-in loopback listener, scraped over a real socket
after real calls through the real proxy: calls by decision and code, the latency
histogram, redactions, held calls, pending approvals, grants, the connection guard, the
audit and the broker. No secret value ever appears in them."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import orjson
import pytest

from blindkey.config.edit import toml_table
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from tests.approvals_helpers import acli, enrol
from tests.conftest import RunCli
from tests.proxy.conftest import (
    BASIC,
    OTHER,
    SECRET,
    Env,
    open_env,
    set_secret_policy,
    status_after_reload,
)

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def listen_on(address: str) -> Any:
    def configure(document: Any) -> None:
        toml_table(document, "metrics")["listen"] = address

    return configure


async def scrape(env: Env) -> tuple[str, dict[str, float]]:
    listener = env.server.metrics
    assert listener is not None and listener.port
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{listener.port}/metrics"
        async with session.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return text, samples


async def test_metrics_after_real_calls(home: Paths) -> None:
    async with open_env(home, listen_on("127.0.0.1:0")) as env:
        status, _, body = await env.call(
            headers=env.headers("/echo", X_AS_Inject_Bearer="GITHUB_TOKEN")
        )
        assert status == 200 and b"[REDACTED:GITHUB_TOKEN]" in body
        for _ in range(2):
            status, _, _ = await env.call(
                headers=env.to("https://evil.example/", X_AS_Inject_Bearer="GITHUB_TOKEN")
            )
            assert status == 403
        await env.server.audit.flush()
        text, samples = await scrape(env)
    assert samples['blindkey_calls_total{decision="allowed",code="ok",status="200"}'] == 1
    refused = 'blindkey_calls_total{decision="blocked",code="host_not_allowed",status="403"}'
    assert samples[refused] == 2
    assert samples["blindkey_redactions_total"] >= 1
    assert samples['blindkey_call_duration_seconds_bucket{le="+Inf"}'] == 3
    assert samples["blindkey_call_duration_seconds_count"] == 3
    assert samples["blindkey_call_duration_seconds_sum"] > 0
    buckets = [
        v for k, v in samples.items() if k.startswith("blindkey_call_duration_seconds_bucket")
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert samples["blindkey_connections_open"] >= 0
    assert samples["blindkey_connections_refused_total"] == 0
    assert samples["blindkey_broker_up"] == 1
    assert samples["blindkey_audit_seq"] >= 3
    assert samples["blindkey_audit_available"] == 1
    assert samples["blindkey_audit_writes_total"] >= samples["blindkey_audit_writes_synced_total"]
    assert samples["blindkey_held_calls"] == 0
    assert samples["blindkey_pending_approvals"] == 0 and samples["blindkey_active_grants"] == 0
    for value in (SECRET, OTHER, BASIC):
        assert value not in text


async def pending_id() -> str:
    """The held call's approval id, once the broker lists it (the call is then waiting)."""
    deadline = time.monotonic() + 5
    while True:
        code, out, err = await acli("approvals", "list", "--json")
        assert code == 0, err
        listed = orjson.loads(out)
        if listed:
            return str(listed[0]["id"])
        assert time.monotonic() < deadline, "the held call was never listed"
        await asyncio.sleep(0.05)


async def test_held_call_and_pending_approval_counted(home: Paths) -> None:
    async with open_env(home, listen_on("127.0.0.1:0")) as env:
        await asyncio.to_thread(enrol)
        set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
        headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
        await status_after_reload(env, 403, headers, code="approval_required")
        headers["X-AS-Wait-Approval"] = "30"
        held = asyncio.create_task(env.call(headers=headers), name="held-call")
        try:
            pending = await pending_id()
            _, samples = await scrape(env)
            assert samples["blindkey_held_calls"] == 1
            assert samples["blindkey_pending_approvals"] == 1
            code, _, err = await acli("deny", "--request", pending)
            assert code == 0, err
            status, _, _ = await asyncio.wait_for(held, 5)
        finally:
            held.cancel()  # a failed check must not leave the call holding the drain up
        assert status == 403
        await env.server.audit.flush()
        _, samples = await scrape(env)
    assert samples["blindkey_held_calls"] == 0
    denied = 'blindkey_calls_total{decision="blocked",code="approval_denied",status="403"}'
    assert samples[denied] == 1


async def test_only_metrics_path_and_no_browser(home: Paths) -> None:
    async with open_env(home, listen_on("127.0.0.1:0")) as env:
        listener = env.server.metrics
        assert listener is not None
        base = f"http://127.0.0.1:{listener.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/") as response:
                assert response.status == 404
            headers = {"Origin": "https://evil.example"}
            async with session.get(base + "/metrics", headers=headers) as response:
                assert response.status == 403


async def test_off_by_default(env: Env) -> None:
    assert env.server.metrics is None and env.server.audit.observe is None


@pytest.mark.parametrize("address", ["0.0.0.0:9465", "192.0.2.1:9465", "[::]:9465"])
def test_non_loopback_address_is_refused(home: Paths, run_cli: RunCli, address: str) -> None:
    """Written by hand into config.toml: the proxy does not start, and says why."""
    text = home.config_file.read_text()
    assert '\n[metrics]\nlisten = ""' in text
    home.config_file.write_text(text.replace('listen = ""', f'listen = "{address}"', 1))
    with pytest.raises(BlindkeyError, match="not a loopback address"):
        load_settings(home.config_file)
    result = run_cli("proxy", "start", "--port", "0", "--foreground")
    assert result.returncode == 1
    assert f"[metrics] listen: '{address}' is not a loopback address" in result.stderr
