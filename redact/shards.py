"""The redactor's matcher, in shards: the forms of a group of values compiled on their own.

Hyperscan compiles a database in time that grows faster than its pattern count (20 forms
a value: 200,000 patterns for 10,000 values took minutes and 600 MB), and every change to
one value rebuilt all of it. Values are grouped by a hash of their name, each group is one
database, and a group whose values did not change is taken from the last build as it
was: a change to one value among 10,000 compiles the ~160 values of its group, and a change
that touches no value compiles nothing.
"""

from __future__ import annotations

import os
import threading
import zlib
from array import array
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

import hyperscan

from blindkey.redact.forms import caseless_encodings, encodings, secret_parts
from blindkey.redact.longer import COLUMNS as LONGER_COLUMNS
from blindkey.redact.longer import Form, LongerForms

# Hyperscan gets at most this much of a pattern; a longer one is confirmed by comparison.
ANCHOR = 1024
# The same for forms with NULs (UTF-16, UTF-32 of values with characters past U+00FF;
# the others are found in the NUL-less view), which go to Hyperscan as regexes of escapes:
# their compile time grows with their length (1,000 values: 1.8 s whole, 0.2 s at 64
# bytes), and 64 bytes of one are as rare as its whole.
NUL_ANCHOR = 64
# Values per shard, at most on average: the trade between what one change compiles and
# how many databases each chunk is scanned by (10,000 random 40-character values, CPU
# time: 64 a shard, 0.14 s a change and 12 ms a 64 KiB chunk; 256, 0.16 s and 2.5 ms;
# 1,024, 0.87 s and 0.85 ms; measured before wide forms became a view, which halved the
# scans). Up to 256 values are one database, as before shards.
SHARD_VALUES = 256

# Shards compiled at once: the first build of 10,000 values is ~7 s of CPU.
BUILDERS = min(4, os.cpu_count() or 1)

Group = tuple[tuple[str, str], ...]  # (name, value), longest value first
Span = tuple[int, int, int, bytes]  # start, end, minus the value's length, replacement
Found = tuple[int, int, int]  # start, end, the form's index


def shard_count(values: int) -> int:
    """A power of two, so small sets stay one database (one scan a chunk)."""
    count = 1
    while count * SHARD_VALUES < values:
        count *= 2
    return count


def shard_of(name: str, count: int) -> int:
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) & (count - 1)


LITERAL, CASELESS, ESCAPES = "literal", "caseless", "escapes"


def _found(local: int, start: int, end: int, flags: int, context: object) -> None:
    found, ids = cast(tuple[list[Found], "array[int]"], context)
    found.append((start, end, ids[local]))


class _Matcher:
    """Hyperscan over literals. Its Python binding takes a literal as a C string, so one
    holding a NUL (a UTF-16 or UTF-32 form) goes to a database of its own as a regex of
    escapes.

    Caseless literals (base32 cores) are a database of their own too: mixed with the
    case-sensitive ones, every literal's prefilter ran caseless, and a 64 KiB chunk of
    text took 3-6x as long to scan as the two databases one after the other (50 values:
    75 -> 25 us a chunk of plain text; base64 text, where the caseless prefilter hits
    often either way, no worse).
    """

    def __init__(self, databases: list[tuple[hyperscan.Database, array[int]]], kinds: list[str]):
        self.databases = databases
        self.kinds = kinds  # of each database: LITERAL, CASELESS or ESCAPES
        # A database has one scratch space: streams redacted on worker threads take turns
        # (a shard, and so its lock, is shared by every redactor built while it was current).
        self.lock = threading.Lock()

    @classmethod
    def compiled(cls, keys: list[tuple[bytes, bool]]) -> _Matcher:
        groups = {
            LITERAL: [
                i for i, (key, caseless) in enumerate(keys) if b"\0" not in key and not caseless
            ],
            CASELESS: [
                i for i, (key, caseless) in enumerate(keys) if b"\0" not in key and caseless
            ],
            ESCAPES: [i for i, (key, _) in enumerate(keys) if b"\0" in key],
        }
        databases, kinds = [], []
        for kind, ids in groups.items():
            if ids:
                databases.append((_compiled(keys, ids, kind), array("i", ids)))
                kinds.append(kind)
        return cls(databases, kinds)

    def scan(self, data: bytes) -> list[Found]:
        found: list[Found] = []
        with self.lock:
            for database, ids in self.databases:
                database.scan(data, match_event_handler=_found, context=(found, ids))
        return found


def _compiled(keys: list[tuple[bytes, bool]], ids: list[int], kind: str) -> hyperscan.Database:
    """One database of `keys[ids]`, literals or (ESCAPES: forms with NULs) regexes."""
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    flag = hyperscan.HS_FLAG_SOM_LEFTMOST
    expressions = [keys[i][0] for i in ids]
    if kind == ESCAPES:
        expressions = [b"".join(b"\\x%02x" % c for c in key) for key in expressions]
    flags = [flag | hyperscan.HS_FLAG_CASELESS if keys[i][1] else flag for i in ids]
    database.compile(
        expressions=expressions,
        ids=list(range(len(ids))),
        elements=len(ids),
        flags=flags,
        literal=kind != ESCAPES,
    )
    return database


class Shard:
    """Every form of every value of one group, as one matcher."""

    def __init__(self, group: Group) -> None:
        names: dict[tuple[bytes, bool], int] = {}
        # Longer values first so a value that contains another is reported under its own name.
        for owner, (_, value) in enumerate(group):
            for part in secret_parts(value):
                for form in encodings(part):
                    names.setdefault((form, False), owner)
                for form in caseless_encodings(part):
                    names.setdefault((form, True), owner)
        self.marks = [f"[REDACTED:{name}]".encode() for name, _ in group]
        # Between shards, the same span found twice goes to the longer value's name.
        self.ranks = [-len(value) for _, value in group]
        self.longest = max(len(form) for form, _ in names)
        self.shortest = min(len(form) for form, _ in names)
        # UTF-16 and UTF-32 forms (the only ones with NULs) are not spelled with escapes.
        self.longest_plain = max((len(form) for form, _ in names if b"\0" not in form), default=0)
        # Forms with a raw line break (quoted-printable's soft breaks of a long value): the
        # only ones the line-break view cannot find, so only they need the answer as sent.
        self.breaks = any(b"\n" in form or b"\r" in form for form, _ in names)
        # A wide form that is a narrow one with NULs between is found by the NUL-less view.
        for form, caseless in [key for key in names if b"\0" in key[0]]:
            if (form.replace(b"\0", b""), False) in names:
                del names[form, caseless]
        anchors = _anchored(names)
        # Nearly every anchor is its one form whole: of those only the owner and length are
        # kept (10,000 values: 200,000 forms, ~90 MB as objects), the rest are compared.
        self._lengths = array("i")
        self._owners = array("i")  # -1: compare against _longer
        longer: dict[int, list[Form]] = {}
        for anchor_id, ((anchor, _), forms) in enumerate(anchors.items()):
            self._lengths.append(len(anchor))
            if len(forms) == 1 and len(forms[0][0]) == len(anchor):
                self._owners.append(forms[0][2])
            else:
                self._owners.append(-1)
                longer[anchor_id] = sorted(forms, key=lambda form: -len(form[0]))
        self._longer = LongerForms.of(longer)
        self._matcher = _Matcher.compiled(list(anchors))

    def dump(self) -> tuple[dict[str, object], list[bytes]]:
        """What `restore` needs besides the group: scalars, and the arrays and databases as
        bytes (native byte order: the cache binds itself to this platform)."""
        meta: dict[str, object] = {
            "longest": self.longest,
            "shortest": self.shortest,
            "longest_plain": self.longest_plain,
            "breaks": self.breaks,
            "kinds": self._matcher.kinds,
        }
        blobs = [self._lengths.tobytes(), self._owners.tobytes()]
        blobs += [column.tobytes() for column in self._longer.columns()]
        blobs.append(self._longer.forms)
        for database, ids in self._matcher.databases:
            blobs += [ids.tobytes(), hyperscan.dumpb(database)]
        return meta, blobs

    @classmethod
    def restore(cls, group: Group, meta: dict[str, Any], blobs: list[bytes]) -> Shard:
        """The shard `dump` described, for `group`, without compiling. Only for what the
        cache authenticated as made from exactly this group (redact/cache.py)."""
        shard = cls.__new__(cls)
        shard.marks = [f"[REDACTED:{name}]".encode() for name, _ in group]
        shard.ranks = [-len(value) for _, value in group]
        shard.longest, shard.shortest = int(meta["longest"]), int(meta["shortest"])
        shard.longest_plain, shard.breaks = int(meta["longest_plain"]), bool(meta["breaks"])
        shard._lengths, shard._owners = array("i", blobs[0]), array("i", blobs[1])
        if len(shard._lengths) != len(shard._owners):
            raise ValueError("a cached shard's anchors and owners differ in number")
        columns = [array("i", blob) for blob in blobs[2 : 2 + LONGER_COLUMNS]]
        shard._longer = LongerForms(columns, blobs[2 + LONGER_COLUMNS])
        databases = []
        rest = blobs[3 + LONGER_COLUMNS :]
        for ids, serialized in zip(rest[0::2], rest[1::2], strict=True):
            database = hyperscan.loadb(serialized, hyperscan.HS_MODE_BLOCK)
            database.scratch = hyperscan.Scratch(database)
            databases.append((database, array("i", ids)))
        kinds = [str(kind) for kind in meta["kinds"]]
        if len(kinds) != len(databases):
            raise ValueError("a cached shard's databases and kinds differ in number")
        shard._matcher = _Matcher(databases, kinds)
        return shard

    def matches(self, data: bytes) -> list[Span]:
        spans: list[Span] = []
        for start, _, anchor_id in self._matcher.scan(data):
            owner = self._owners[anchor_id]
            if owner >= 0:
                end = start + self._lengths[anchor_id]
                spans.append((start, end, self.ranks[owner], self.marks[owner]))
                continue
            whole = self._lengths[anchor_id]
            for form, caseless, owner in self._longer[anchor_id]:
                if len(form) <= whole or _confirmed(data, start, form, caseless):
                    spans.append((start, start + len(form), self.ranks[owner], self.marks[owner]))
                    break
        return spans


def _anchored(names: dict[tuple[bytes, bool], int]) -> dict[tuple[bytes, bool], list[Form]]:
    """The forms by the anchor Hyperscan looks for: the shortest other form a form begins
    with (a value's base64, padded or not, begins with its aligned core: one pattern, not
    three), else its first ANCHOR bytes (NUL_ANCHOR with NULs). The rest is compared."""
    anchors: dict[tuple[bytes, bool], list[Form]] = {}
    for caseless in (False, True):
        # Sorted, a form's prefixes come before it, and every form between them begins
        # with them too: a stack holds the chain of forms that begin the current one.
        chain: list[tuple[bytes, tuple[bytes, bool]]] = []
        for form in sorted(form for form, flag in names if flag is caseless):
            while chain and not form.startswith(chain[-1][0]):
                chain.pop()
            key = (
                chain[0][1]
                if chain
                else (form[: NUL_ANCHOR if b"\0" in form else ANCHOR], caseless)
            )
            anchors.setdefault(key, []).append((form, caseless, names[form, caseless]))
            chain.append((form, key))
    return anchors


def _confirmed(data: bytes, start: int, form: bytes, caseless: bool) -> bool:
    """Whether the whole of a form longer than its anchor is at `start`."""
    if caseless:
        return data[start : start + len(form)].upper() == form.upper()
    return data.startswith(form, start)


class _Recent:
    """The shards of the last build, by group. Only the last: after a change to every value
    the shards of the set before would otherwise stay in memory (~100 MB at 10,000 values)
    until the next change. What a redactor still in use holds stays alive with it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shards: dict[Group, Shard] = {}

    def get(self, group: Group) -> Shard | None:
        with self.lock:
            return self.shards.get(group)

    def keep(self, shards: dict[Group, Shard]) -> None:
        with self.lock:
            self.shards = shards


_recent = _Recent()


def build_shards(groups: Sequence[Group], cache: ShardStore | None = None) -> list[Shard]:
    """One shard per group, taken from the last build when the group is unchanged, else
    from `cache` (a start: decrypted, not compiled); the others are compiled side by side
    (Hyperscan lets go of the GIL while it compiles) and given to the cache."""
    found = {group: _recent.get(group) for group in groups}
    if cache is not None:
        for group in [group for group, shard in found.items() if shard is None]:
            found[group] = cache.load(group)
    missing = [group for group, shard in found.items() if shard is None]
    if len(missing) > 1:
        with ThreadPoolExecutor(min(len(missing), BUILDERS), "blindkey-redact") as pool:
            found.update(zip(missing, pool.map(Shard, missing), strict=True))
    elif missing:
        found[missing[0]] = Shard(missing[0])
    built = {group: shard for group, shard in found.items() if shard is not None}
    _recent.keep(built)
    if cache is not None:
        cache.keep(built)
    return list(built.values())


class ShardStore(Protocol):
    """Where compiled shards outlive the process (redact/cache.py)."""

    def load(self, group: Group) -> Shard | None: ...

    def keep(self, shards: dict[Group, Shard]) -> None:
        """Store those not stored yet; forget every shard not among them."""
