"""The noise-mechanism interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Mechanism(ABC):
    """Extension point: adds privacy noise to the summed update of each round, on the server.

    Its noise must be reproducible from its seed, so that its state can be checkpointed and the
    noise regenerated instead of stored.
    """

    @abstractmethod
    def privatize(self, total: torch.Tensor, round_idx: int) -> torch.Tensor:
        """Returns the released (noised) version of round `round_idx`'s summed update."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the noise sequence after a restart."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
