"""DP-FTRL with momentum, on the per-round values a correlated-noise mechanism releases."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strategies.base import Strategy, StrategyState
from strategies.fedavgm import FedAvgM


@dataclass(frozen=True)
class DPFTRLM(Strategy):
    """DP-FTRLM: DP-FTRL with momentum (Kairouz et al. 2021, Algorithm 1 with momentum).

    "Practical and Private (Deep) Learning without Sampling or Shuffling" (ICML;
    arXiv:2103.00039). Algorithm 1 keeps the noisy prefix sums s_t of the (pseudo-)gradients,
    puts momentum on them and solves FTRL with the regulariser |params - params_0|^2 / (2 eta):

        phi_t = momentum * phi_{t-1} + s_t,    phi_{-1} = 0
        params_{t+1} = argmin_p <-phi_t, p> + |p - params_0|^2 / (2 eta) = params_0 + eta phi_t

    (the sign is flipped from the paper's gradients: here the update points the way the clients
    moved). In this repository the noise is already correlated across rounds by the mechanism,
    which releases per-round values x_hat_t = x_t + sigma (C^-1 z)_t; their prefix sums are the
    noisy prefix sums, s_t = sum_{i <= t} x_hat_i (for tree aggregation, these are exactly the
    tree's noisy sums). So the server never needs the prefix sums: with m_t = phi_t - phi_{t-1},

        m_t = momentum * m_{t-1} + (s_t - s_{t-1}) = momentum * m_{t-1} + x_hat_t
        params_{t+1} - params_t = eta (phi_t - phi_{t-1}) = eta m_t,

    which is SGD with heavy-ball momentum on x_hat_t, with the same params_0 and m_{-1} = 0. The
    two agree exactly in exact arithmetic (up to rounding in floating point), and this form keeps
    one buffer instead of params_0 and phi. Here x_hat_t is whatever update the server hands the
    strategy (the released sum divided by the round's weight), and eta is `server_lr`. The step
    is FedAvgM's heavy-ball step, which this class delegates to.

    Guarantees:
        Consumes only the privatised aggregates x_hat_t, in round order, and knows nothing of the
        clients or the noise: it is post-processing, so the run's privacy guarantee is exactly
        the mechanism's. It is DP-FTRLM as published when the mechanism's noise is DP-FTRL's
        (tree aggregation or a matrix factorisation); with no noise it is FedAvgM. The state is
        one buffer the shape and dtype of the parameters, under key "momentum".

    Attributes:
        server_lr: eta = 1 / lambda, the server learning rate (inverse regularisation), > 0.
        momentum: gamma, the momentum on the prefix sums, in [0, 1); 0 is plain DP-FTRL.
    """

    server_lr: float = 1.0
    momentum: float = 0.9
    # The heavy-ball step; building it validates server_lr and momentum under the same keys.
    _sgdm: FedAvgM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sgdm = FedAvgM(server_lr=self.server_lr, momentum=self.momentum, nesterov=False)
        object.__setattr__(self, "_sgdm", sgdm)

    def init_state(self, params: torch.Tensor) -> StrategyState:
        """A zero momentum buffer: m_{-1} = 0, i.e. phi_{-1} = 0."""
        return self._sgdm.init_state(params)

    def step(
        self, params: torch.Tensor, update: torch.Tensor, state: StrategyState
    ) -> tuple[torch.Tensor, StrategyState]:
        """One FTRL-with-momentum step, taken as heavy-ball SGD on the released value."""
        return self._sgdm.step(params, update, state)
