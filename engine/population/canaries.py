"""A population with canary clients appended: ids N..N+C-1 that hold no data.

Canaries are rows like every client: they get availability, are selected by the participation
policy, timed by the clock and recorded in the ledger. Only the worker treats them differently:
their update is a fixed direction (`mechanisms.audit.canaries.Canaries`), not training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.errors import require
from engine.population.base import ClientData, Population


@dataclass(frozen=True, eq=False)
class WithCanaries(Population):
    """`population` with `num_canaries` canary clients after its N clients.

    Attributes:
        population: The clients that train.
        num_canaries: C, the canaries appended (ids N..N+C-1).
        canary_examples: The example count each canary is timed for (it trains nothing; a
            typical count keeps it as fast as a typical client, neither straggler nor sprinter).
    """

    population: Population
    num_canaries: int
    canary_examples: int
    num_clients: int = field(init=False)
    num_classes: int = field(init=False)
    num_features: int = field(init=False)

    def __post_init__(self) -> None:
        require(self.num_canaries >= 1, "audit.num_canaries", f"must be >= 1: {self.num_canaries}")
        require(self.canary_examples >= 1, "canary_examples", "must be >= 1")
        base = self.population
        object.__setattr__(self, "num_clients", base.num_clients + self.num_canaries)
        object.__setattr__(self, "num_classes", base.num_classes)
        object.__setattr__(self, "num_features", base.num_features)

    @property
    def first_canary(self) -> int:
        """The first canary's id: the size of the population without canaries."""
        return self.population.num_clients

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        """The clients' example counts; `canary_examples` for a canary."""
        ids = np.asarray(ids, dtype=np.int64)
        counts = np.full(ids.shape, self.canary_examples, dtype=np.int64)
        real = ids < self.first_canary
        counts[real] = self.population.num_examples(ids[real])
        return counts

    def client_data(self, client_id: int) -> ClientData:
        """A training or held-out client's data (held-out ids are the population's + C).

        Raises:
            ValueError: For a canary, which holds no data.
        """
        if client_id < self.first_canary:
            return self.population.client_data(client_id)
        if client_id < self.num_clients:
            raise ValueError(f"client {client_id} is a canary: it holds no data")
        return self.population.client_data(client_id - self.num_canaries)

    def held_out_ids(self, count: int) -> np.ndarray:
        """The population's held-out clients, their ids moved past the canaries' by C."""
        return self.population.held_out_ids(count) + self.num_canaries


def typical_examples(population: Population, sample: int = 10_000) -> int:
    """The median example count of the first `sample` clients (at least 1)."""
    ids = np.arange(min(sample, population.num_clients))
    return max(1, int(np.median(population.num_examples(ids))))
