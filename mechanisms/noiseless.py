"""No privacy: the summed update is released as is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import require
from mechanisms.base import IndependentNoise, NoiseState


@dataclass(frozen=True)
class NoNoise(IndependentNoise):
    """Releases the exact sum.

    Guarantees:
        None: epsilon is infinite. Use it for utility baselines only.

    Attributes:
        noise_multiplier: Always 0; a field only so that a private experiment can be rerun as
            its non-private baseline with `mechanism=none mechanism.noise_multiplier=0`.
    """

    noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        require(self.noise_multiplier == 0, "noise_multiplier", "must be 0: this adds no noise")

    def init_state(self, dim: int) -> NoiseState:
        """A state that never changes: no noise, no seed."""
        return NoiseState(0, dim, 0)

    def privatize(
        self, total: torch.Tensor, round_idx: int, state: NoiseState
    ) -> tuple[torch.Tensor, NoiseState]:
        """Identity, any round, and the state as it was."""
        return total, state
