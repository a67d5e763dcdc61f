"""The Gaussian mechanism: fresh, independent noise every round (DP-FedAvg)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.errors import require
from engine.rng import Stream, torch_generator
from mechanisms.base import Mechanism, NoiseSeed


class RoundCursor:
    """The next round to privatize and the dimension learnt at the first (a mutable holder)."""

    def __init__(self) -> None:
        self.round = 0
        self.dim: int | None = None


def check_round(cursor: RoundCursor, total: torch.Tensor, round_idx: int) -> int:
    """Checks that `round_idx` is the next round and `total` keeps the learnt dimension.

    Returns:
        The dimension d (set on the first call).

    Raises:
        ValueError: rounds out of order, a changed dimension, or a non-floating total.
    """
    if round_idx != cursor.round:
        raise ValueError(
            f"rounds must be privatized in order: expected {cursor.round}, got {round_idx}"
        )
    if not total.is_floating_point():
        raise ValueError(f"total must be a floating tensor, got {total.dtype}")
    dim = total.numel()
    if cursor.dim is None:
        cursor.dim = dim
    elif dim != cursor.dim:
        raise ValueError(f"total has {dim} coordinates, earlier rounds had {cursor.dim}")
    return dim


def add_noise(
    total: torch.Tensor, noise: torch.Tensor, noise_multiplier: float, reuse: bool = False
) -> torch.Tensor:
    """Returns total + noise_multiplier * noise in `total`'s shape, dtype and device.

    Args:
        total: The round's sum (left as is).
        noise: d float32 values, any device.
        noise_multiplier: sigma.
        reuse: Write the result into `noise` (which the caller gives up) when it has `total`'s
            dtype and device: one pass and no new d-vector (a fresh one costs page faults
            that take about as long as the pass itself).
    """
    flat = total.reshape(-1)
    if reuse and noise.dtype == total.dtype and noise.device == total.device:
        return torch.add(flat, noise, alpha=noise_multiplier, out=noise).reshape(total.shape)
    noise = noise.to(device=total.device, dtype=total.dtype)
    return torch.add(flat, noise, alpha=noise_multiplier).reshape(total.shape)


def standard_normal(
    dim: int, seed: int, *keys: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Returns d float32 N(0, 1) draws from the stream (seed, NOISE, *keys), into `out` if given."""
    generator = torch_generator(seed, Stream.NOISE, *keys)
    if out is None:
        return torch.randn(dim, generator=generator)
    return torch.randn(dim, generator=generator, out=out)


@dataclass(frozen=True)
class GaussianMechanism(Mechanism):
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
        state is the next round index.

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm (> 0).
        seed: Seed of the noise stream (with noise_seed="seeded").
        noise_seed: "seeded" draws the noise from `seed` (reproducible; the default);
            "secret" from a 128-bit seed drawn from the OS and never logged (`NoiseSeed`).
    """

    noise_multiplier: float = 1.0
    seed: int = 0
    noise_seed: str = "seeded"
    _cursor: RoundCursor = field(default_factory=RoundCursor, init=False, repr=False, compare=False)
    _noise: NoiseSeed = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sigma = self.noise_multiplier
        require(math.isfinite(sigma) and sigma > 0, "noise_multiplier", f"must be > 0, got {sigma}")
        object.__setattr__(self, "_noise", NoiseSeed(self.seed, self.noise_seed))

    def privatize(self, total: torch.Tensor, round_idx: int) -> torch.Tensor:
        """Returns total + sigma z_t, z_t ~ N(0, I) from (seed, NOISE, round_idx).

        Raises:
            ValueError: If `round_idx` is not the next round, or the dimension changed.
        """
        dim = check_round(self._cursor, total, round_idx)
        noise = standard_normal(dim, self._noise.value, round_idx)
        released = add_noise(total, noise, self.noise_multiplier, reuse=True)
        self._cursor.round += 1
        return released

    def state_dict(self) -> dict[str, Any]:
        """The next round (the noise itself is regenerated from the seed)."""
        return {"round": self._cursor.round, "seed": self._noise.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues after the rounds that `state` had privatized.

        Raises:
            ValueError: If the state is of another seed (see `NoiseSeed.restore`).
        """
        self._noise.restore(state["seed"])
        self._cursor.round = int(state["round"])
        self._cursor.dim = None

    def row_keys(self, rounds: int) -> list[tuple[int, ...]]:
        """The NOISE-stream keys of the rows of `matrices(rounds)`'s C, in order: (t,)."""
        return [(t,) for t in range(rounds)]

    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """C = C_inv = I: one fresh row of noise per round."""
        return np.eye(rounds), np.eye(rounds)

    def sensitivity_squared(
        self, rounds: int, max_participations: int, min_separation: int
    ) -> float:
        """As for C = I: the number of participations that fit, min(k, ceil(n / b))."""
        return float(min(max_participations, -(-rounds // min_separation)))
