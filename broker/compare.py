"""Comparing two sets of values without showing them: HMAC-SHA256 under a key made for
this one comparison, so neither a value nor a reusable hash of it is ever printed."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass


def keyed_digests(values: Mapping[str, str], key: bytes) -> dict[str, bytes]:
    return {
        name: hmac.new(key, value.encode("utf-8"), hashlib.sha256).digest()
        for name, value in values.items()
    }


def comparison_key() -> bytes:
    return os.urandom(32)


@dataclass(frozen=True)
class Difference:
    only_source: tuple[str, ...]
    only_target: tuple[str, ...]
    differ: tuple[str, ...]
    same: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.only_source or self.only_target or self.differ)


def compare(source: Mapping[str, bytes], target: Mapping[str, bytes]) -> Difference:
    shared = set(source) & set(target)
    differ = {n for n in shared if not hmac.compare_digest(source[n], target[n])}
    return Difference(
        only_source=tuple(sorted(set(source) - set(target))),
        only_target=tuple(sorted(set(target) - set(source))),
        differ=tuple(sorted(differ)),
        same=tuple(sorted(shared - differ)),
    )
