"""The strategy interface."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

StrategyState = dict[str, torch.Tensor]


class Strategy(ABC):
    """Extension point: turns the averaged client update into new server parameters.

    The update is the (possibly noised) weighted average of client deltas, i.e. a pseudo-gradient
    pointing the way the clients moved.
    """

    @abstractmethod
    def init_state(self, params: torch.Tensor) -> StrategyState:
        """The strategy's state before the first round (e.g. momentum buffers)."""

    @abstractmethod
    def step(
        self, params: torch.Tensor, update: torch.Tensor, state: StrategyState
    ) -> tuple[torch.Tensor, StrategyState]:
        """Returns the new parameters and state; inputs are not modified."""
