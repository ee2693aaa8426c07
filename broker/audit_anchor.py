"""The broker's audit anchor (the last seq and chain it saw), so that a cut tail of the
proxy's audit shows: asked of the running broker, else read from the file it keeps.
`audit verify`, `audit report` and the approvers' page ask it the same way."""

from __future__ import annotations

import contextlib

import orjson

from blindkey.audit.anchor import ANCHOR_FILE
from blindkey.audit.chain import Head
from blindkey.broker.link import ask
from blindkey.broker.protocol import BrokerUnavailable
from blindkey.config.paths import Paths

ANCHOR_TIMEOUT = 3.0


def _ask_broker(paths: Paths) -> Head | None:
    try:
        reply = ask(paths, "audit_anchor", timeout=ANCHOR_TIMEOUT)
    except BrokerUnavailable:
        return None
    seq, chain = reply.get("seq"), reply.get("chain")
    if isinstance(seq, int) and isinstance(chain, str):
        return Head(seq, chain)
    return None


def broker_anchor(paths: Paths) -> tuple[Head | None, str]:
    """The broker's anchor, and where it came from: the running broker, else its file."""
    head = _ask_broker(paths)
    if head is not None:
        return head, "broker"
    with contextlib.suppress(OSError, ValueError):
        data = orjson.loads((paths.state_dir / ANCHOR_FILE).read_bytes())
        if isinstance(data.get("seq"), int) and isinstance(data.get("chain"), str):
            return Head(data["seq"], data["chain"]), "file"
    return None, "none"
