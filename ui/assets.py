"""The page's stylesheet and script, served by this process (no build step, nothing
fetched from elsewhere: the Content-Security-Policy allows this server only).

The script builds rows with textContent: a record's fields (an agent's name, a URL) are
text, never markup. The one HTML it inserts is the pending list, rendered and escaped by
the server."""

from __future__ import annotations

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1a202c}
header{background:#1a202c;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;
align-items:center;flex-wrap:wrap}
header b{font-size:1.1em;margin-right:1em}
header a{color:#cbd5e0;text-decoration:none}header a.on{color:#fff;font-weight:600;
border-bottom:2px solid #63b3ed}
main{max-width:1100px;margin:1.2em auto;padding:0 1.2em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.muted{color:#4a5568}.ok{color:#2f855a;font-weight:600}.bad{color:#c53030;font-weight:600}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #e2e8f0;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.blocked td{background:#fff5f5}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{border:1px solid #e2e8f0;border-radius:8px;padding:.6em 1em;min-width:8em}
.card b{display:block;font-size:1.5em}
.flag{background:#fefcbf;border-radius:4px;padding:0 .3em;margin-right:.2em}
form.inline{display:inline-flex;gap:.3em;margin:0 .3em 0 0}
input{font:inherit;padding:.15em .4em;border:1px solid #a0aec0;border-radius:4px;width:7em}
button{font:inherit;padding:.15em .7em;border-radius:4px;border:1px solid #2b6cb0;
background:#3182ce;color:#fff;cursor:pointer}
button.deny{background:#fff;color:#c53030;border-color:#c53030}
#messages p{padding:.4em .8em;border-radius:6px;background:#f7fafc}
code{background:#edf2f7;padding:0 .25em;border-radius:3px}
"""

JS = """
"use strict";
const csrf = document.querySelector('meta[name="csrf"]').content;

function say(kind, text) {
  const line = document.createElement("p");
  line.className = kind;
  line.textContent = text;
  document.getElementById("messages").appendChild(line);
}

async function post(path, body) {
  const answer = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify(body),
  });
  const data = await answer.json();
  if (!answer.ok) throw new Error(data.message || answer.statusText);
  return data;
}

async function approveWithPasskey(id) {
  try {
    const begun = await post("/api/passkeys/approve/begin", {request: id});
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(begun.options);
    const credential = await navigator.credentials.get({publicKey});
    const done = await post("/api/passkeys/approve/finish",
                            {request: id, credential: credential.toJSON()});
    say("ok", done.message);
  } catch (error) {
    say("bad", String(error.message || error));
  }
}

async function enrolPasskey(form) {
  const approver = form.elements.approver.value, code = form.elements.code.value;
  try {
    const begun = await post("/api/passkeys/register/begin", {approver, code});
    const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(begun.options);
    const credential = await navigator.credentials.create({publicKey});
    const done = await post("/api/passkeys/register/finish",
                            {approver: begun.approver, credential: credential.toJSON()});
    say("ok", done.message);
  } catch (error) {
    say("bad", String(error.message || error));
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-passkey-approve]");
  if (button) {
    event.preventDefault();
    approveWithPasskey(button.dataset.passkeyApprove);
  }
});

const enrol = document.getElementById("enrol-passkey");
if (enrol) {
  enrol.addEventListener("submit", (event) => { event.preventDefault(); enrolPasskey(enrol); });
}

const calls = document.getElementById("calls");
if (calls) {
  const body = calls.querySelector("tbody");
  const stream = new EventSource("/events/calls?from=" + calls.dataset.from);
  stream.addEventListener("call", (event) => {
    const call = JSON.parse(event.data);
    const outcome = call.decision === "allowed" ? call.status : call.reason;
    const row = document.createElement("tr");
    row.className = call.decision || "";
    for (const value of [call.ts, call.agent, call.method, call.url,
                         (call.secrets || []).join(", "), call.decision, outcome,
                         call.duration_ms]) {
      const cell = document.createElement("td");
      cell.textContent = value === null || value === undefined ? "-" : String(value);
      row.appendChild(cell);
    }
    body.prepend(row);
  });
}

const pending = document.getElementById("pending");
if (pending) {
  const stream = new EventSource("/events/approvals");
  stream.addEventListener("pending", (event) => {
    const update = JSON.parse(event.data);
    if (update.ids !== pending.dataset.ids) {
      pending.innerHTML = update.html;
      pending.dataset.ids = update.ids;
    }
  });
}
"""
