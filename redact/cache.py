"""The redactor's compiled shards on disk, encrypted, so a start does not compile them again.

Compiling the matcher of 10,000 values takes ~7 s of CPU, and no call may be answered
before it exists (it would go out unredacted). A compiled database holds the values it
matches, so it is kept only sealed: AES-256-GCM under a key the broker derives from its own
secret and hands to the proxy with the values themselves (`redaction_set`), never written
by the proxy. Without that key a file tells nothing but its size.

Each shard is one file named by an HMAC, under that key, of everything the shard was made
from: its (name, value) pairs, the code that turns values into forms and patterns, and the
Hyperscan build. So a file is found only for the exact group it encodes: a changed, added
or removed value, another blindkey or another Hyperscan looks under another name and
compiles. The name is also the cipher's associated data, so a file copied or renamed over
another does not decrypt; nor does an edited one. Whatever fails to read is deleted and
compiled, never trusted. Files of groups no longer current are deleted after each build,
so a removed value's forms do not stay on disk past the proxy's next build.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import platform
import struct
from pathlib import Path
from typing import Any

import hyperscan
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindkey.redact.shards import Group, Shard

MAGIC = b"BKRC1"
_NONCE = 12
_SUFFIX = ".shard"
KEY_BYTES = 32


def derive_key(secret: bytes) -> bytes:
    """The cache key from a broker secret (its placeholder key): one way, so holding the
    cache key gives nothing of the secret, and a label of its own, so it is no other key."""
    return hmac.new(secret, b"blindkey redaction cache key v1", hashlib.sha256).digest()


@functools.cache
def _code_digest() -> bytes:
    """What the shards are made by: a cache written by other code is never read."""
    from importlib.metadata import version  # 15 ms: here, after the start, not at import

    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("forms.py", "shards.py", "longer.py", "cache.py"):
        digest.update((here / name).read_bytes())
    build = f"{version('hyperscan')} {platform.machine()} {platform.python_implementation()}"
    digest.update(build.encode())
    return digest.digest()


def _group_bytes(group: Group) -> bytes:
    """The group, spelled so no two groups spell the same (each text after its length)."""
    spelled = "".join(f"{len(name)}:{name}{len(value)}:{value}" for name, value in group)
    return MAGIC + _code_digest() + spelled.encode("utf-8", "surrogatepass")


def _pack(meta: dict[str, object], blobs: list[bytes]) -> bytes:
    header = orjson.dumps({**meta, "sizes": [len(blob) for blob in blobs]})
    return b"".join([struct.pack(">I", len(header)), header, *blobs])


def _unpack(plain: bytes) -> tuple[dict[str, Any], list[bytes]]:
    (size,) = struct.unpack_from(">I", plain)
    meta = orjson.loads(plain[4 : 4 + size])
    blobs, offset = [], 4 + size
    for length in meta.pop("sizes"):
        blobs.append(plain[offset : offset + length])
        offset += length
    if offset != len(plain):
        raise ValueError("a cached shard's length is not what its header says")
    return meta, blobs


class ShardCache:
    """Sealed shards in one directory of the proxy's (0700, files 0600)."""

    def __init__(self, directory: Path, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the redaction cache key is 32 bytes")
        self.directory = directory
        self._cipher = AESGCM(hmac.new(key, b"seal", hashlib.sha256).digest())
        self._names = hmac.new(key, b"names", hashlib.sha256).digest()
        self._known: dict[Group, str] = {}  # each group's file name, worked out once

    def _name(self, group: Group) -> str:
        name = self._known.get(group)
        if name is None:
            name = hmac.new(self._names, _group_bytes(group), hashlib.sha256).hexdigest()
            self._known[group] = name
        return name

    def load(self, group: Group) -> Shard | None:
        """The shard of exactly `group` as stored, or None (then it is compiled)."""
        name = self._name(group)
        path = self.directory / f"{name}{_SUFFIX}"
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        try:
            if not blob.startswith(MAGIC):
                raise ValueError("not a blindkey redaction cache file")
            start = len(MAGIC) + _NONCE
            nonce = blob[len(MAGIC) : start]
            plain = self._cipher.decrypt(nonce, blob[start:], name.encode())
            return Shard.restore(group, *_unpack(plain))
        except (InvalidTag, ValueError, KeyError, TypeError, struct.error, hyperscan.error):
            # Edited, cut, written under another key, or by another Hyperscan: compiled
            # again and written anew; its content is never used.
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def keep(self, shards: dict[Group, Shard]) -> None:
        """Write the shards not stored yet and delete every file not among them. A cache
        that cannot be written only costs the next start its compile."""
        with contextlib.suppress(OSError):
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            current = {f"{self._name(group)}{_SUFFIX}": shard for group, shard in shards.items()}
            present = set()
            for entry in os.scandir(self.directory):
                if entry.name in current:
                    present.add(entry.name)
                elif entry.name.endswith(_SUFFIX) or entry.name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
            for name, shard in current.items():
                if name not in present:
                    self._write(name, shard)

    def _write(self, name: str, shard: Shard) -> None:
        nonce = os.urandom(_NONCE)
        label = name.removesuffix(_SUFFIX).encode()
        sealed = self._cipher.encrypt(nonce, _pack(*shard.dump()), label)
        path = self.directory / name
        tmp = self.directory / f".tmp-{os.getpid()}-{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(MAGIC + nonce + sealed)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def shard_cache(directory: Path | None, key: object) -> ShardCache | None:
    """The cache in `directory` under the key the broker sent (hex), if both are there: a
    broker that sends none (an older one) costs a compile, nothing else."""
    if directory is None or not isinstance(key, str):
        return None
    try:
        return ShardCache(directory, bytes.fromhex(key))
    except ValueError:
        return None


def cache_dir(state_dir: Path) -> Path:
    """The proxy's directory of sealed shards."""
    return state_dir / "redaction-cache"
