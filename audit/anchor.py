"""The audit anchor: the last `seq` and `chain` of the audit as its writer reported it,
kept by the broker, where the audit file's writer alone cannot rewrite it (in the hardened
deployment, a file of the broker's user). `audit verify` compares the file with it, so a
tail cut off the file is found, not just an edit inside it.

The anchor only moves forward: a writer cannot wind it back to hide what it removed.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ANCHOR_FILE = "audit-anchor.json"


class AnchorRefused(ValueError):
    """A head the anchor does not take: malformed, or another chain at an anchored seq
    (the broker answers it `bad_request`)."""


@dataclass
class AuditAnchor:
    path: Path
    seq: int = 0
    chain: str = ""

    @classmethod
    def load(cls, state_dir: Path) -> AuditAnchor:
        anchor = cls(state_dir / ANCHOR_FILE)
        with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError, OSError):
            data = orjson.loads(anchor.path.read_bytes())
            if (
                isinstance(data, dict)
                and isinstance(data.get("seq"), int)
                and isinstance(data.get("chain"), str)
            ):
                anchor.seq, anchor.chain = data["seq"], data["chain"]
        return anchor

    def advance(self, seq: Any, chain: Any) -> None:
        """Move to (seq, chain); an older seq is ignored, a different chain at the same seq
        refused (only a rewritten audit makes that happen)."""
        if (
            not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq < 1
            or not isinstance(chain, str)
            or len(chain) != 64
        ):
            raise AnchorRefused("audit_anchor needs a seq >= 1 and a 64-hex chain")
        if seq < self.seq:
            return
        if seq == self.seq:
            if not hmac.compare_digest(chain.encode(), self.chain.encode()):
                raise AnchorRefused(f"audit seq {seq} was anchored with another chain")
            return
        self.seq, self.chain = seq, chain
        self._save()

    def _save(self) -> None:
        # No fsync: two a second, and the broker's memory holds it while it runs.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, orjson.dumps({"seq": self.seq, "chain": self.chain}))
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def reply(self, request_id: Any) -> dict[str, Any]:
        return {"id": request_id, "seq": self.seq, "chain": self.chain}
