"""Availability: which clients are online at simulated time t, vectorised over the population."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from engine.errors import require


class Availability(ABC):
    """Extension point: who can be reached at simulated time `t` (seconds)."""

    num_clients: int

    @abstractmethod
    def available(self, t: float) -> np.ndarray:
        """Returns a bool mask over all `num_clients` clients."""


@dataclass(frozen=True)
class AlwaysAvailable(Availability):
    """Every client is reachable at every time.

    Attributes:
        num_clients: Population size N.
    """

    num_clients: int

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")

    def available(self, t: float) -> np.ndarray:
        """All true."""
        return np.ones(self.num_clients, dtype=bool)
