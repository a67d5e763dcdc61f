"""A round's cohort as chunks, the unit of work and of summation, and their workers.

Chunks depend on the cohort and the config only, never on the workers: each chunk's partial is
the same whichever worker trains it, and the server sums the partials in chunk order. That is
what keeps results bit-identical across worker counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def split_chunks(cohort: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """Splits a cohort into ceil(len / chunk_size) near-equal contiguous chunks."""
    num_chunks = max(1, -(-len(cohort) // chunk_size))
    return np.array_split(cohort, num_chunks)


def assign(
    chunks: Sequence[np.ndarray], num_workers: int, costs: Sequence[float] | None = None
) -> list[list[np.ndarray]]:
    """Gives each worker a contiguous run of chunks, keeping chunk order across workers.

    The runs split the chunks' total cost (default: their sizes) as evenly as contiguous runs
    can: worker k's run ends at the chunk where the running cost comes nearest k/W of the total.
    Which worker trains a chunk never changes its partial, and the server sums the partials in
    chunk order, so the split changes only the speed.
    """
    weights = np.asarray([len(c) for c in chunks] if costs is None else costs, dtype=np.float64)
    ends = np.cumsum(weights)
    total = ends[-1] if len(ends) else 0.0
    targets = total * np.arange(1, num_workers) / num_workers
    inner = np.abs(ends[None, :] - targets[:, None]).argmin(axis=1) + 1 if len(ends) else []
    bounds = np.maximum.accumulate(np.concatenate([[0], inner, [len(chunks)]]).astype(int))
    return [list(chunks[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
