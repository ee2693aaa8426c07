"""The page in real headless Chromium: the one-time login link opens a session once, and
a pending call is approved with a TOTP code typed into the page (and denied)."""

from __future__ import annotations

import asyncio

from tests.approvals_helpers import enrol
from tests.e2e.chromium import Chromium
from tests.proxy.conftest import Env
from tests.ui.conftest import Ui, call_status, gated_call, navigate, run


async def test_the_login_link_works_once(ui: Ui, browser: Chromium) -> None:
    tab = await browser.new_tab()
    await tab.open(ui.login)
    assert await run(tab, "location.pathname") == "/approvals"
    assert await run(tab, "document.title") == "Pending approvals - blindkey"
    # HttpOnly: the page's own script cannot read its session cookie.
    assert await run(tab, "document.cookie") == ""
    other = await browser.new_tab()
    await other.open(ui.login)
    text = str(await run(other, "document.body.innerText"))
    assert "used already or has expired" in text
    # The session the first use opened goes on.
    await tab.open(f"{ui.base}/grants")
    assert await run(tab, "document.title") == "Grants - blindkey"


async def test_approve_and_deny_with_a_totp_code(env: Env, ui: Ui, browser: Chromium) -> None:
    approver = await asyncio.to_thread(enrol)
    approval_id = await gated_call(env)
    denied_id = await gated_call(env, "STRIPE_KEY")
    tab = await browser.new_tab()
    await tab.open(ui.login)
    assert await run(tab, f"!!document.getElementById('{approval_id}')") is True
    fill = (
        f"const row = document.getElementById('{approval_id}');"
        "row.querySelector('input[name=code]').value = '000000';"
        "row.querySelector('form[action=\"/approvals/approve\"]').requestSubmit();"
    )
    await navigate(tab, fill)
    text = str(await run(tab, "document.getElementById('messages').innerText"))
    assert "wrong code for default" in text
    assert await call_status(env) == 403
    await navigate(tab, fill.replace("000000", approver.code()))
    text = str(await run(tab, "document.getElementById('messages').innerText"))
    assert f"{approval_id} approved" in text
    assert await call_status(env) == 200
    deny = (
        f"document.getElementById('{denied_id}')"
        ".querySelector('form[action=\"/approvals/deny\"]').requestSubmit()"
    )
    await navigate(tab, deny)
    assert f"{denied_id} denied" in str(await run(tab, "document.body.innerText"))
    assert await run(tab, f"!!document.getElementById('{denied_id}')") is False
