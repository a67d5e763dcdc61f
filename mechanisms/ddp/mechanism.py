"""Distributed DP mechanisms: the noise is added on the clients, the sum is taken under SecAgg.

`mechanism=ddp_gaussian` (the distributed discrete Gaussian, Kairouz, Liu, Steinke 2021) and
`mechanism=ddp_skellam` (Agarwal, Kairouz, Liu 2021). Each client rotates, scales and rounds its
clipped update to integers, adds its own share of discrete noise and reduces it mod 2^bits
(`mechanisms.ddp.codec`); the server only ever decodes the modular sum. The server's
`privatize` therefore adds nothing: the release already carries the noise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from common.errors import require
from mechanisms.base import IndependentNoise, NoiseState, NoisyMechanism
from mechanisms.ddp.codec import CodecSpec
from mechanisms.ddp.params import DdpChoice, DdpParams, choose

DEFAULT_BETA = math.exp(-0.5)  # the conditional rounding's failure probability (the papers')


@dataclass(frozen=True)
class DistributedMechanism(IndependentNoise, NoisyMechanism):
    """What the distributed discrete Gaussian and Skellam mechanisms share.

    Guarantees:
        Holds against an honest-but-curious server that sees only the modular sum of the
        surviving clients' encoded updates (secure aggregation), provided at least
        `min_survivors` clients survive each released round (each adds a noise share
        calibrated for that many) and the sum does not wrap around (the scale leaves
        `k_stddevs` standard deviations of the aggregate inside the group). The RDP of a
        release is the papers' (Kairouz, Liu, Steinke 2021, Thm. on the sum of discrete
        Gaussians; Agarwal, Kairouz, Liu 2021, Skellam), with the rounding's norm inflation;
        see `mechanisms.ddp.accounting`.

    Attributes:
        noise_multiplier: z: the aggregate of `min_survivors` shares has standard deviation
            z x the clip norm, as the central Gaussian's.
        seed: The run's seed (rotation signs and the clients' shares are drawn from it).
        noise_seed: Only "seeded": the shares are the clients' own, drawn per (seed, round,
            client).
        bits: log2 of the SecAgg group's size m.
        k_stddevs: Standard deviations of the aggregate that must fit in m / 2.
        beta: The conditional rounding's failure probability.
        aggregate_shares: Skellam only: draw each chunk's shares as one Skellam of their
            summed variance (the same law as their sum; `CodecSpec.aggregate_shares`).
        params: Set by `configured`: the cohort, survivors, clip norm and dimension.
        choice: Set by `configured`: the scale and the local noise.
    """

    bits: int = 16
    k_stddevs: float = 4.0
    beta: float = DEFAULT_BETA
    aggregate_shares: bool = False
    params: DdpParams | None = None
    choice: DdpChoice | None = None
    noise: ClassVar[str] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(2 <= self.bits <= 62, "bits", f"must be in [2, 62], got {self.bits}")
        require(self.k_stddevs > 0, "k_stddevs", f"must be > 0, got {self.k_stddevs}")
        require(0 < self.beta < 1, "beta", f"must be in (0, 1), got {self.beta}")
        require(self.noise_seed == "seeded", "noise_seed", "shares are the clients': 'seeded'")
        require(
            not self.aggregate_shares or self.noise == "skellam",
            "aggregate_shares",
            "only Skellam shares sum to a Skellam: discrete Gaussian shares are drawn per client",
        )

    def configured(
        self, dim: int, cohort_size: int, min_survivors: int, clip_norm: float
    ) -> DistributedMechanism:
        """This mechanism with its scale and local noise chosen for the run.

        Raises:
            ConfigError: bits too few for the cohort, or a noise share that does not fit.
        """
        params = DdpParams(
            bits=self.bits,
            cohort_size=cohort_size,
            min_survivors=min_survivors,
            clip_norm=clip_norm,
            dim=dim,
            noise_multiplier=self.noise_multiplier,
            k_stddevs=self.k_stddevs,
            beta=self.beta,
            noise=self.noise,
        )
        return dataclasses.replace(self, params=params, choice=choose(params))

    @property
    def codec(self) -> CodecSpec:
        """What the clients' encoder and the server's decoder need."""
        params, choice = self._configured()
        return CodecSpec(
            bits=self.bits,
            scale=choice.scale,
            norm_bound=choice.l2_sensitivity,
            noise=self.noise,
            local_noise=choice.local_noise,
            dim=params.dim,
            aggregate_shares=self.noise == "skellam" and self.aggregate_shares,
        )

    def privatize(
        self, total: torch.Tensor, round_idx: int, state: NoiseState
    ) -> tuple[torch.Tensor, NoiseState]:
        """The decoded sum as it is: its noise was added by the clients."""
        self._check(total, round_idx, state)
        return total.clone(), dataclasses.replace(state, round=round_idx + 1)

    @property
    def configuration(self) -> tuple[DdpParams, DdpChoice]:
        """(params, choice) of `configured`.

        Raises:
            ValueError: If the mechanism is not configured.
        """
        return self._configured()

    def _configured(self) -> tuple[DdpParams, DdpChoice]:
        if self.params is None or self.choice is None:
            raise ValueError(f"{type(self).__name__} is not configured: call configured()")
        return self.params, self.choice


@dataclass(frozen=True)
class DDGaussMechanism(DistributedMechanism):
    """The distributed discrete Gaussian (Kairouz, Liu, Steinke 2021); see the base class."""

    noise: ClassVar[str] = "gaussian"


@dataclass(frozen=True)
class SkellamMechanism(DistributedMechanism):
    """The distributed Skellam mechanism (Agarwal, Kairouz, Liu 2021); see the base class.

    Attributes:
        aggregate_shares: Draw each chunk's shares as one Skellam (on by default: exact in law,
            and one draw per chunk instead of one per client).
    """

    noise: ClassVar[str] = "skellam"
    aggregate_shares: bool = True
