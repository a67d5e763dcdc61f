"""Aggregation: how client updates are weighted and summed into partial aggregates.

A partial is the pre-summed result of one chunk of clients. Chunks are a function of the cohort
alone, and partials are reduced in chunk order, so the total is bit-identical whatever the number
of workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.client import ClientUpdate
from engine.errors import require

WEIGHTINGS = ("examples", "uniform")


@dataclass
class Partial:
    """A running sum of weighted client updates; `add` and `merge` accumulate in place.

    Attributes:
        update_sum: Sum of weight x delta, float32 [d].
        weight_sum: Sum of the client weights.
        num_clients: Clients summed.
        loss_sum: Sum of the clients' local training losses (see `ClientUpdate`).
        examples_seen: Examples behind `loss_sum`.
        bit_sum: Sum of the clients' adaptive-clipping bits (1[unclipped] - 1/2).
        clip_norm: The clip norm the updates were clipped to; None when not clipped.
    """

    update_sum: np.ndarray
    weight_sum: float = 0.0
    num_clients: int = 0
    loss_sum: float = 0.0
    examples_seen: int = 0
    bit_sum: float = 0.0
    clip_norm: float | None = None

    def add(self, update: ClientUpdate, weight: float, bit: float = 0.0) -> None:
        """Adds one client's update with the given weight (and clipping bit)."""
        self.update_sum += np.float32(weight) * update.delta
        self.bit_sum += bit
        self.weight_sum += weight
        self.num_clients += 1
        self.loss_sum += update.loss_sum
        self.examples_seen += update.examples_seen

    def merge(self, other: Partial) -> None:
        """Adds another partial into this one."""
        self.update_sum += other.update_sum
        self.weight_sum += other.weight_sum
        self.num_clients += other.num_clients
        self.loss_sum += other.loss_sum
        self.examples_seen += other.examples_seen
        self.bit_sum += other.bit_sum


class Aggregator(ABC):
    """Extension point: how updates are weighted, accumulated and reduced."""

    @abstractmethod
    def client_weight(self, update: ClientUpdate) -> float:
        """The weight of one client's update in the average."""

    @abstractmethod
    def zeros(self, dim: int) -> Partial:
        """An empty partial for parameter vectors of size `dim`."""

    def reduce(self, partials: Sequence[Partial], dim: int) -> Partial:
        """Sums partials in the order given (callers pass chunk order)."""
        total = self.zeros(dim)
        for partial in partials:
            total.merge(partial)
        return total


@dataclass(frozen=True)
class DenseAggregator(Aggregator):
    """Dense sum of flat updates (FedAvg).

    Attributes:
        weighting: "examples" weights each client by its example count (McMahan et al. 2017);
            "uniform" weights every client 1.
    """

    weighting: str = "examples"

    def __post_init__(self) -> None:
        require(self.weighting in WEIGHTINGS, "weighting", f"must be one of {WEIGHTINGS}")

    def client_weight(self, update: ClientUpdate) -> float:
        """Example count or 1."""
        return float(update.num_examples) if self.weighting == "examples" else 1.0

    def zeros(self, dim: int) -> Partial:
        """A zero float32 partial."""
        return Partial(update_sum=np.zeros(dim, dtype=np.float32))
