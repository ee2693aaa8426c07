"""`audit report --html` in a real headless Chromium: the page loads nothing from the
network, draws the calls over time, lists per-secret and per-agent figures and the
flagged records, and says what `audit verify` says."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blindkey.audit.events import append_event
from blindkey.audit.record import AuditRecord
from blindkey.audit.writer import AuditWriter
from blindkey.config.paths import Paths
from tests.conftest import RunCli
from tests.e2e.chromium import Chromium

SCREENSHOT = os.environ.get("BLINDKEY_REPORT_SCREENSHOT")
START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Chromium]:
    async with Chromium.launch(tmp_path / "chromium-profile", []) as browser:
        yield browser


async def write_day(home: Paths) -> int:
    """Three agents over six hours: ordinary calls and one agent's refusal streak; how
    many refusals."""
    refused = 0
    now = [START.timestamp()]
    writer = AuditWriter(home.audit_dir, clock=lambda: now[0])  # flags on the records' time
    await writer.start()
    agents = [("ci-bot", "GITHUB_TOKEN", "api.github.com"), ("billing", "STRIPE_KEY",
              "api.stripe.com"), ("writer", "OPENAI_KEY", "api.openai.com")]  # fmt: skip
    for minute in range(0, 360, 2):
        for index, (agent, secret, host) in enumerate(agents):
            if (minute + index * 7) % 5 == 0:
                continue
            record = AuditRecord(
                request_id=f"{agent}-{minute}",
                method="GET",
                url=f"https://{host}/v1/items",
                agent=agent,
                env="production",
                host=host,
                secrets=[secret],
                styles=["bearer"],
                status=200,
                bytes_out=1200 + minute,
                started=(START + timedelta(minutes=minute)).timestamp(),
            )
            now[0] = record.started
            writer.seal(record)
            if agent == "billing" and minute == 200:
                for second in range(5, 40, 5):  # seven refusals in half a minute
                    now[0] = record.started + second
                    refusal = AuditRecord(
                        request_id=f"refused-{second}",
                        method="POST",
                        url="https://evil.example/collect",
                        agent=agent,
                        host="evil.example",
                        secrets=[secret],
                        started=now[0],
                    )
                    refusal.block("host_not_allowed", 403)
                    refused += 1
                    writer.seal(refusal)
    await writer.close()
    append_event(home.audit_dir, "config", {"change": "allowlist add api.openai.com"})
    return refused


@pytest.mark.timeout(60)
async def test_report_renders_in_chromium(
    home: Paths, run_cli: RunCli, chromium: Chromium, tmp_path: Path
) -> None:
    refused = await write_day(home)
    page = tmp_path / "report.html"
    result = run_cli("audit", "report", "--html", str(page))
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    # Self-contained: nothing a browser would fetch.
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|\bhref=|url\(", html)

    tab = await chromium.new_tab()
    await tab.send("Network.enable")
    size = {"width": 1100, "height": 1400, "deviceScaleFactor": 1, "mobile": False}
    await tab.send("Emulation.setDeviceMetricsOverride", size)
    await tab.open(page.as_uri())
    seen = await tab.evaluate(
        """(() => {
        const rows = t => [...document.querySelectorAll('h2')].find(h => h.textContent === t)
            .nextElementSibling.querySelectorAll('tbody tr');
        const bars = [...document.querySelectorAll('svg rect')]
            .filter(r => r.getBoundingClientRect().height > 0);
        return {
            verdict: document.querySelector('p.ok, p.bad').textContent,
            bars: bars.length,
            red: bars.filter(r => r.getAttribute('fill') === '#c53030').length,
            secrets: [...rows('Per secret')].map(r => r.cells[0].textContent),
            agents: [...rows('Per agent')].map(r => [r.cells[0].textContent,
                                                     r.cells[3].textContent]),
            flagged: [...document.querySelectorAll('span.flag')].map(s => s.textContent),
            fetched: performance.getEntriesByType('resource').length,
            width: document.querySelector('svg').getBoundingClientRect().width,
        };
    })()"""
    )
    assert seen["verdict"].startswith("Chain verified:")
    assert seen["bars"] > 40 and seen["red"] >= 1 and seen["width"] > 500
    assert sorted(seen["secrets"]) == ["GITHUB_TOKEN", "OPENAI_KEY", "STRIPE_KEY"]
    assert ["billing", str(refused)] in seen["agents"] and refused > 5
    assert "denied_streak" in seen["flagged"] and "new_host" in seen["flagged"]
    assert seen["fetched"] == 0

    shot = await tab.send(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    # Kept where a person can look at it (README's docs/audit-report.png comes from here).
    target = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "report.png"
    await asyncio.to_thread(target.write_bytes, png)
