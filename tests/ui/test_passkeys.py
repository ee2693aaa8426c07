"""Passkeys in real headless Chromium with the DevTools virtual authenticator (user
verification on): enrolled after a TOTP code, approving one pending request each; an
assertion made for one request is refused for another, and refused a second time for its
own. The broker checks every answer (broker/approvals/passkeys.py); the page relays."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.approvals_helpers import audit_events, enrol
from tests.e2e.chromium import Chromium, Tab
from tests.proxy.conftest import Env
from tests.ui.conftest import Ui, call_status, click_for_message, gated_call, run

AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


async def authenticator(tab: Tab) -> str:
    await tab.send("WebAuthn.enable")
    added = await tab.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
    return str(added["authenticatorId"])


async def enrol_passkey(tab: Tab, ui: Ui, approver: str, code: str) -> str:
    await tab.open(f"{ui.base}/passkeys")
    return await click_for_message(
        tab,
        "const form = document.getElementById('enrol-passkey');"
        f"form.elements.approver.value = '{approver}'; form.elements.code.value = '{code}';"
        "form.requestSubmit();",
    )


# In the page, as its script does: ask the broker for a request's challenge, have the
# authenticator answer it, hand an answer in for a request.
HELPERS = """
window.t = {
  async post(path, body) {
    const csrf = document.querySelector('meta[name="csrf"]').content;
    const answer = await fetch(path, {method: "POST", headers: {
      "Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body)});
    return {status: answer.status, body: await answer.json()};
  },
  async assertion(request) {
    const begun = await t.post("/api/passkeys/approve/begin", {request});
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(begun.body.options);
    return (await navigator.credentials.get({publicKey})).toJSON();
  },
  finish(request, credential) {
    return t.post("/api/passkeys/approve/finish", {request, credential});
  },
};
0
"""


async def finish(tab: Tab, request: str, credential: str) -> dict[str, Any]:
    answer: dict[str, Any] = await run(tab, f"t.finish({json.dumps(request)}, {credential})")  # type: ignore[assignment]
    return answer


async def test_enrol_then_approve_with_a_passkey(env: Env, ui: Ui, browser: Chromium) -> None:
    approver = await asyncio.to_thread(enrol)
    tab = await browser.new_tab()
    await authenticator(tab)
    await tab.open(ui.login)
    # A wrong code enrols nothing.
    said = await enrol_passkey(tab, ui, "default", "000000")
    assert said.startswith("bad: wrong code for default"), said
    said = await enrol_passkey(tab, ui, "default", approver.code())
    assert said == "ok: passkey enrolled for approver default", said
    (record,) = [r for r in audit_events(env.paths.audit_dir, "config")
                 if r.get("change") == "approver_passkey_added"]  # fmt: skip
    assert record["approver"] == "default"

    approval_id = await gated_call(env)
    await tab.open(f"{ui.base}/approvals")
    said = await click_for_message(
        tab, f"document.querySelector('[data-passkey-approve=\"{approval_id}\"]').click()"
    )
    assert said == "ok: GITHUB_TOKEN approved for tester with a passkey", said
    assert await call_status(env) == 200
    (grant,) = [g for g in audit_events(env.paths.audit_dir, "grant")]
    assert (grant["request"], grant["approver"], grant["proof"]) == (
        approval_id, "default", "passkey"
    )  # fmt: skip


async def test_an_assertion_approves_its_own_request_once(
    env: Env, ui: Ui, browser: Chromium
) -> None:
    approver = await asyncio.to_thread(enrol)
    tab = await browser.new_tab()
    await authenticator(tab)
    await tab.open(ui.login)
    said = await enrol_passkey(tab, ui, "default", approver.code())
    assert said.startswith("ok:"), said
    await tab.open(f"{ui.base}/approvals")
    await run(tab, HELPERS)
    made = await gated_call(env)
    other = await gated_call(env, "STRIPE_KEY")

    # Made for `made`, handed in for `other` (whose own challenge is open): its challenge
    # names another request, agent, secret or host, and does not verify.
    await run(tab, f"t.assertion({json.dumps(made)}).then((c) => {{ t.hers = c; }})")
    await run(
        tab,
        f"t.post('/api/passkeys/approve/begin', {{request: {json.dumps(other)}}}).then(() => 0)",
    )
    answer = await finish(tab, other, "t.hers")
    assert (answer["status"], answer["body"]["error"]) == (403, "code_wrong"), answer
    assert await call_status(env, "STRIPE_KEY") == 403
    # For its own request it approves, once; replayed, there is nothing left to approve.
    answer = await finish(tab, made, "t.hers")
    assert answer["status"] == 200, answer
    assert await call_status(env) == 200
    answer = await finish(tab, made, "t.hers")
    assert answer["status"] == 400 and "no pending request" in answer["body"]["message"]

    # A challenge is spent by the first answer, even a wrong one: a genuine assertion
    # handed in after a tampered one is refused, and the request stays pending.
    await run(tab, f"t.assertion({json.dumps(other)}).then((c) => {{ t.mine = c; }})")
    signature = "t.mine.response.signature.slice(0, -4) + 'AAAA'"
    tampered = f"{{...t.mine, response: {{...t.mine.response, signature: {signature}}}}}"
    answer = await finish(tab, other, tampered)
    assert (answer["status"], answer["body"]["error"]) == (403, "code_wrong"), answer
    answer = await finish(tab, other, "t.mine")
    assert (answer["status"], answer["body"]["error"]) == (403, "code_reused"), answer
    assert await call_status(env, "STRIPE_KEY") == 403
    refused = audit_events(env.paths.audit_dir, "code_refused")
    assert [r["reason"] for r in refused] == ["passkey_refused", "passkey_refused"]
