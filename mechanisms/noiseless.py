"""No privacy: the summed update is released as is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mechanisms.base import Mechanism


@dataclass(frozen=True)
class NoNoise(Mechanism):
    """Releases the exact sum.

    Guarantees:
        None: epsilon is infinite. Use it for utility baselines only.
    """

    def privatize(self, total: torch.Tensor, round_idx: int) -> torch.Tensor:
        """Identity."""
        return total

    def state_dict(self) -> dict[str, Any]:
        """Stateless."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
