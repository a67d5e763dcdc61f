"""Per-client L2 clipping, fixed or adaptive (quantile tracking), applied inside the workers.

Each client's whole update (all parameters together) is scaled to L2 norm at most the round's
clip norm before any summation. Adaptive clipping also reports one bit per client, whether its
update was within the clip norm, through the same privatised release as the updates.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from common.errors import require


def clip_update(delta: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scales `delta` to L2 norm at most `clip_norm`.

    Guarantees:
        The returned update has L2 norm <= clip_norm whatever `delta` holds: a non-finite
        update (NaN or Inf anywhere) is replaced by zeros, and the float32 scale is shrunk by
        2^-20 so that rounding cannot overshoot.

    Returns:
        The clipped update (a new array when scaled, `delta` itself otherwise) and the bit
        b = 1[||delta|| <= clip_norm] - 1/2 of adaptive clipping (Andrew et al. 2019).
    """
    norm = float(np.linalg.norm(delta.astype(np.float64, copy=False)))
    if not math.isfinite(norm):
        return np.zeros_like(delta), -0.5
    if norm <= clip_norm:
        return delta, 0.5
    return delta * np.float32(clip_norm / norm * (1 - 2**-20)), -0.5


class Clipping(ABC):
    """Extension point: the clip norm of each round."""

    @property
    @abstractmethod
    def initial_norm(self) -> float | None:
        """The clip norm of round 0; None means no clipping (and no privacy)."""

    @property
    def bit_noise_std(self) -> float | None:
        """Noise std of the released sum of clipping bits; None when there are no bits."""
        return None

    @abstractmethod
    def value_noise_multiplier(self, noise_multiplier: float) -> float:
        """The noise multiplier left for the updates once the clipping bits have had theirs."""

    @abstractmethod
    def next_norm(self, clip_norm: float, unclipped_fraction: float) -> float:
        """The next round's clip norm, from the (privatised) fraction of unclipped updates."""


@dataclass(frozen=True)
class NoClipping(Clipping):
    """Updates are summed as they are: only for non-private runs."""

    @property
    def initial_norm(self) -> float | None:
        """No clip norm."""
        return None

    def value_noise_multiplier(self, noise_multiplier: float) -> float:
        """All of it."""
        return noise_multiplier

    def next_norm(self, clip_norm: float, unclipped_fraction: float) -> float:
        """Unchanged."""
        return clip_norm


@dataclass(frozen=True)
class FixedClipping(Clipping):
    """The same clip norm every round.

    Guarantees:
        Every client's update has L2 norm at most `clip_norm`, so a sum over clients changes by
        at most `clip_norm` in L2 when one client's data is replaced by zero (McMahan et al.
        2018, DP-FedAvg).

    Attributes:
        clip_norm: C > 0.
    """

    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        ok = math.isfinite(self.clip_norm) and self.clip_norm > 0
        require(ok, "clip_norm", f"must be finite and > 0, got {self.clip_norm}")

    @property
    def initial_norm(self) -> float | None:
        """`clip_norm`."""
        return self.clip_norm

    def value_noise_multiplier(self, noise_multiplier: float) -> float:
        """All of it: there are no clipping bits."""
        return noise_multiplier

    def next_norm(self, clip_norm: float, unclipped_fraction: float) -> float:
        """Unchanged."""
        return clip_norm


@dataclass(frozen=True)
class AdaptiveClipping(Clipping):
    """Quantile-tracking clip norm (Andrew et al. 2019).

    From "Differentially private learning with adaptive clipping". Each client reports
    b_i = 1[||delta_i|| <= C] - 1/2 with its update. The server releases the sum of the bits
    with Gaussian noise of standard deviation `count_noise_std` (sigma_b), estimates the
    unclipped fraction as that sum / cohort size + 1/2, and moves the clip norm geometrically
    towards the target quantile: C <- C exp(-learning_rate (fraction - quantile)).

    Guarantees:
        A bit sum has sensitivity 1/2, so its noise multiplier is 2 sigma_b. Released jointly
        with the updates (noise multiplier z_delta), one participation costs as a single
        Gaussian with 1/z^2 = 1/z_delta^2 + 1/(2 sigma_b)^2 (Andrew et al. 2019, Thm 1); the
        updates therefore get z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) so that the configured z
        is what the accountant uses. Requires 2 sigma_b > z.

    Attributes:
        initial_clip_norm: C of round 0.
        target_quantile: Fraction of updates to leave unclipped.
        learning_rate: Step size of the geometric update.
        count_noise_std: sigma_b, noise std of the bit sum.
    """

    initial_clip_norm: float = 0.1
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float = 10.0

    def __post_init__(self) -> None:
        ok = math.isfinite(self.initial_clip_norm) and self.initial_clip_norm > 0
        require(ok, "initial_clip_norm", "must be finite and > 0")
        require(0 < self.target_quantile < 1, "target_quantile", "must be in (0, 1)")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.count_noise_std > 0, "count_noise_std", "must be > 0")

    @property
    def initial_norm(self) -> float | None:
        """`initial_clip_norm`."""
        return self.initial_clip_norm

    @property
    def bit_noise_std(self) -> float | None:
        """`count_noise_std`."""
        return self.count_noise_std

    def value_noise_multiplier(self, noise_multiplier: float) -> float:
        """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2).

        Raises:
            ConfigError: when 2 sigma_b <= z, the bits alone would spend the whole budget.
        """
        z, count = noise_multiplier, 2 * self.count_noise_std
        require(
            count > z,
            "count_noise_std",
            f"2 x {self.count_noise_std} must exceed the noise multiplier {z}",
        )
        return 1.0 / math.sqrt(z**-2 - count**-2)

    def next_norm(self, clip_norm: float, unclipped_fraction: float) -> float:
        """Geometric step towards the target quantile."""
        return clip_norm * math.exp(
            -self.learning_rate * (unclipped_fraction - self.target_quantile)
        )
