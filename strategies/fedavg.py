"""Federated averaging."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import require
from strategies.base import Strategy, StrategyState


@dataclass(frozen=True)
class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017): params + server_lr x averaged client delta.

    Attributes:
        server_lr: Server learning rate; 1.0 is plain averaging of the client models.
    """

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        require(self.server_lr > 0, "server_lr", f"must be > 0, got {self.server_lr}")

    def init_state(self, params: torch.Tensor) -> StrategyState:
        """FedAvg keeps no state."""
        return {}

    def step(
        self, params: torch.Tensor, update: torch.Tensor, state: StrategyState
    ) -> tuple[torch.Tensor, StrategyState]:
        """Moves the parameters along the averaged delta."""
        return params + self.server_lr * update, state
