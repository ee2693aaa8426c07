"""Issue 25 as it was found: an agent with a shell edits config.toml to release a key to
`exec` and asks `blindkey exec` for it. Once an approver exists the broker refuses the
edit (on the record) and keeps the key unreleased until a human approves the file."""

from __future__ import annotations

import asyncio

import orjson

from blindkey.config.paths import Paths
from tests.approvals_helpers import acli, audit_events, enrol
from tests.broker.conftest import Brokers, point_at
from tests.broker.test_release_exec import Released, prepare, request


async def test_a_hand_released_key_stays_unreleased_until_approved(
    home: Paths, brokers: Brokers
) -> None:
    released = Released(home, prepare(home))
    point_at(home, brokers.socket)
    broker = brokers.client(await brokers.start(home))
    paths = home
    approver = await asyncio.to_thread(enrol)
    text = paths.config_file.read_text()
    text += '\n[secrets.PROXY_ONLY]\nrelease = ["proxy", "exec"]\n'
    paths.config_file.write_text(text)
    reply = await broker.call("refresh")  # what `proxy reload` asks the broker
    assert "widens the approved policy" in reply["policy_refused"]
    (record,) = audit_events(paths.audit_dir, "config")[-1:]
    assert record["change"] == "reload"
    assert record["refused"] is True and record["names"] == ["secrets.PROXY_ONLY"]
    _, out, _ = await released.run("exec", stdin=request("PROXY_ONLY"))
    answer = orjson.loads(out)
    assert answer["values"] == {} and "PROXY_ONLY" in answer["errors"]
    code, _, err = await acli("config", "approve", "--code", approver.code())
    assert code == 0, err
    _, out, _ = await released.run("exec", stdin=request("PROXY_ONLY"))
    assert orjson.loads(out)["values"] == {"PROXY_ONLY": "proxy-Hc1Jd5Fs0Ga4eC39HqLy"}
