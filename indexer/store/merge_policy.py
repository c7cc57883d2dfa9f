"""When segments are merged: a pure function over the segments' sizes and kinds (as tantivy's
merge_policy.rs), which the writer asks after each commit until it names nothing.

Lucene's log merge: segments fall into size tiers (a power of ten of their live rows), and
MERGE_FACTOR segments of one tier become one. Beside it, the exactly searched (flat) segments are
merged into one approximate segment once together they reach its size: a question scans each flat
segment whole, so without this nine flat segments of 99k rows each (one tier) would cost every
question a scan of 891k vectors.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

MERGE_FACTOR = 10  # this many segments of one size tier are merged


def tier(rows: int) -> int:
    """A segment's size tier: the number of digits of its live rows."""
    return len(str(max(rows, 1)))


def next_merge(live: Sequence[int], kinds: Sequence[str], kind_for: Callable[[int], str]) -> list[int] | None:
    """The positions of the segments to merge next (None: none), given each segment's live rows
    and kind, and `kind_for(rows)`, the kind a segment of that many rows is written as: the first
    MERGE_FACTOR of the smallest full tier; else every flat segment, once together they would be
    written as an approximate one."""
    tiers: dict[int, list[int]] = {}
    for i, rows in enumerate(live):
        tiers.setdefault(tier(rows), []).append(i)
    full = [members for _, members in sorted(tiers.items()) if len(members) >= MERGE_FACTOR]
    if full:
        return full[0][:MERGE_FACTOR]
    flat = [i for i, kind in enumerate(kinds) if kind == "flat"]
    return flat if len(flat) > 1 and kind_for(sum(live[i] for i in flat)) != "flat" else None
