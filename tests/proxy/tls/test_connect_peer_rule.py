"""CONNECT records name the address dialled (`peer`) and the allowlist entry matched
(`rule`), as /proxy records do: the `event: tunnel` record of a host tunnelled blind, the
records of requests inside an intercepted tunnel, and the record of an intercepted CONNECT
whose client refused blindkey's certificate."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from tests.audit.ship_receivers import wait_for
from tests.proxy.test_attack_dos import audit_records
from tests.proxy.tls.conftest import Mode, connect_head, curl


async def test_a_blind_tunnel_record_names_its_peer_and_rule(mode: Mode) -> None:
    url = f"https://127.0.0.1:{mode.free_port}/echo"
    status, out = await curl(mode, url, "--cacert", str(mode.upstream_ca))
    assert status == 0, out
    await mode.env.server.audit.flush()
    tunnels = [r for r in audit_records(mode.env.paths.audit_dir) if r["event"] == "tunnel"]
    assert tunnels[-1]["peer"] == f"127.0.0.1:{mode.free_port}"
    assert tunnels[-1]["rule"] == f"https://127.0.0.1:{mode.free_port}"


async def test_a_name_tunnelled_names_the_address_it_resolved_to(mode: Mode) -> None:
    """`localhost` matched its own entry; the peer is the address actually dialled."""
    mode.env.configure(
        lambda document: document["allowlist"].__setitem__("private_ranges", ["127.0.0.0/8"])
    )
    await mode.env.server.reload()
    status, out = await curl(mode, f"https://localhost:{mode.free_port}/echo",
                             "--cacert", str(mode.upstream_ca))  # fmt: skip
    assert status == 0, out
    await mode.env.server.audit.flush()
    tunnel = [r for r in audit_records(mode.env.paths.audit_dir) if r["event"] == "tunnel"][-1]
    assert tunnel["rule"] == f"https://localhost:{mode.free_port}"
    assert tunnel["peer"] == f"127.0.0.1:{mode.free_port}"


async def test_requests_in_an_intercepted_tunnel_name_peer_and_rule(mode: Mode) -> None:
    placeholder = mode.placeholders["GITHUB_TOKEN"]
    url = f"https://127.0.0.1:{mode.bound_port}/echo"
    status, out = await curl(mode, url, "-H", f"Authorization: Bearer {placeholder}")
    assert status == 0, out
    records = [r for r in audit_records(mode.env.paths.audit_dir) if r.get("via") == "connect"]
    assert records[-1]["peer"] == f"127.0.0.1:{mode.bound_port}"
    assert records[-1]["rule"] == f"https://127.0.0.1:{mode.bound_port}"


async def test_an_intercepted_connect_the_client_refused_names_its_rule(mode: Mode) -> None:
    """The client trusts another CA: the handshake fails, and the CONNECT's record says
    which entry let it in (nothing was dialled: no peer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mode.env.server.port)
    writer.write(connect_head(f"127.0.0.1:{mode.bound_port}", mode.env.token))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    context = ssl.create_default_context(cafile=str(mode.upstream_ca))  # not blindkey's CA
    with contextlib.suppress(ssl.SSLError):
        await writer.start_tls(context, server_hostname="127.0.0.1")
    writer.close()
    await mode.env.server.audit.flush()

    def refused() -> list[dict[str, object]]:
        return [
            r
            for r in audit_records(mode.env.paths.audit_dir)
            if r.get("method") == "CONNECT" and r.get("reason") == "bad_request"
        ]

    # Recorded when the proxy's side of the handshake fails, after the client's.
    await wait_for(lambda: bool(refused()), what="the CONNECT's record")
    record = refused()[-1]
    assert record["rule"] == f"https://127.0.0.1:{mode.bound_port}"
    assert record["peer"] is None
