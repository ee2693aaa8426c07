"""The chain: every record carries `seq` and `chain`, the hex HMAC-SHA256 of the previous
record's chain and this record's own line without its chain. The key is a file beside the
audit, readable only by the user that writes the audit (in the hardened deployment, the
proxy's user, never the agent's).

Beside it, `hash`: a keyless link (audit/checkpoint.py) that signed checkpoints cover, so a
copy can be checked without the key. It comes just before `chain` and the MAC covers it.

`chain` is always the record's last field, so a line is checked on its own bytes: cut the
chain off, close the object again, and MAC exactly what was written. No re-serialising, so
nothing about JSON spelling can make a good record look bad or a bad one good.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path
from typing import Any, NamedTuple

import orjson

KEY_FILE = "chain.key"
KEY_BYTES = 32
_CHAIN_KEY = b',"chain":"'
_HASH_KEY = b',"hash":"'
# ,"chain":"<64 hex>"}
SUFFIX_LEN = len(_CHAIN_KEY) + 64 + 2


class Head(NamedTuple):
    """Where the chain stands: the last record's seq and chain (0 and "" before the first).
    A NamedTuple: one is made per record, at a third of a frozen dataclass's cost."""

    seq: int = 0
    chain: str = ""
    hash: str = ""  # the keyless link ("" before the first record that carries one)


def load_key(audit_dir: Path, *, create: bool = True) -> bytes:
    """The chain key; made (0600) on first use when `create`."""
    path = audit_dir / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()  # another writer made it a moment ago
    try:
        os.write(fd, key)
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    finally:
        os.close(fd)
    return key


class _Hmac:
    """HMAC-SHA256 (RFC 2104) with the padded key's hash states made once: a record's MAC
    then costs two hash copies (about 2 µs, where hmac.digest looks up SHA-256 in OpenSSL
    every call, about 4.5 µs)."""

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def hexdigest(self, message: bytes) -> str:
        inner = self.inner.copy()
        inner.update(message)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> _Hmac:
    return _Hmac(key)


def mac(key: bytes, previous: str, body: bytes) -> str:
    return _keyed(key).hexdigest(previous.encode() + b"\n" + body)


def _escaped(value: Any) -> Any:
    """`value` with every string's undecodable bytes written as \\xNN."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    return value


def dumps(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:
        # Text an agent sent that is not UTF-8 (kept as surrogates) is written escaped,
        # never dropped: a refused request must still leave its record.
        return orjson.dumps(_escaped(record))


def link(previous: str, body: bytes) -> str:
    """The keyless `hash` of a record whose JSON (without hash and chain) is `body`."""
    return hashlib.sha256(previous.encode() + b"\n" + body).hexdigest()


def seal(key: bytes, record: dict[str, Any], head: Head) -> tuple[bytes, Head]:
    """The line for `record` after `head`, and the new head. Sets record["seq"]."""
    record.pop("chain", None)
    record.pop("hash", None)
    seq = record["seq"] = head.seq + 1
    body = dumps(record)
    hashed = link(head.hash, body)
    body = body[:-1] + _HASH_KEY + hashed.encode() + b'"}'
    chain = mac(key, head.chain, body)
    return body[:-1] + _CHAIN_KEY + chain.encode() + b'"}\n', Head(seq, chain, hashed)


def split(line: bytes) -> tuple[bytes, str] | None:
    """(the record as MAC'd, its chain), or None when the line does not end in a chain."""
    line = line.rstrip(b"\n")
    if len(line) <= SUFFIX_LEN or not line.endswith(b'"}'):
        return None
    suffix = line[-SUFFIX_LEN:]
    if not suffix.startswith(_CHAIN_KEY):
        return None
    return line[:-SUFFIX_LEN] + b"}", suffix[len(_CHAIN_KEY) : -2].decode("ascii", "replace")


def head_of(line: bytes) -> Head | None:
    """The seq and chain a whole line carries, if it is a chained record."""
    parts = split(line)
    if parts is None:
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    seq = record.get("seq") if isinstance(record, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    hashed = record.get("hash")
    return Head(seq, parts[1], hashed if isinstance(hashed, str) else "")
