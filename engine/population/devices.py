"""Device profiles: how fast each client computes and how fast it transfers, vectorised.

A profile is a pure function of the client id (and the seed): nothing is stored per client, so a
profile costs O(cohort) per round whatever the population size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from common.errors import require
from common.rng import Stream, lognormal, require_seed


class DeviceProfiles(ABC):
    """Extension point: per-client compute cost and network bandwidth."""

    @abstractmethod
    def seconds_per_example(self, ids: np.ndarray) -> np.ndarray:
        """Seconds one local epoch spends on one example, per client (float64, > 0)."""

    @abstractmethod
    def bandwidth(self, ids: np.ndarray) -> np.ndarray:
        """Bytes per second each client uploads and downloads (float64, > 0)."""


@dataclass(frozen=True)
class LognormalDevices(DeviceProfiles):
    """Heavy-tailed device speeds and bandwidths, drawn per client from the seed.

    Attributes:
        seed: Seed of the profiles.
        median_seconds_per_example: Median compute time per example and epoch.
        sigma_speed: Log-scale spread of the compute time.
        median_mbps: Median bandwidth, in megabits per second.
        sigma_bandwidth: Log-scale spread of the bandwidth.
    """

    seed: int = 0
    median_seconds_per_example: float = 0.05
    sigma_speed: float = 0.5
    median_mbps: float = 10.0
    sigma_bandwidth: float = 0.8

    def __post_init__(self) -> None:
        require_seed(self.seed)
        require(self.median_seconds_per_example > 0, "median_seconds_per_example", "must be > 0")
        require(self.sigma_speed >= 0, "sigma_speed", "must be >= 0")
        require(self.median_mbps > 0, "median_mbps", "must be > 0")
        require(self.sigma_bandwidth >= 0, "sigma_bandwidth", "must be >= 0")

    def seconds_per_example(self, ids: np.ndarray) -> np.ndarray:
        """Lognormal around `median_seconds_per_example`."""
        return lognormal(
            self.seed,
            Stream.DEVICE,
            2 * np.asarray(ids),
            self.median_seconds_per_example,
            self.sigma_speed,
        )

    def bandwidth(self, ids: np.ndarray) -> np.ndarray:
        """Lognormal around `median_mbps`, in bytes per second."""
        mbps = lognormal(
            self.seed,
            Stream.DEVICE,
            2 * np.asarray(ids) + 1,
            self.median_mbps,
            self.sigma_bandwidth,
        )
        return mbps * 1e6 / 8
