"""Samplers of the discrete noise shares: the discrete Gaussian and the Skellam distribution.

Both are vectorised over the coordinates and take the numpy Generator to draw from (one per
client and round: the caller seeds it by (seed, round, client id)).
"""

from __future__ import annotations

import math

import numpy as np

# Largest discrete Gaussian sigma: the discrete Laplace proposals stay far below 2**63.
MAX_SIGMA = 2.0**52
# Largest Skellam variance: each Poisson(mu / 2) stays within numpy's int64 Poisson sampler.
MAX_MU = 1e18


def _size(shape: tuple[int, ...]) -> int:
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return math.prod(shape)


def discrete_gaussian(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Independent draws from the discrete Gaussian N_Z(0, sigma**2): P(x) ~ exp(-x**2 / 2s**2).

    Canonne, Kamath, Steinke 2020 ("The Discrete Gaussian for Differential Privacy", Algorithm
    3): propose Y from the discrete Laplace with scale t = floor(sigma) + 1 (the difference of
    two geometric variables), accept with probability exp(-(|Y| - sigma**2 / t)**2 / (2
    sigma**2)). Drawn in batches; the rejected coordinates are drawn again.

    Guarantees:
        The output has exactly the discrete Gaussian law (Canonne, Kamath, Steinke 2020,
        Algorithm 3 and its analysis), up to the floating-point evaluation of the geometric
        inversion and of the acceptance probability (not their bit-exact rational arithmetic).
        The distributed guarantee (Kairouz, Liu, Steinke 2021) assumes each client's share is
        drawn independently from its own generator, as the encoder does.

    Args:
        shape: Output shape.
        sigma: The scale parameter (>= 0, <= 2**52); 0 returns zeros. The variance is below sigma**2
            for small sigma (0.215 at sigma = 0.5), within 1e-6 of it from sigma = 1.
        rng: The generator to draw from.

    Returns:
        int64 array of `shape`.

    Raises:
        ValueError: If sigma is negative, not finite or above 2**52.
    """
    if not (math.isfinite(sigma) and 0 <= sigma <= MAX_SIGMA):
        raise ValueError(f"sigma must be in [0, 2**52], got {sigma}")
    size = _size(shape)
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or size == 0:
        return out.reshape(shape)
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # geometric success probability: P(Y = y) ~ exp(-|y| / t)
    shift = sigma * sigma / t
    filled = 0
    while filled < size:
        need = size - filled
        batch = need + need // 2 + 16  # acceptance is about 0.7 or more
        y = rng.geometric(p, batch) - rng.geometric(p, batch)
        with np.errstate(over="ignore"):  # tiny sigma: the exponent is -inf, accepted never
            exponent = -0.5 * ((np.abs(y) - shift) / sigma) ** 2
        accept = rng.random(batch) < np.exp(exponent)
        kept = y[accept][:need]
        out[filled : filled + kept.size] = kept
        filled += kept.size
    return out.reshape(shape)


def skellam(shape: tuple[int, ...], mu: float, rng: np.random.Generator) -> np.ndarray:
    """Independent draws from the symmetric Skellam distribution Sk(mu / 2, mu / 2), variance mu.

    Each draw is Poisson(mu / 2) - Poisson(mu / 2).

    Guarantees:
        Exactly Skellam (numpy's Poisson sampler is exact in law). Sums of independent shares
        are Skellam again (Sk(a, a) + Sk(b, b) = Sk(a + b, a + b)), which the Skellam
        mechanism's accounting assumes (Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for
        Differentially Private Federated Learning").

    Args:
        shape: Output shape.
        mu: The variance (>= 0, <= 1e18); 0 returns zeros.
        rng: The generator to draw from.

    Returns:
        int64 array of `shape`.

    Raises:
        ValueError: If mu is negative, not finite or above 1e18.
    """
    if not (math.isfinite(mu) and 0 <= mu <= MAX_MU):
        raise ValueError(f"mu must be in [0, 1e18], got {mu}")
    size = _size(shape)
    if mu == 0 or size == 0:
        return np.zeros(shape, dtype=np.int64)
    first = rng.poisson(mu / 2, size).astype(np.int64)
    return (first - rng.poisson(mu / 2, size).astype(np.int64)).reshape(shape)
