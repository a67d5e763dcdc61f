"""Canary clients: fixed random directions inserted as client updates, and the cosine statistics.

One-shot empirical privacy estimation (Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, ICLR
2024): `num_canaries` extra clients whose update is always the same unit direction scaled to the
clip norm, and as many directions that are never inserted (the null). After training, the cosine
of each direction with the model's change, observed against null, gives an epsilon estimate
(`mechanisms.audit.estimate`).

The directions are rows of a randomized Hadamard matrix: direction j is
H_m[r_j] * D / sqrt(m) on the model's first m = 2**floor(log2 d) coordinates and zero elsewhere,
with D random signs and r_j distinct random rows, both public randomness of the run seed. So every
direction has unit norm exactly, any two are orthogonal, and the cosines of one vector with all
2 C directions cost one fast Walsh-Hadamard transform, O(m log m), whatever C: the all-iterates
statistic is computed every round at no measurable cost.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import require
from common.rng import Stream, generator
from mechanisms.ddp.rotation import fwht

# Keys of the canaries' streams under (seed, AUDIT): the rows, and the signs.
_ROWS_KEY, _SIGNS_KEY = 0, 1


@dataclass(frozen=True)
class Canaries:
    """`num_canaries` canary clients (ids first_id..first_id + C - 1) and C null directions.

    Attributes:
        num_canaries: C, the canaries inserted (and the null directions drawn), >= 1.
        dim: The model's parameter count d.
        seed: The run seed (the directions are public randomness of it).
        first_id: The first canary's client id: the population's size without canaries.

    Guarantees:
        A canary is an ordinary client to the mechanism: its update has norm equal to the clip
        norm, it is selected, clipped, summed, noised and accounted like any other client
        (Andrew et al. 2024, Section 3). Its direction does not depend on any client's data,
        so the cosine statistics are post-processing of the released model.
    """

    num_canaries: int
    dim: int
    seed: int
    first_id: int

    def __post_init__(self) -> None:
        require(self.num_canaries >= 1, "audit.num_canaries", f"must be >= 1: {self.num_canaries}")
        require(self.dim >= 2, "audit.num_canaries", f"the model has {self.dim} parameters")
        require(
            2 * self.num_canaries <= self.support,
            "audit.num_canaries",
            f"{self.num_canaries} canaries and as many null directions need 2 C <= "
            f"{self.support} orthogonal directions of this {self.dim}-parameter model",
        )
        require(self.first_id >= 0, "first_id", f"must be >= 0, got {self.first_id}")

    @property
    def support(self) -> int:
        """M = 2**floor(log2 d): the directions live on the model's first m coordinates."""
        return 1 << (self.dim.bit_length() - 1)

    @functools.cached_property
    def _rows(self) -> np.ndarray:
        """int64 [2 C]: the Hadamard rows of the inserted directions, then of the null ones."""
        rng = generator(self.seed, Stream.AUDIT, _ROWS_KEY)
        return rng.choice(self.support, size=2 * self.num_canaries, replace=False)

    @functools.cached_property
    def _signs(self) -> np.ndarray:
        """float32 [m]: the random signs D."""
        bits = generator(self.seed, Stream.AUDIT, _SIGNS_KEY).integers(0, 2, self.support)
        return (bits * 2 - 1).astype(np.float32)

    def is_canary(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask of the canary clients among `ids`."""
        ids = np.asarray(ids)
        return (ids >= self.first_id) & (ids < self.first_id + self.num_canaries)

    def update(self, client_id: int, norm: float) -> np.ndarray:
        """A canary's update: its direction scaled to `norm`, float32 [d].

        Raises:
            ValueError: If `client_id` is not a canary.
        """
        index = client_id - self.first_id
        if not 0 <= index < self.num_canaries:
            raise ValueError(f"client {client_id} is not a canary")
        row = int(self._rows[index])
        columns = np.arange(self.support, dtype=np.int64)
        parity = np.bitwise_count(columns & row) & 1  # H_m[row, k] = (-1)^popcount(row & k)
        out = np.zeros(self.dim, dtype=np.float32)
        scale = norm / math.sqrt(self.support)
        out[: self.support] = np.where(parity == 1, -scale, scale) * self._signs
        return out

    def cosines(self, change: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The cosine of `change` [d] with every inserted direction, and with every null one.

        Returns:
            (observed float64 [C], null float64 [C]); zeros when `change` is zero.
        """
        vector = torch.as_tensor(change).detach().to("cpu", torch.float64).reshape(-1)
        if vector.numel() != self.dim:
            raise ValueError(f"change must have {self.dim} coordinates, got {vector.numel()}")
        norm = float(vector.norm())
        if norm == 0:
            zeros = np.zeros(self.num_canaries)
            return zeros, zeros.copy()
        signed = vector[: self.support] * torch.from_numpy(self._signs).to(torch.float64)
        projections = fwht(signed.reshape(1, -1))[0].numpy()  # <H_m[r] * D, change>, every r
        cosines = projections[self._rows] / (math.sqrt(self.support) * norm)
        return cosines[: self.num_canaries], cosines[self.num_canaries :]
