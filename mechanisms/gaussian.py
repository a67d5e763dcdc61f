"""The Gaussian mechanism: fresh, independent noise every round (DP-FedAvg)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from mechanisms.base import (
    IndependentNoise,
    NoiseState,
    NoisyMechanism,
    add_noise,
    standard_normal,
)


@dataclass(frozen=True)
class GaussianMechanism(IndependentNoise, NoisyMechanism):
    """Adds independent N(0, sigma^2) noise to every coordinate of every round: C = I.

    Round t's noise is sigma * z_t with z_t drawn from the stream (seed, NOISE, t), so it depends
    on nothing but the seed and the round (DP-FedAvg; McMahan et al. 2018, "Learning
    Differentially Private Recurrent Language Models").

    Guarantees:
        With user-level replace-with-zero adjacency and clipped updates (L2 norm <= 1 in units
        of the clip norm), a client that participates in at most k of n rounds, any two at
        least b apart, has sensitivity^2 = min(k, ceil(n / b)), and the release is rho-zCDP
        with rho = sensitivity^2 / (2 sigma^2) (Bun and Steinke 2016). This is without
        amplification by sampling: the participation bound is all that is assumed.
        Assumes secret noise: seeded noise (the default) is known to whoever knows the seed;
        `noise_seed="secret"` draws it from the OS (`mechanisms.base.NoiseSeed`).

    Memory:
        No d-vectors are kept between rounds (one transient draw of d float32 per round). The
        state is the next round index and the seed.

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm (> 0).
        seed: Seed of the noise stream (with noise_seed="seeded").
        noise_seed: "seeded" draws the noise from `seed` (reproducible; the default);
            "secret" from a 128-bit seed drawn from the OS and never logged (`NoiseSeed`).
    """

    def privatize(
        self, total: torch.Tensor, round_idx: int, state: NoiseState
    ) -> tuple[torch.Tensor, NoiseState]:
        """Returns total + sigma z_t, z_t ~ N(0, I) from (seed, NOISE, round_idx).

        Raises:
            ValueError: If `state` cannot privatize round `round_idx` (see `_check`).
        """
        self._check(total, round_idx, state)
        noise = standard_normal(state.dim, state.seed, round_idx)
        released = add_noise(total, noise, self.noise_multiplier, reuse=True)
        return released, dataclasses.replace(state, round=round_idx + 1)

    def row_keys(self, rounds: int) -> list[tuple[int, ...]]:
        """The NOISE-stream keys of the rows of `matrices(rounds)`'s C, in order: (t,)."""
        return [(t,) for t in range(rounds)]
