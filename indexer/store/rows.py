"""The rows of one committed snapshot of a folder index: its segments in order, where each one's
rows start, and its deletion marks.

A row is a position in the snapshot: segment after segment, deleted rows included (they keep
their place until a merge leaves them out); `live_rows()` are the others. Each row holds one chunk
record, named by its stable record id (each segment's ids.npy). A RowMap never changes: the next
commit makes a new one, reusing the segments that stayed. The vector back ends read rows through
it (indexer.store.vectors), never through the store's own parts.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .segment import Segment


class RowMap:
    """Rows ↔ (segment, local row) ↔ chunk record ids, and which rows are live."""

    def __init__(self, segments: list[Segment], dead: dict[int, np.ndarray]) -> None:
        self.segments = segments
        self.bases = np.cumsum([0] + [len(s) for s in segments]).astype(np.int64)  # each segment's first row, and the end
        self.dead = dead  # segment number → bool mask of its deleted rows (only where any)
        self._live: np.ndarray | None = None

    def __len__(self) -> int:
        """How many rows are live."""
        return int(self.bases[-1]) - sum(int(m.sum()) for m in self.dead.values())

    def parts(self) -> Iterator[tuple[Segment, int, np.ndarray | None]]:
        """Each segment with its first row and its live mask (None: every row live), in row order."""
        for i, s in enumerate(self.segments):
            yield s, int(self.bases[i]), self.live_mask(i)

    def live_mask(self, i: int) -> np.ndarray | None:
        """The live rows of the segment at position `i`, as a mask (None: all of them)."""
        dead = self.dead.get(self.segments[i].seg)
        return None if dead is None else ~dead

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment position, local row) of rows."""
        rows = np.asarray(rows, np.int64)
        at = np.searchsorted(self.bases, rows, "right") - 1
        return at, rows - self.bases[at]

    def keys(self, rows: np.ndarray) -> list[tuple[int, int]]:
        """(segment number, local row) of rows: how deletion marks name them."""
        at, local = self.locate(rows)
        return [(self.segments[a].seg, int(r)) for a, r in zip(at.tolist(), local.tolist())]

    def gather(self, rows: list[int], field: str, tail: tuple[int, ...], dtype) -> np.ndarray:
        """Each row's entry of a per-segment array (`field`: "vectors", "ids"), in the order given."""
        out = np.zeros((len(rows), *tail), dtype)
        at, local = self.locate(np.asarray(rows, np.int64))
        for i in set(at.tolist()):
            pick = at == i
            out[pick] = getattr(self.segments[i], field)[local[pick]]
        return out

    def ids(self, rows: list[int] | np.ndarray) -> np.ndarray:
        """The chunk record ids of rows."""
        return self.gather(list(rows), "ids", (), np.int64)

    def live_rows(self) -> np.ndarray:
        """Every live row, ascending."""
        if self._live is None:
            self._live = self.live_where(lambda s: np.arange(len(s), dtype=np.int64))
        return self._live

    def live_where(self, local: Callable[[Segment], np.ndarray]) -> np.ndarray:
        """The live ones of each segment's rows `local(segment)` (ascending), as rows, ascending."""
        out = [np.zeros(0, np.int64)]
        for s, base, mask in self.parts():
            found = local(s)
            out.append((found if mask is None else found[mask[found]]) + base)
        return np.concatenate(out)

    def holding(self, ids: np.ndarray) -> np.ndarray:
        """The live rows whose record id is among `ids`, ascending."""
        return self.live_where(lambda s: s.rows_holding(ids))
