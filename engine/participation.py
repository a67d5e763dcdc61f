"""Participation policies: who of the available clients forms the cohort of a round."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from engine.errors import require

_DENSE_FALLBACK = 0.05


@dataclass(frozen=True)
class ParticipationBound:
    """The participation guarantee a policy makes, read by the privacy accountant.

    Guarantees:
        Every client joins at most `max_participations` rounds (None: no limit beyond the
        number of rounds), and any two of its rounds i, j satisfy |i - j| >= `min_separation`
        (Choquette-Choo et al. 2023, "(k, b)-participation"; b counts the distance, not the
        rounds strictly between).

    Attributes:
        max_participations: k, or None when unbounded.
        min_separation: b >= 1.
    """

    max_participations: int | None
    min_separation: int

    def __post_init__(self) -> None:
        k = self.max_participations
        require(k is None or k >= 1, "max_participations", f"must be >= 1 or None, got {k}")
        require(self.min_separation >= 1, "min_separation", "must be >= 1")


class ParticipationPolicy(ABC):
    """Extension point: chooses the cohort of each round."""

    cohort_size: int

    @property
    @abstractmethod
    def bound(self) -> ParticipationBound:
        """The (k, b) participation bound this policy guarantees."""

    @abstractmethod
    def select(
        self, round_idx: int, t: float, mask: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Returns the sorted, distinct int64 ids of the cohort of round `round_idx`.

        Args:
            round_idx: Round number, from 0.
            t: Simulated time of the round's start, in seconds.
            mask: Bool availability mask over the population.
            rng: The round's selection stream.
        """


def sample_available(mask: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform sample without replacement of `size` ids where `mask` is true.

    Costs O(size) when most clients are available: ids are drawn with replacement and the
    unavailable and repeated ones dropped, which leaves a uniform sample without replacement.
    Falls back to O(N) `flatnonzero` when few clients are available.

    Returns:
        Sorted int64 ids; fewer than `size` only when fewer are available.
    """
    num_available = int(np.count_nonzero(mask))
    size = min(size, num_available)
    if size == 0:
        return np.empty(0, dtype=np.int64)
    if num_available < _DENSE_FALLBACK * len(mask):
        return np.sort(rng.choice(np.flatnonzero(mask), size=size, replace=False))
    picked = np.empty(0, dtype=np.int64)
    while len(picked) < size:
        draws = int(1.25 * (size - len(picked)) * len(mask) / num_available) + 16
        candidates = rng.integers(0, len(mask), size=draws)
        candidates = np.concatenate([picked, candidates[mask[candidates]]])
        _, first = np.unique(candidates, return_index=True)
        picked = candidates[np.sort(first)][:size]
    return np.sort(picked)


@dataclass(frozen=True)
class UniformParticipation(ParticipationPolicy):
    """A uniform cohort of the available clients each round, with no participation limit.

    Attributes:
        cohort_size: Clients per round.
    """

    cohort_size: int = 100

    def __post_init__(self) -> None:
        require(self.cohort_size >= 1, "cohort_size", f"must be >= 1, got {self.cohort_size}")

    @property
    def bound(self) -> ParticipationBound:
        """No limit: (k, b) = (unbounded, 1).

        Guarantees:
            Only that a client joins a round at most once.
        """
        return ParticipationBound(max_participations=None, min_separation=1)

    def select(
        self, round_idx: int, t: float, mask: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Uniform among the available clients."""
        return sample_available(mask, self.cohort_size, rng)
