"""Pages of other origins against the page, in real headless Chromium: a cross-site page
can neither read the page nor make it act (its requests carry no session cookie, say their
origin, and have no CSRF token); a page rebound onto 127.0.0.1 under another name is
refused by Host before anything else."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.approvals_helpers import acli, enrol
from tests.e2e.chromium import Chromium
from tests.proxy.conftest import Env
from tests.ui.conftest import Ui, gated_call, navigate, run

# Each attempt says what the page got: its text when it could read it, else why not.
ATTEMPTS = """
(async () => {
  const ui = %(ui)s, request = %(request)s;
  const form = new URLSearchParams({request, csrf: "guessed"});
  const tried = {};
  const read = (path) => fetch(ui + path, {credentials: "include"})
    .then(async (r) => r.status + " " + await r.text(), (e) => "failed: " + e.name);
  tried.read = await read("/approvals");
  tried.events = await read("/events/approvals");
  tried.deny = await fetch(ui + "/approvals/deny", {method: "POST", mode: "no-cors",
    credentials: "include", body: form}).then((r) => r.type, (e) => "failed: " + e.name);
  tried.revoke = await fetch(ui + "/grants/revoke", {method: "POST", mode: "no-cors",
    credentials: "include", body: new URLSearchParams({secret: "STRIPE_KEY",
    env: "development", agent: "*"})}).then((r) => r.type, (e) => "failed: " + e.name);
  return tried;
})()
"""

FORM_POST = """
const form = document.createElement("form");
form.method = "post";
form.action = %(action)s;
for (const [name, value] of Object.entries(%(fields)s)) {
  const field = document.createElement("input");
  field.name = name; field.value = value; form.appendChild(field);
}
document.body.appendChild(form);
form.submit();
"""


async def _pending_and_granted(env: Env) -> tuple[list[str], list[str]]:
    _, listed, _ = await acli("approvals", "list", "--json")
    _, granted, _ = await acli("grants", "list", "--json")
    return [p["id"] for p in json.loads(listed)], [g["secret"] for g in json.loads(granted)]


async def test_a_cross_site_page_can_neither_read_nor_act(
    env: Env, ui: Ui, browser: Chromium
) -> None:
    approver = await asyncio.to_thread(enrol)
    approval_id = await gated_call(env)
    await gated_call(env, "STRIPE_KEY")
    code, _, err = await acli("approve", "STRIPE_KEY", "--code", approver.code())
    assert code == 0, err
    before = await _pending_and_granted(env)
    assert approval_id in before[0] and before[1] == ["STRIPE_KEY"]
    mine = await browser.new_tab()
    await mine.open(ui.login)  # the approver is logged in, in this same browser

    evil = await browser.new_tab()
    await evil.open("http://evil.test:8000/", document=b"<!doctype html><title>evil</title>")
    tried: Any = await run(
        evil, ATTEMPTS % {"ui": json.dumps(ui.base), "request": json.dumps(approval_id)}
    )
    # Nothing of the page is readable (CORS; and Cross-Origin-Resource-Policy withholds
    # even an opaque answer from no-cors requests). The writes leave and change nothing.
    assert all(outcome == "failed: TypeError" for outcome in tried.values()), tried
    # A form posted across sites is a top-level navigation: the answer is the refusal.
    fields = {"secret": "STRIPE_KEY", "env": "development", "agent": "*", "csrf": "guessed"}
    await navigate(evil, FORM_POST % {"action": json.dumps(ui.base + "/grants/revoke"),
                                      "fields": json.dumps(fields)})  # fmt: skip
    text = str(await run(evil, "document.body.innerText"))
    assert "refused" in text and ("Origin" in text or "another site" in text), text
    assert await _pending_and_granted(env) == before


REBOUND = b"<!doctype html><title>rebound</title>"
REBOUND_ATTEMPTS = """
(async () => {
  const read = await fetch("/approvals").then(async (r) => r.status + " " + await r.text());
  const deny = await fetch("/approvals/deny", {method: "POST",
    body: new URLSearchParams({request: %(request)s})})
    .then(async (r) => r.status + " " + await r.text());
  const login = await fetch("/login?token=x").then(async (r) => r.status + " " + await r.text());
  return {read, deny, login};
})()
"""


async def test_a_rebound_name_is_refused_by_host(env: Env, ui: Ui, browser: Chromium) -> None:
    await asyncio.to_thread(enrol)
    approval_id = await gated_call(env)
    mine = await browser.new_tab()
    await mine.open(ui.login)
    # rebind.test now resolves to 127.0.0.1: to the browser, the page's own origin.
    rebound = await browser.new_tab()
    await rebound.open(f"http://rebind.test:{ui.port}/", document=REBOUND)
    tried: Any = await run(rebound, REBOUND_ATTEMPTS % {"request": json.dumps(approval_id)})
    for outcome in tried.values():
        assert outcome.startswith("403 blindkey ui: foreign Host 'rebind.test:"), tried
    assert approval_id not in json.dumps(tried)
    listed, _ = await _pending_and_granted(env)
    assert approval_id in listed
