"""Participation policies: who of the available clients forms the cohort of a round."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import require
from engine.scheduling.ledger import ParticipationLedger
from mechanisms.participation import ParticipationBound

_DENSE_AFTER = 0.05  # Switch to a dense pass once draws would exceed this share of the universe.


class ParticipationPolicy(ABC):
    """Extension point: chooses who of the available, eligible clients trains in each round."""

    cohort_size: int

    @property
    @abstractmethod
    def bound(self) -> ParticipationBound:
        """The (k, b) participation bound this policy guarantees, for the accountant."""

    @abstractmethod
    def max_cohort(self, num_clients: int) -> int:
        """The most clients any round may choose from, before availability and limits."""

    @abstractmethod
    def select(
        self,
        round_idx: int,
        t: float,
        mask: np.ndarray,
        ledger: ParticipationLedger,
        rng: np.random.Generator,
        size: int | None = None,
    ) -> np.ndarray:
        """Returns the sorted, distinct int64 ids selected for round `round_idx`.

        Costs O(size) when most clients are eligible, O(N) at worst.

        Args:
            round_idx: Round number, from 0.
            t: Simulated time of the round's start, in seconds.
            mask: Bool availability mask over the population.
            ledger: Committed participation so far; the policy's limits read it.
            rng: The selection stream of this round and attempt.
            size: How many to select (over-selection); None selects `cohort_size`. Fewer are
                returned only when fewer are available and eligible.
        """


def sample_accepted(
    universe: range,
    accept: Callable[[Any], np.ndarray],
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Uniform sample without replacement of `size` ids of `universe` that `accept` keeps.

    Ids are drawn with replacement and the rejected and repeated ones dropped, which leaves a
    uniform sample without replacement at O(size / acceptance rate). Once the draws would cost
    more than a dense pass, the rest is drawn from the dense set of accepted ids (still uniform:
    sequential sampling without replacement).

    Args:
        universe: The candidate ids, an arithmetic progression (all clients, or one group).
        accept: Bool mask of the accepted among the given ids; takes an int64 array or a slice
            of the population.
        size: Ids wanted.
        rng: Selection stream.

    Returns:
        Sorted int64 ids; fewer than `size` only when fewer are accepted.
    """
    picked = np.empty(0, dtype=np.int64)
    drawn, accepted = 0, 0
    while len(picked) < size:
        missing = size - len(picked)
        rate = max(accepted / drawn, 1e-3) if drawn else 1.0
        draws = int(1.25 * missing / rate) + 16
        if drawn + draws > _DENSE_AFTER * len(universe):
            rest = universe.start + universe.step * np.flatnonzero(accept(_as_slice(universe)))
            rest = np.setdiff1d(rest, picked, assume_unique=True)
            extra = rng.choice(rest, size=min(missing, len(rest)), replace=False)
            picked = np.concatenate([picked, extra.astype(np.int64)])
            break
        candidates = universe.start + universe.step * rng.integers(0, len(universe), size=draws)
        kept = candidates[accept(candidates)]
        drawn, accepted = drawn + draws, accepted + len(kept)
        candidates = np.concatenate([picked, kept])
        _, first = np.unique(candidates, return_index=True)
        picked = candidates[np.sort(first)][:size]
    return np.sort(picked)


def _as_slice(universe: range) -> slice:
    return slice(universe.start, universe.stop, universe.step)


@dataclass(frozen=True)
class UniformParticipation(ParticipationPolicy):
    """Uniform selection among the available clients that the participation limits allow.

    Every policy takes every limit, so that a sweep over policies can share them:
      - groups K: clients are split by id, client c in group c mod K, and only group r mod K is
        eligible in round r (cyclic participation, Cho et al. 2023); K = 1 is plain uniform;
      - min separation b: a client that joined round r is ineligible until round r + b;
      - max participations k: no client joins more than k rounds;
      - min hours T: at most once every T hours of simulated time (the production rule).
    Limits other than the groups are read from the ledger of committed contributions.

    Attributes:
        cohort_size: Clients per round.
        min_separation: b, in rounds; 1 means no limit beyond one round at a time.
        max_participations: k; None for no limit.
        min_hours: T; None for no time limit.
        num_groups: K; 1 for no groups.
    """

    cohort_size: int = 100
    min_separation: int = 1
    max_participations: int | None = None
    min_hours: float | None = None
    num_groups: int = 1

    def __post_init__(self) -> None:
        require(self.cohort_size >= 1, "cohort_size", f"must be >= 1, got {self.cohort_size}")
        ParticipationBound(self.max_participations, self.min_separation)  # validates k and b
        hours = self.min_hours
        require(hours is None or hours > 0, "min_hours", f"must be > 0 or null, got {hours}")
        require(self.num_groups >= 1, "num_groups", f"must be >= 1, got {self.num_groups}")

    @property
    def bound(self) -> ParticipationBound:
        """(k, K * ceil(b / K)): with K = 1, the enforced (max_participations, min_separation).

        Guarantees:
            Exactly the enforced limits, read from the ledger, and the cycle: two rounds of one
            client differ by a multiple of K and by at least b, hence by at least K * ceil(b / K)
            (Choquette-Choo et al. 2023, "(k, b)-participation"; cyclic participation as in Cho
            et al. 2023, "Convergence of FL with cyclic client participation"). The time rule
            (min_hours) adds no round separation of its own: rounds have no fixed length in
            simulated time, so only rounds are declared (as in the Gboard DP-FTRL deployments,
            Xu et al. 2023, where the realised separation is measured after training).
        """
        k, b = self.max_participations, self.min_separation
        return ParticipationBound(k, self.num_groups * -(-b // self.num_groups))

    def select(
        self,
        round_idx: int,
        t: float,
        mask: np.ndarray,
        ledger: ParticipationLedger,
        rng: np.random.Generator,
        size: int | None = None,
    ) -> np.ndarray:
        """Uniform among the clients of this round's group that are available and eligible."""

        def accept(index: Any) -> np.ndarray:
            return mask[index] & self._eligible(index, round_idx, t, ledger)

        universe = range(round_idx % self.num_groups, len(mask), self.num_groups)
        return sample_accepted(universe, accept, self.cohort_size if size is None else size, rng)

    def max_cohort(self, num_clients: int) -> int:
        """The smallest group, N // K clients (every client when K = 1)."""
        return num_clients // self.num_groups

    def _eligible(
        self, index: Any, round_idx: int, t: float, ledger: ParticipationLedger
    ) -> np.ndarray:
        last = ledger.last_round[index]
        ok = (last < 0) | (round_idx - last >= self.min_separation)
        if self.max_participations is not None:
            ok &= ledger.count[index] < self.max_participations
        if self.min_hours is not None:
            ok &= t - ledger.last_start_s(index) >= self.min_hours * 3600.0
        return ok


@dataclass(frozen=True)
class CyclicParticipation(UniformParticipation):
    """Cyclic participation (Cho et al. 2023): `UniformParticipation` with K = 4 groups by default.

    Attributes:
        num_groups: K.
    """

    num_groups: int = 4
