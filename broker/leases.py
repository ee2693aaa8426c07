"""Rate buckets, and leases of calls from them, so a proxy decides most rated calls alone.

The broker keeps one token bucket per (rule, agent, rate). A counted call that passes may
come back with a lease: N more calls of the same buckets, reserved for the proxy that
asked, which spends them with the answer it keeps and stops after `LEASE_SECONDS`. A
reservation is settled when the proxy gives back what it did not spend (with its next
request for a lease), or, unreported, as wholly spent `SETTLE_GRACE` after the lease ends.

Why the limit holds exactly, across any number of proxies and restarts: a reserved call is
never available to anyone else, and it is taken from the bucket at settlement, never
earlier, while the bucket's cap still counts it (a call spent late cannot make room for
refill that a call spent at once would have wasted). A proxy that dies is settled as if it
had spent everything; the bucket's availability is written (without reservations) to
`rates.json` whenever it falls, so a broker restarted (with its proxy, or alone) starts
from no more than it had. What leasing costs: a call may be refused early while calls are
reserved by a proxy that does not use them, at most one lease of each pool per proxy,
given back at its next lease or after `LEASE_SECONDS + SETTLE_GRACE`.

A lease is small when the bucket is low (a quarter of what is left, none below four), so
the last calls of a bucket are decided one by one by the broker and the 429's
`Retry-After` is the bucket's own; and no larger than what the rule refills in
`REFILL_WORTH` seconds, so a lease lost with its proxy costs the agent at most that.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from blindkey.config.request_rules import Rate

log = logging.getLogger("blindkey.broker")
BucketKey = tuple[str, str, str]  # (rule, agent, rate text): a changed rate is a new bucket
LEASE_SECONDS = 1.0
SETTLE_GRACE = 2.0
MAX_LEASE = 256
REFILL_WORTH = 5.0
SMALLEST_SHARE = 4  # a lease takes at most 1/4 of what the bucket has left


@dataclass
class Bucket:
    tokens: float  # what it holds, the calls reserved by leases included
    at: float  # when `tokens` was last refilled
    reserved: int = 0

    @property
    def available(self) -> float:
        return self.tokens - self.reserved


@dataclass(frozen=True)
class Lease:
    keys: tuple[BucketKey, ...]
    calls: int
    settles_at: float  # unreported by then: settled as wholly spent


class Limiter:
    """Token buckets by (rule, agent); each holds `count` and refills `count` per period."""

    def __init__(self, clock: Callable[[], float], file: Path | None = None) -> None:
        self.clock = clock
        self.file = file  # None: buckets live in memory only (`policy test`)
        self._buckets: dict[BucketKey, Bucket] = {}
        self._leases: dict[str, Lease] = {}
        self._next_settle = math.inf
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()  # a restarted broker never settles an old id
        self._load()

    def wait(self, key: BucketKey, rate: Rate) -> float:
        """Seconds until the bucket holds one call (0: now); refills it as time passed."""
        now = self.clock()
        if now >= self._next_settle:
            self._settle_due(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(float(rate.count), now)
        # A wall clock set back must not take calls away (nor set forward add past the cap).
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(float(rate.count), bucket.tokens + elapsed * rate.per_second)
        bucket.at = now
        available = bucket.available
        return 0.0 if available >= 1.0 else (1.0 - available) / rate.per_second

    def take(self, key: BucketKey) -> None:
        self._buckets[key].tokens -= 1.0

    def lease(self, limited: Sequence[tuple[BucketKey, Rate]]) -> tuple[str, int] | None:
        """Reserve calls of every bucket of `limited` (just refilled by `wait`, and the call
        that asked taken): (lease id, calls), or None when the buckets are too low."""
        calls = min(_size(self._buckets[key], rate) for key, rate in limited)
        if calls < 1:
            return None
        for key, _ in limited:
            self._buckets[key].reserved += calls
        lease_id = f"{self._prefix}-{next(self._ids)}"
        settles_at = self.clock() + LEASE_SECONDS + SETTLE_GRACE
        self._leases[lease_id] = Lease(tuple(key for key, _ in limited), calls, settles_at)
        self._next_settle = min(self._next_settle, settles_at)
        return lease_id, calls

    def settle(self, lease_id: str, unspent: int) -> None:
        """A proxy stopped spending `lease_id` with `unspent` calls left: those go back."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:  # settled already, voided by a reload, or another broker's
            return
        unspent = min(max(unspent, 0), lease.calls)
        for key in lease.keys:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.reserved -= lease.calls
                bucket.tokens -= lease.calls - unspent

    def _settle_due(self, now: float) -> None:
        due = [lease_id for lease_id, lease in self._leases.items() if lease.settles_at <= now]
        for lease_id in due:
            self.settle(lease_id, 0)
        self._next_settle = min((lease.settles_at for lease in self._leases.values()),
                                default=math.inf)  # fmt: skip

    def keep(self, wanted: Callable[[BucketKey], bool]) -> None:
        """Forget the buckets of rules a reload removed or changed, and void their leases (a
        bucket of the same key made again later starts with nothing reserved)."""
        self._buckets = {k: v for k, v in self._buckets.items() if wanted(k)}
        void = [i for i, lease in self._leases.items() if not all(map(wanted, lease.keys))]
        for lease_id in void:
            lease = self._leases.pop(lease_id)
            for key in lease.keys:
                if key in self._buckets:  # a kept bucket: the void lease was spent from it
                    self._buckets[key].reserved -= lease.calls
                    self._buckets[key].tokens -= lease.calls

    def save(self) -> None:
        """Write what each bucket has available, reserved calls counted as spent: a broker
        started from it allows no more than this one could have. No fsync: it is a restart
        of the process that must not refill buckets, not a power cut."""
        if self.file is None:
            return
        rows = [[*key, b.available, b.at] for key, b in self._buckets.items()]
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps({"buckets": rows}))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.file)
        except OSError as exc:
            log.error("rates: cannot write %s (%s)", self.file, exc)

    def _load(self) -> None:
        if self.file is None:
            return
        try:
            rows = orjson.loads(self.file.read_bytes())["buckets"]
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            # Unreadable: every bucket starts full, as before rates were kept (logged).
            log.error("rates: %s unreadable (%s); buckets start full", self.file, exc)
            return
        with contextlib.suppress(ValueError, TypeError):
            for rule, agent, rate, available, at in rows:
                key = (str(rule), str(agent), str(rate))
                self._buckets[key] = Bucket(max(0.0, float(available)), float(at))


def _size(bucket: Bucket, rate: Rate) -> int:
    share = bucket.available / SMALLEST_SHARE
    return int(min(MAX_LEASE, share, rate.per_second * REFILL_WORTH))


@dataclass
class _Held:
    lease_id: str
    left: int
    ends: float


@dataclass
class LeaseHolder:
    """The proxy's side: calls leased per pool (the broker's name for the buckets a call
    counts against), spent one per call until they run out or `LEASE_SECONDS` pass."""

    clock: Callable[[], float] = time.monotonic
    pools: dict[str, list[_Held]] = field(default_factory=dict)
    # (lease id, calls not spent): given back with the next request for a lease.
    unspent: list[tuple[str, int]] = field(default_factory=list)

    def add(self, pool: str, lease_id: str, calls: int, seconds: float) -> None:
        ends = self.clock() + min(seconds, LEASE_SECONDS)
        self.pools.setdefault(pool, []).append(_Held(lease_id, calls, ends))

    def spend(self, pool: str) -> bool:
        """One call of `pool`, if a lease still holds one."""
        held = self.pools.get(pool)
        if not held:
            return False
        now = self.clock()
        while held:
            first = held[0]
            if first.left > 0 and first.ends > now:
                first.left -= 1
                return True
            held.pop(0)
            if first.left > 0:
                self.unspent.append((first.lease_id, first.left))
        return False

    def give_back(self, lease_id: str, calls: int) -> None:
        self.unspent.append((lease_id, calls))

    def release(self, pool: str) -> None:
        """What `pool` holds goes back (with the next request for a lease)."""
        for held in self.pools.pop(pool, ()):
            if held.left > 0:
                self.unspent.append((held.lease_id, held.left))

    def release_all(self) -> None:
        """Policy changed: nothing leased is spent again; what is left goes back."""
        for pool in list(self.pools):
            self.release(pool)

    def returns(self) -> list[list[object]]:
        """What to give back, once: the wire form of a resolve's `settle`."""
        given, self.unspent = self.unspent, []
        return [[lease_id, calls] for lease_id, calls in given]


def settle_all(limiter: Limiter, given: object) -> None:
    """A resolve's `settle`: [[lease id, calls not spent], ...] from the proxy."""
    if not isinstance(given, list):
        return
    for item in given:
        if isinstance(item, list) and len(item) == 2:
            lease_id, calls = item
            if isinstance(lease_id, str) and isinstance(calls, int):
                limiter.settle(lease_id, calls)


def pool_name(keys: Iterable[BucketKey]) -> str:
    return "\n".join(sorted(" ".join(key) for key in keys))
