"""A placeholder leads to its own hosts only. GITHUB_TOKEN is bound to one intercepted
host, STRIPE_KEY to another; each one's placeholder sent to the other's host, in any place
a placeholder is looked for (header, Basic, path, query, nested JSON, form, text), is
refused 403 secret_denied and recorded, and nothing reaches that host."""

from __future__ import annotations

import pytest

from tests.proxy.conftest import OTHER, SECRET
from tests.proxy.test_attack_dos import audit_records
from tests.proxy.tls.conftest import Mode, curl
from tests.proxy.tls.test_answers import PLACES, url_for
from tests.upstream import HITS


@pytest.mark.parametrize(("secret", "to"), [("STRIPE_KEY", "bound"), ("GITHUB_TOKEN", "other")])
async def test_a_placeholder_sent_to_another_intercepted_host(
    mode: Mode, secret: str, to: str
) -> None:
    held = mode.placeholders[secret]
    port = mode.bound_port if to == "bound" else mode.other_port
    upstream = mode.bound if to == "bound" else mode.other
    assert upstream is not None
    base = f"https://127.0.0.1:{port}"
    # With the placeholder of the host's own secret beside it: that one does not vouch for
    # the other (nothing is swapped when anything is foreign).
    own = mode.placeholders["GITHUB_TOKEN" if to == "bound" else "STRIPE_KEY"]
    for where, args in sorted(PLACES.items()):
        hits = len(upstream.app[HITS])
        filled = [a.format(p=held) for a in args]
        _, out = await curl(mode, url_for(base, where, held), *filled,
                            "-H", f"Authorization: Bearer {own}" if where != "basic" else "X: y",
                            "-w", "\n%{http_code}")  # fmt: skip
        body, _, code = out.rpartition(b"\n")
        assert code == b"403" and b'"secret_denied"' in body, (where, out)
        assert secret.encode() in body and SECRET.encode() not in out and OTHER.encode() not in out
        assert len(upstream.app[HITS]) == hits, where  # nothing reached the host
    await mode.env.server.audit.flush()
    refused = [
        r for r in audit_records(mode.env.paths.audit_dir)
        if r.get("via") == "connect" and r.get("reason") == "secret_denied"
    ]  # fmt: skip
    assert len(refused) == len(PLACES)
    assert all(f"127.0.0.1:{port}" in r["url"] and r["secrets"] == [secret] for r in refused)
