"""Adaptive server optimizers: FedAdam and FedYogi (Reddi et al. 2021)."""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass

import torch

from common.errors import require
from strategies.base import Strategy, StrategyState


@dataclass(frozen=True)
class AdaptiveFedOpt(Strategy):
    """Algorithm 2 of Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR; arXiv:2003.00295).

    With Delta_t the averaged client delta of round t, m_{-1} = 0 and v_{-1} = tau^2:

        m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
        v_t = second_moment(v_{t-1}, Delta_t^2)                  (the only per-variant part)
        params_{t+1} = params_t + server_lr * m_t / (sqrt(v_t) + tau)

    All operations are element-wise. As in the paper there is no bias correction: the first
    step is server_lr (1 - beta1) Delta_0 / (sqrt(v_0) + tau), about server_lr (1 - beta1) /
    sqrt(1 - beta2) sign(Delta_0) where |Delta_0| >> tau (server_lr sign(Delta_0) with the
    defaults), not Adam's bias-corrected step.

    Guarantees:
        Consumes only the aggregate it is given (possibly privatised): it knows nothing of
        clients or noise, so it is post-processing and keeps any DP guarantee of the mechanism.
        v stays > 0, so the step is finite for finite inputs. The state is two buffers the shape
        and dtype of the parameters, under keys "m" and "v".

    Attributes:
        server_lr: eta, the server learning rate, > 0.
        beta1: First-moment decay, in [0, 1).
        beta2: Second-moment decay, in [0, 1).
        tau: Adaptivity, > 0: added to sqrt(v), and sqrt of the initial v.
    """

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        lr, tau = self.server_lr, self.tau
        require(math.isfinite(lr) and lr > 0, "server_lr", f"must be finite and > 0, got {lr}")
        require(0 <= self.beta1 < 1, "beta1", f"must be in [0, 1), got {self.beta1}")
        require(0 <= self.beta2 < 1, "beta2", f"must be in [0, 1), got {self.beta2}")
        require(math.isfinite(tau) and tau > 0, "tau", f"must be finite and > 0, got {tau}")

    @abstractmethod
    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """The new second-moment estimate v_t from v_{t-1} and Delta_t^2 (a new tensor)."""

    def init_state(self, params: torch.Tensor) -> StrategyState:
        """Zero first moment, and second moment tau^2 as in the paper."""
        return {"m": torch.zeros_like(params), "v": torch.full_like(params, self.tau**2)}

    def step(
        self, params: torch.Tensor, update: torch.Tensor, state: StrategyState
    ) -> tuple[torch.Tensor, StrategyState]:
        """Updates both moments and takes the adaptive step."""
        m = self.beta1 * state["m"] + (1 - self.beta1) * update
        v = self.second_moment(state["v"], update * update)
        return params + self.server_lr * m / (v.sqrt() + self.tau), {"m": m, "v": v}


@dataclass(frozen=True)
class FedAdam(AdaptiveFedOpt):
    """FedAdam (Reddi et al. 2021, Algorithm 2): v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2.

    An exponential moving average of the squared deltas. See `AdaptiveFedOpt` for the rest of
    the step and the attributes.

    Guarantees:
        As `AdaptiveFedOpt`.
    """

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """Adam's moving average."""
        return self.beta2 * v + (1 - self.beta2) * squared


@dataclass(frozen=True)
class FedYogi(AdaptiveFedOpt):
    """FedYogi (Reddi et al. 2021, Algorithm 2): v_t = v_{t-1} - (1 - beta2) D sign(v_{t-1} - D).

    Here D = Delta_t^2 (the Yogi rule of Zaheer et al. 2018): v moves towards D by
    (1 - beta2) D, however far it is from D, where Adam moves it by (1 - beta2) |v - D|; so v
    decays slowly after the deltas shrink (v > 2 D), and where v_{t-1} = D it stays. See
    `AdaptiveFedOpt` for the rest of the step and the attributes.

    Guarantees:
        As `AdaptiveFedOpt`; v stays > 0 because a decrease, (1 - beta2) D, is less than v.
    """

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """Yogi's additive, sign-controlled update."""
        return v - (1 - self.beta2) * squared * torch.sign(v - squared)
