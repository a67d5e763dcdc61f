"""The noise-mechanism interface: correlated Gaussian noise C^-1 z, in units of the clip norm."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch


class Mechanism(ABC):
    """Extension point: adds privacy noise to the summed update of each round, on the server.

    The server hands the mechanism each round's sum in units of the clip norm (every client's
    contribution has L2 norm <= 1), and the mechanism returns x_t + noise_multiplier * (C^-1 z)_t,
    with z ~ N(0, I) per coordinate and per row of C, drawn from (seed, round): reproducible, so
    the state can be checkpointed and the noise regenerated instead of stored. Rounds must be
    privatized in order, 0, 1, 2, ...

    Guarantees:
        For clients that participate under a (k, b) bound, the released sequence is rho-zCDP
        with rho = sensitivity_squared(n, k, b) / (2 noise_multiplier^2) (Denisov et al. 2022;
        Choquette-Choo et al. 2023), under user-level replace-with-zero adjacency.

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm.
    """

    noise_multiplier: float

    @abstractmethod
    def privatize(self, total: torch.Tensor, round_idx: int) -> torch.Tensor:
        """Returns round `round_idx`'s released value x_t + sigma (C^-1 z)_t (a new tensor)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the noise sequence after a restart."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""

    @abstractmethod
    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """The dense strategy of a run of `rounds` rounds, for analysis and tests.

        Returns:
            (C, C_inv): the encoder C [m, n] whose rows each get one fresh N(0, 1) per
            coordinate, and the decoder C_inv [n, m] that maps them to each round's noise, with
            C_inv @ C = I. The noise of round t is noise_multiplier * (C_inv @ z)[t].
        """

    @abstractmethod
    def sensitivity_squared(
        self, rounds: int, max_participations: int, min_separation: int
    ) -> float:
        """Max over participation patterns pi of || C sum_{i in pi} e_i ||^2.

        Patterns are sets of at most k rounds in [0, rounds), any two at least b apart.
        """
