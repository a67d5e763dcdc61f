"""Row-sparse aggregation: embedding-like parameters travel as (rows touched, their values).

A client of a language model updates the embedding rows of the tokens it saw, a few hundred of
a vocabulary of tens of thousands. `SparsePartial` keeps every row-sparse block as the sorted
rows that some client of the chunk touched and their summed values, and everything else as a
dense sum, so a partial's size grows with the rows touched, not with the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.aggregation.base import (
    Partial,
    WeightedAggregator,
    checked_layout,
    gather,
    scatter,
    span_size,
)
from engine.training import ClientUpdate, ParameterLayout


def add_rows(
    rows: np.ndarray, values: np.ndarray, new_rows: np.ndarray, new_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Adds (new_rows, new_values) into the row-sparse sum (rows, values).

    Args:
        rows: Sorted unique int64 row indices [n].
        values: Their float32 values [n, cols]; updated in place when no new row appears.
        new_rows: Sorted unique int64 row indices [m].
        new_values: Their values [m, cols] (left as they are).

    Returns:
        The sum's sorted unique rows (the union) and values. Each row's value is its old value
        plus its new one (a missing row counts 0), as a dense sum in the same order gives.
    """
    if len(new_rows) == 0:
        return rows, values
    where = np.searchsorted(rows, new_rows)
    if len(rows) and np.array_equal(rows[np.minimum(where, len(rows) - 1)], new_rows):
        values[where] += new_values
        return rows, values
    union = np.union1d(rows, new_rows)
    out = np.zeros((len(union), values.shape[1]), dtype=np.float32)
    out[np.searchsorted(union, rows)] = values
    out[np.searchsorted(union, new_rows)] += new_values
    return union, out


@dataclass
class SparsePartial(Partial):
    """A partial whose row-sparse blocks hold only the rows that some client touched.

    Attributes:
        rows: Per row block of the layout, the sorted unique int64 rows touched [n_b].
        values: Per row block, their summed float32 values [n_b, cols].
    """

    rows: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    @property
    def _layout(self) -> ParameterLayout:
        if self.layout is None:
            raise ValueError("a sparse partial needs its layout")
        return self.layout

    def add(self, update: ClientUpdate, weight: float, bit: float = 0.0) -> None:
        """Adds one client: its dense part, and each block's rows where its delta is nonzero."""
        layout, scale = self._layout, np.float32(weight)
        gather(layout.outside_rows, update.delta, self.update_sum, scale)
        payload = span_size(layout.outside_rows) * update.delta.itemsize
        for i, block in enumerate(layout.row_blocks):
            matrix = update.delta[block.offset : block.stop].reshape(block.rows, block.cols)
            touched = np.flatnonzero(matrix.any(axis=1))
            payload += touched.nbytes + len(touched) * block.cols * update.delta.itemsize
            self.rows[i], self.values[i] = add_rows(
                self.rows[i], self.values[i], touched, scale * matrix[touched]
            )
        self._count(update, weight, bit, payload)

    def merge(self, other: Partial) -> None:
        """Adds another sparse partial of the same layout: dense parts add, rows unite."""
        other = self.same_kind(other)
        super().merge(other)
        for i in range(len(self.rows)):
            self.rows[i], self.values[i] = add_rows(
                self.rows[i], self.values[i], other.rows[i], other.values[i]
            )

    def same_kind(self, other: Partial) -> SparsePartial:
        """`other`, checked to be a sparse partial of this layout (else ValueError)."""
        if not isinstance(other, SparsePartial) or other.layout != self.layout:
            raise ValueError("can only merge a sparse partial of the same layout")
        return other

    def dense_sum(self) -> np.ndarray:
        """The dense part and the rows scattered into one float32 [d] vector (a new array)."""
        layout = self._layout
        out = np.zeros(layout.dim, dtype=np.float32)
        scatter(layout.outside_rows, self.update_sum, out)
        for block, rows, values in zip(layout.row_blocks, self.rows, self.values, strict=True):
            out[block.offset : block.stop].reshape(block.rows, block.cols)[rows] = values
        return out

    @property
    def nbytes(self) -> int:
        """The dense part plus each block's row indices and values."""
        blocks = sum(r.nbytes + v.nbytes for r, v in zip(self.rows, self.values, strict=True))
        return int(self.update_sum.nbytes + blocks)

    def metrics(self) -> dict[str, float]:
        """`train/rows_touched`: distinct rows in the sum, over all row blocks (if any)."""
        if not self.rows:
            return {}
        return {"train/rows_touched": float(sum(len(rows) for rows in self.rows))}


@dataclass(frozen=True)
class SparseAggregator(WeightedAggregator):
    """Weighted sums whose row-sparse parameters travel as touched rows only.

    A client touches row j of a row-sparse parameter when its delta on that row is nonzero.
    The total, once densified by the server, equals the dense aggregator's (to float rounding:
    rows are summed in the same client order). Models declare their row-sparse parameters with
    `row_sparse_parameters()` (see `engine.training.models.layout`); without any, a dense sum.

    Attributes:
        weighting: "examples" weights each client by its example count; "uniform" by 1.
    """

    weighting: str = "examples"

    def zeros(self, dim: int, layout: ParameterLayout | None = None) -> SparsePartial:
        """An empty sparse partial: a zero dense part and no rows in any block."""
        layout = checked_layout(dim, layout)
        return SparsePartial(
            update_sum=np.zeros(span_size(layout.outside_rows), dtype=np.float32),
            layout=layout,
            rows=[np.zeros(0, dtype=np.int64) for _ in layout.row_blocks],
            values=[np.zeros((0, b.cols), dtype=np.float32) for b in layout.row_blocks],
        )

    def reduce(self, partials: Sequence[Partial], dim: int) -> SparsePartial:
        """Sums partials in the order given, each block's rows added into a dense buffer.

        The same sums, in the same order, as merging partial after partial, without re-sorting
        the union at every step: O(rows carried) per partial, plus one pass over each block.
        """
        total = self.zeros(dim, partials[0].layout if partials else None)
        blocks = total._layout.row_blocks
        buffers = [np.zeros((block.rows, block.cols), dtype=np.float32) for block in blocks]
        touched = [np.zeros(block.rows, dtype=bool) for block in blocks]
        for partial in partials:
            other = total.same_kind(partial)
            Partial.merge(total, other)
            for buffer, seen, rows, values in zip(
                buffers, touched, other.rows, other.values, strict=True
            ):
                buffer[rows] += values
                seen[rows] = True
        total.rows = [np.flatnonzero(seen) for seen in touched]
        total.values = [buffer[rows] for buffer, rows in zip(buffers, total.rows, strict=True)]
        return total
