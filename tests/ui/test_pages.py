"""Every page of `blindkey ui` in real headless Chromium, with what a day of use leaves:
live calls appear as the audit writes them, a new pending request appears without a
reload, grants are revoked from the page, and the report and the policy-change history
read the audit. Each page is photographed (docs/ui/*.png are these; set
BLINDKEY_UI_SHOTS=docs/ui to write them there too)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from pathlib import Path

from tests.approvals_helpers import acli, enrol
from tests.e2e.chromium import Chromium, Tab
from tests.proxy.conftest import Env
from tests.ui.conftest import Ui, call_status, gated_call, navigate, run

PNG = b"\x89PNG\r\n\x1a\n"
# Resolves when a table row under `where` (replaced whole, or added to) has `needle`.
ROW_WITH = """
new Promise((resolve) => {
  const where = document.querySelector(%(where)s);
  const found = () => [...where.querySelectorAll("tbody tr")]
    .some((row) => row.innerText.includes(%(needle)s));
  if (found()) return resolve(true);
  new MutationObserver(() => found() && resolve(true))
    .observe(where, {childList: true, subtree: true});
})
"""


async def wait_row(tab: Tab, where: str, needle: str) -> None:
    async with asyncio.timeout(10):
        await run(tab, ROW_WITH % {"where": json.dumps(where), "needle": json.dumps(needle)})


async def shoot(tab: Tab, name: str, where: Path) -> None:
    size = {"width": 1200, "height": 760, "deviceScaleFactor": 1, "mobile": False}
    await tab.send("Emulation.setDeviceMetricsOverride", size)
    shot = await tab.send("Page.captureScreenshot", {"format": "png"})
    data = base64.b64decode(shot["data"])
    assert data.startswith(PNG)
    (where / f"{name}.png").write_bytes(data)
    extra = os.environ.get("BLINDKEY_UI_SHOTS")
    if extra:
        shutil.copy(where / f"{name}.png", Path(extra) / f"{name}.png")


async def test_every_page(env: Env, ui: Ui, browser: Chromium, tmp_path: Path) -> None:
    approver = await asyncio.to_thread(enrol)
    assert (await acli("agent", "add", "reviewer"))[0] == 0
    await env.call(headers=env.headers("/echo", X_AS_Inject_Bearer="BASIC_PAIR"))
    held = await gated_call(env)
    await gated_call(env, "STRIPE_KEY")
    code, _, err = await acli("approve", "STRIPE_KEY", "--code", approver.code())
    assert code == 0, err
    assert await call_status(env, "STRIPE_KEY") == 200
    tab = await browser.new_tab()
    await tab.open(ui.login)

    # Pending: the held call is listed; one made now appears without a reload.
    assert await run(tab, f"!!document.getElementById('{held}')") is True
    await run(tab, "document.getElementById('pending').dataset.marker = 'same page'; 0")
    later = await gated_call(env, "BASIC_PAIR")
    await wait_row(tab, "#pending", later)
    assert await run(tab, "document.getElementById('pending').dataset.marker") == "same page"
    await shoot(tab, "approvals", tmp_path)

    # Live calls: what the audit writes after the page loaded appears on it.
    await tab.open(f"{ui.base}/calls")
    text = str(await run(tab, "document.getElementById('calls').innerText"))
    assert "approval_required" in text and "/echo" in text
    await env.call(headers=env.headers("/echo/live-now"))
    await env.server.audit.flush()
    await wait_row(tab, "#calls", "/echo/live-now")
    await shoot(tab, "calls", tmp_path)

    await tab.open(f"{ui.base}/grants")
    assert "STRIPE_KEY" in str(await run(tab, "document.querySelector('table').innerText"))
    await shoot(tab, "grants", tmp_path)
    await navigate(tab, "document.querySelector('form[action=\"/grants/revoke\"]').requestSubmit()")
    assert "grant of STRIPE_KEY to * revoked" in str(await run(tab, "document.body.innerText"))
    _, granted, _ = await acli("grants", "list", "--json")
    assert json.loads(granted) == []
    assert await call_status(env, "STRIPE_KEY") == 403

    await tab.open(f"{ui.base}/agents")
    text = str(await run(tab, "document.querySelector('table').innerText"))
    assert "reviewer" in text and "tester" in text
    await shoot(tab, "agents", tmp_path)

    await tab.open(f"{ui.base}/report")
    text = str(await run(tab, "document.body.innerText"))
    assert "Chain verified" in text and "Per secret" in text and "GITHUB_TOKEN" in text
    assert await run(tab, "!!document.querySelector('svg[aria-label=\"calls over time\"]')")
    await shoot(tab, "report", tmp_path)

    await tab.open(f"{ui.base}/changes")
    text = str(await run(tab, "document.querySelector('table').innerText"))
    assert "agent_add" in text and "reviewer" in text and "approver_confirmed" in text
    await shoot(tab, "changes", tmp_path)

    await tab.open(f"{ui.base}/passkeys")
    assert "Active approvers: default" in str(await run(tab, "document.body.innerText"))
    await shoot(tab, "passkeys", tmp_path)
    shots = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.glob("*.png")))
    assert shots == [
        "agents.png", "approvals.png", "calls.png", "changes.png", "grants.png",
        "passkeys.png", "report.png",
    ]  # fmt: skip
