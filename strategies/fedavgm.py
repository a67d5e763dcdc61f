"""Federated averaging with server momentum."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from common.errors import require
from strategies.base import Strategy, StrategyState


@dataclass(frozen=True)
class FedAvgM(Strategy):
    """FedAvgM (Hsu, Qi and Brown 2019): heavy-ball momentum on the averaged client delta.

    "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification" (arXiv:1909.06335). With Delta_t the averaged client delta of round t
    (a pseudo-gradient pointing the way the clients moved) and m_{-1} = 0:

        m_t = momentum * m_{t-1} + Delta_t
        params_{t+1} = params_t + server_lr * m_t                            (heavy ball)
        params_{t+1} = params_t + server_lr * (momentum * m_t + Delta_t)     (Nesterov)

    With momentum = 0 it is FedAvg.

    Guarantees:
        Consumes only the aggregate it is given (possibly privatised): it knows nothing of
        clients or noise, so it is post-processing and keeps any DP guarantee of the mechanism.
        The state is one buffer the shape and dtype of the parameters, under key "momentum".

    Attributes:
        server_lr: Server learning rate, > 0.
        momentum: beta, the momentum decay, in [0, 1).
        nesterov: Use Nesterov's look-ahead step instead of the heavy-ball step.
    """

    server_lr: float = 1.0
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        lr, beta = self.server_lr, self.momentum
        require(math.isfinite(lr) and lr > 0, "server_lr", f"must be finite and > 0, got {lr}")
        require(0 <= beta < 1, "momentum", f"must be in [0, 1), got {beta}")
        require(isinstance(self.nesterov, bool), "nesterov", f"must be a bool, got {self.nesterov}")

    def init_state(self, params: torch.Tensor) -> StrategyState:
        """A zero momentum buffer."""
        return {"momentum": torch.zeros_like(params)}

    def step(
        self, params: torch.Tensor, update: torch.Tensor, state: StrategyState
    ) -> tuple[torch.Tensor, StrategyState]:
        """Folds the update into the momentum buffer and moves along it."""
        momentum = self.momentum * state["momentum"] + update
        direction = self.momentum * momentum + update if self.nesterov else momentum
        return params + self.server_lr * direction, {"momentum": momentum}
