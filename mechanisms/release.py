"""The private release of one round: from the sum of clipped updates to the noisy mean.

One function of the round's sum, its clipping bits, the mechanism and its noise state, the
clipping rule and the public denominator, with no state of its own: the parameter server
reduces the workers' partials, calls `private_mean` with the noise state it holds, keeps the
next one, and steps its strategy with the mean. Nothing else of the clients' data reaches the
update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechanisms.base import Mechanism, NoiseState
from mechanisms.clipping import Clipping


def released_size(dim: int, clipping: Clipping) -> int:
    """The coordinates the mechanism privatizes each round: d, and one for clipping bits."""
    return dim if clipping.bit_noise_std is None else dim + 1


@dataclass(frozen=True)
class PrivateMean:
    """A round's released mean update and what clipping learnt from it.

    Attributes:
        update: The noisy mean update, float32 [d], on the sum's device.
        clip_norm: The clip norm the round's updates were clipped to.
        next_clip_norm: The next round's clip norm (adaptive clipping moves it).
        unclipped_fraction: Adaptive clipping's noisy estimate of the share of updates within
            the clip norm; None without clipping bits.
    """

    update: torch.Tensor
    clip_norm: float
    next_clip_norm: float
    unclipped_fraction: float | None

    def metrics(self) -> dict[str, float]:
        """`privacy/clip_norm` and, with clipping bits, `privacy/unclipped_fraction`."""
        out = {"privacy/clip_norm": self.clip_norm}
        if self.unclipped_fraction is not None:
            out["privacy/unclipped_fraction"] = self.unclipped_fraction
        return out


def private_mean(
    total: torch.Tensor,
    bit_sum: float,
    round_idx: int,
    mechanism: Mechanism,
    state: NoiseState,
    clipping: Clipping,
    clip_norm: float,
    denominator: int,
) -> tuple[PrivateMean, NoiseState]:
    """Privatizes the clipped sum (and the clipping bits) and divides by the public denominator.

    The mechanism sees the whole sum (every coordinate, touched by a client or not), in units of
    the clip norm: `released_size(d, clipping)` coordinates. With adaptive clipping the bit sum
    rides along as one more coordinate, scaled so that its noise has standard deviation
    `count_noise_std`, and everything is scaled by z / z_delta so that the updates get noise
    multiplier z_delta.

    Guarantees:
        Every client's update has L2 norm <= `clip_norm` and its bit is +-1/2, so the released
        vector (updates / clip_norm, bits scaled) has the sensitivity the accountant assumes,
        and the whole release is the mechanism's: rho = sens(C; k, b)^2 / (2 z^2) under
        user-level replace-with-zero adjacency (Andrew et al. 2019, Thm 1, for the joint
        release of the bits; Denisov et al. 2022 for correlated noise). The denominator is
        public (the cohort size), never a count of the clients' data. Holds only if the noise
        is secret (see `Mechanism`).

    Args:
        total: The round's sum of clipped updates, float32 [d], on the server's device.
        bit_sum: The sum of the clients' clipping bits (1[unclipped] - 1/2).
        round_idx: The round (the mechanism privatizes rounds in order).
        mechanism: The noise; noise multiplier 0 releases the sum as it is.
        state: The mechanism's noise state before this round (consumed, see `privatize`).
        clipping: The clip norm rule (and the bits' noise).
        clip_norm: The round's clip norm.
        denominator: The public denominator (the cohort size).

    Returns:
        The release, and the noise state after this round.
    """
    z = mechanism.noise_multiplier
    z_delta = clipping.value_noise_multiplier(z) if z > 0 else 1.0
    scale = z / z_delta if z > 0 else 1.0
    values = total * (scale / clip_norm)  # float32, one pass
    count_scale = clipping.bit_noise_std
    if count_scale is not None:
        bits = torch.tensor([bit_sum * z_delta / count_scale * scale], device=total.device)
        values = torch.cat([values, bits])
    released, state = mechanism.privatize(values, round_idx, state)
    update = released[: len(total)].mul_(clip_norm / (scale * denominator))
    if count_scale is None:
        return PrivateMean(update, clip_norm, clip_norm, None), state
    noisy_bits = float(released[-1]) / scale * count_scale / z_delta
    unclipped = noisy_bits / denominator + 0.5
    next_norm = clipping.next_norm(clip_norm, unclipped)
    return PrivateMean(update, clip_norm, next_norm, unclipped), state
