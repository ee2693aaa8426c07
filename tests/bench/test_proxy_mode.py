"""The proxy-mode bench row runs end to end on a tiny scale: both sides answer 200, proxy
mode keeps one tunnel per client alive, a `Connection: close` call opens a tunnel each,
and the table renders."""

from __future__ import annotations

from pathlib import Path

from bench.proxy_mode import CONCURRENCY, measure, table
from bench.tools import find_tool


def test_the_row_measures_both_sides_through_real_tunnels(tmp_path: Path) -> None:
    nginx = find_tool("nginx")
    assert nginx is not None, "nginx is installed by .ci/run"
    result = measure(nginx, tmp_path / "work", rounds=1, calls=16)
    runs = result["runs"]
    for clients in CONCURRENCY:
        (kept,) = runs[f"connect@{clients}"]
        assert kept["connections"] == clients  # keep-alive inside each client's one tunnel
    (fresh,) = runs["connect_fresh"]
    assert fresh["connections"] == 50  # one CONNECT and handshake per call
    assert result["first_connect_us"] > 0 and result["handshake"]["new_tunnel_p50_us"] > 0
    rendered = "\n".join(table(result))
    assert "req/s @1, keep-alive" in rendered and "CONNECT + TLS" in rendered
