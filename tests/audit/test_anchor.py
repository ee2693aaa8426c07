"""AuditAnchor: the broker's copy of the audit's head moves only forward, and refuses
another chain at a seq it holds, on its own and through the broker's `audit_anchor` op."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from blindkey.audit.anchor import ANCHOR_FILE, AnchorRefused, AuditAnchor
from blindkey.broker.protocol import BrokerDenied
from blindkey.config.paths import Paths
from tests.broker.conftest import Brokers

A, B = "a" * 64, "b" * 64


def test_moves_forward_and_keeps_its_head_in_a_file(tmp_path: Path) -> None:
    anchor = AuditAnchor.load(tmp_path)
    assert (anchor.seq, anchor.chain) == (0, "")
    anchor.advance(5, A)
    anchor.advance(3, B)  # older: a writer cannot wind the anchor back
    assert (anchor.seq, anchor.chain) == (5, A)
    assert orjson.loads((tmp_path / ANCHOR_FILE).read_bytes()) == {"seq": 5, "chain": A}
    again = AuditAnchor.load(tmp_path)
    assert (again.seq, again.chain) == (5, A)


def test_another_chain_at_an_anchored_seq_is_refused(tmp_path: Path) -> None:
    anchor = AuditAnchor.load(tmp_path)
    anchor.advance(5, A)
    anchor.advance(5, A)  # the same head again is no change
    with pytest.raises(AnchorRefused, match="anchored with another chain"):
        anchor.advance(5, B)
    assert (anchor.seq, anchor.chain) == (5, A)


@pytest.mark.parametrize(
    ("seq", "chain"), [(0, A), (True, A), ("5", A), (5, "ab"), (5, None), (-1, A)]
)
def test_a_malformed_head_is_refused(tmp_path: Path, seq: object, chain: object) -> None:
    with pytest.raises(AnchorRefused, match="needs a seq"):
        AuditAnchor.load(tmp_path).advance(seq, chain)


def test_an_unreadable_file_is_no_anchor(tmp_path: Path) -> None:
    (tmp_path / ANCHOR_FILE).write_bytes(b"{not json")
    assert AuditAnchor.load(tmp_path).seq == 0


@pytest.fixture
async def brokers() -> AsyncIterator[Brokers]:
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:  # AF_UNIX paths are short
        brokers = Brokers(Path(directory))
        try:
            yield brokers
        finally:
            await brokers.close()


async def test_the_broker_answers_a_refused_head_bad_request(home: Paths, brokers: Brokers) -> None:
    client = brokers.client(await brokers.start(home))
    reply = await client.call("audit_anchor", seq=7, chain=A)
    assert (reply["seq"], reply["chain"]) == (7, A)
    with pytest.raises(BrokerDenied) as refused:
        await client.call("audit_anchor", seq=7, chain=B)
    assert refused.value.code == "bad_request"
    reply = await client.call("audit_anchor")
    assert (reply["seq"], reply["chain"]) == (7, A)
