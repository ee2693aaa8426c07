"""A shard's forms that are longer than the anchor Hyperscan finds them by, as flat arrays.

About six a value (a value's base64, padded or not, in both alphabets, begins with its
aligned core): 60,000 tuples for 10,000 values, which took a cached start a third of its
time to rebuild. Kept as columns and one string of bytes, a shard is read back whole and
an anchor's forms are sliced out when Hyperscan reports it, which is rare (only a value
spelled in base64 is found that way).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence

Form = tuple[bytes, bool, int]  # the form, caseless, its owner's index in the group
COLUMNS = 5  # anchor id, caseless, owner, offset in the bytes, length


class LongerForms:
    """anchor id -> its forms, longest first, as `_anchored` and `Shard` ordered them."""

    def __init__(self, columns: Sequence[array[int]], forms: bytes) -> None:
        if len(columns) != COLUMNS or len({len(column) for column in columns}) > 1:
            raise ValueError("a shard's longer forms need five columns of one length")
        self.anchors, self.caseless, self.owners, self.offsets, self.lengths = columns
        self.forms = forms
        # Each form follows the one before (as `of` lays them out), ending where the bytes do.
        if self.offsets and (
            self.offsets[0] != 0 or self.offsets[-1] + self.lengths[-1] != len(forms)
        ):
            raise ValueError("a shard's longer forms are not as long as their bytes")
        if self.anchors != array("i", sorted(self.anchors)):
            raise ValueError("a shard's longer forms are not in anchor order")

    @classmethod
    def of(cls, by_anchor: Mapping[int, list[Form]]) -> LongerForms:
        columns = [array("i") for _ in range(COLUMNS)]
        parts: list[bytes] = []
        offset = 0
        for anchor_id in sorted(by_anchor):
            for form, caseless, owner in by_anchor[anchor_id]:
                row = (anchor_id, int(caseless), owner, offset, len(form))
                for column, number in zip(columns, row, strict=True):
                    column.append(number)
                parts.append(form)
                offset += len(form)
        return cls(columns, b"".join(parts))

    def columns(self) -> list[array[int]]:
        return [self.anchors, self.caseless, self.owners, self.offsets, self.lengths]

    def __getitem__(self, anchor_id: int) -> list[Form]:
        low = bisect_left(self.anchors, anchor_id)
        high = bisect_right(self.anchors, anchor_id, low)
        return [
            (
                self.forms[self.offsets[i] : self.offsets[i] + self.lengths[i]],
                bool(self.caseless[i]),
                self.owners[i],
            )
            for i in range(low, high)
        ]
