"""The parameters of distributed DP with secure aggregation, and the choice of scale and noise.

Each client clips its update to `clip_norm`, rotates it (randomized Hadamard, padded to
d' = 2**ceil(log2 d)), multiplies by the scale s, rounds to integers (conditionally: retried
while the rounded norm exceeds the inflated bound), adds its noise share and reduces mod
m = 2**bits. The server sums mod m, maps to [-m/2, m/2), divides by s and rotates back.

`choose` picks s and the noise share. With z the noise multiplier, c the clip norm, N the cohort
size and n_min the minimum number of survivors:

* noise: each share has variance v = (z c s)**2 / n_min in the integer domain, so any n_min
  surviving shares add up to the central Gaussian's variance (z c s)**2, i.e. (z c)**2 once
  decoded;
* no wrap-around: every coordinate of the aggregate of up to N survivors, in the rotated
  domain, has variance at most

      var(s) = (N c s)**2 / d'  +  N / 4  +  N v
               signal             rounding  noise

  (signal: the sum of N clipped updates has norm <= N c, spread evenly over d' coordinates by
  the rotation, as in the reference's default `sqrtn_norm_growth=False`; rounding: each
  client's stochastic rounding adds variance <= 1/4 per coordinate), and we require
  k_stddevs * sqrt(var(s)) <= m / 2 = 2**(bits - 1). This is Kairouz, Liu, Steinke 2021,
  Sec. 4.4, and Google's `heuristic_scale_factor` with rho = 1; the largest such s is closed
  form: s**2 = ((2**(bits-1) / k)**2 - N / 4) / (c**2 (N**2 / d' + N z**2 / n_min)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.errors import ConfigError, require
from mechanisms.ddp.rounding import inflated_norm_bound

NOISES = ("gaussian", "skellam")

# Above this, a sum of 2**bits-bit words overflows int64 before its reduction mod m.
MAX_BITS = 62

# The smallest useful scaled clip norm: below one integer unit, a client's clipped update is
# smaller than the rounding grid and the release is rounding error, not signal plus DP noise.
MIN_SCALED_CLIP = 1.0


@dataclass(frozen=True)
class DdpParams:
    """What a team fixes before launch; `choose` derives the scale and the noise share.

    Attributes:
        bits: log2 of the SecAgg modulus m.
        cohort_size: N, the clients selected per round (all may survive).
        min_survivors: n_min, the fewest survivors with which a round is released.
        clip_norm: c, the L2 clip norm of an update (model units).
        dim: d, the model's number of parameters (padded to d' for the rotation).
        noise_multiplier: z: the released aggregate carries noise of std >= z c per coordinate.
        noise: "gaussian" (distributed discrete Gaussian) or "skellam".
        k_stddevs: how many standard deviations of the aggregate must fit in m / 2.
        beta: conditional rounding's failure probability per try (the papers' e**-0.5).
    """

    bits: int
    cohort_size: int
    min_survivors: int
    clip_norm: float
    dim: int
    noise_multiplier: float
    noise: str = "skellam"
    k_stddevs: float = 4.0
    beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        require(self.noise in NOISES, "noise", f"must be one of {NOISES}, got {self.noise!r}")
        require(2 <= self.bits <= MAX_BITS, "bits", f"must be in 2..{MAX_BITS}, got {self.bits}")
        require(self.cohort_size >= 1, "cohort_size", f"must be >= 1, got {self.cohort_size}")
        require(
            1 <= self.min_survivors <= self.cohort_size,
            "min_survivors",
            f"must be in 1..cohort_size ({self.cohort_size}), got {self.min_survivors}",
        )
        for key, value in (
            ("clip_norm", self.clip_norm),
            ("noise_multiplier", self.noise_multiplier),
            ("k_stddevs", self.k_stddevs),
        ):
            require(math.isfinite(value) and value > 0, key, f"must be finite and > 0, got {value}")
        require(self.dim >= 1, "dim", f"must be >= 1, got {self.dim}")
        require(0 <= self.beta < 1, "beta", f"must be in [0, 1), got {self.beta}")

    @property
    def padded_dim(self) -> int:
        """The padded length d' = 2**ceil(log2 d) of the rotated vector."""
        return 1 << (self.dim - 1).bit_length()

    @property
    def modulus(self) -> int:
        """The SecAgg modulus m = 2**bits."""
        return 1 << self.bits


@dataclass(frozen=True)
class DdpChoice:
    """The scale and noise share that `choose` picked, with what the accounting needs.

    All lengths but the error variances are in the integer domain (after scaling by s).

    Attributes:
        scale: s.
        local_noise: per client: sigma of the discrete Gaussian N_Z(0, sigma**2), or the Skellam
            variance mu (the share is Sk(mu / 2, mu / 2)).
        local_noise_std: per client: the std of the share as calibrated, sqrt((z c s)**2 / n_min).
        l2_sensitivity: Delta_2, the inflated L2 bound that conditional rounding enforces.
        l1_sensitivity: Delta_1 = Delta_2 * min(Delta_2, sqrt(d')) (integer vectors).
        error_variance: per coordinate, model units: the decoded release's error variance
            (noise plus rounding) with n_min survivors.
        error_variance_full_cohort: the same with all N clients surviving.
        central_variance: (z c)**2, the central Gaussian mechanism's per-coordinate variance.
    """

    scale: float
    local_noise: float
    local_noise_std: float
    l2_sensitivity: float
    l1_sensitivity: float
    error_variance: float
    error_variance_full_cohort: float
    central_variance: float

    @property
    def expected_error_ratio(self) -> float:
        """Error variance with n_min survivors over the central Gaussian's (>= 1)."""
        return self.error_variance / self.central_variance


def l1_norm_bound(l2_bound: float, padded_dim: int) -> float:
    """L1 bound of an integer vector of L2 norm <= l2_bound in dimension d'.

    Guarantees:
        ||x||_1 <= sqrt(d') ||x||_2 (Cauchy-Schwarz) and, for integer x, ||x||_1 <= ||x||_2**2
        (|x_i| <= x_i**2); as in Agarwal, Kairouz, Liu 2021 and Google's reference.
    """
    return l2_bound * min(l2_bound, math.sqrt(padded_dim))


def choose(params: DdpParams) -> DdpChoice:
    """The largest scale s for which the aggregate fits the group, and the noise share at s.

    See the module docstring for the bound. Keys of the errors are relative to the mechanism's
    config group (the caller prefixes `mechanism`).

    Guarantees:
        Privacy does not depend on this choice (any s > 0 is accounted exactly by
        `mechanisms.ddp.accounting`); it bounds the wrap-around: with at most N survivors, each
        coordinate of the aggregate stays within k_stddevs standard deviations of m / 2
        (Kairouz, Liu, Steinke 2021, Sec. 4.4, assuming the rotated aggregate is sub-Gaussian
        with the variance above), and any n_min survivors' shares carry the central noise.

    Raises:
        ConfigError: `bits` when even the rounding of N clients, with the signal at the
            smallest useful scale (c s = 1), does not fit in m / 2; `noise_multiplier` when the
            noise shares at z leave a scale with c s < 1 (the noise does not fit the group).
    """
    n, n_min = params.cohort_size, params.min_survivors
    c, z = params.clip_norm, params.noise_multiplier
    d_pad = params.padded_dim
    budget = (2.0 ** (params.bits - 1) / params.k_stddevs) ** 2  # max variance per coordinate
    signal_and_noise = c**2 * (n**2 / d_pad + n * z**2 / n_min)  # var(s) = s**2 this + N / 4
    floor = n / 4 + MIN_SCALED_CLIP**2 * n**2 / d_pad  # rounding, and the signal at c s = 1
    if budget <= floor:
        raise ConfigError(
            "bits",
            f"{params.bits} bits are too few for a cohort of {n} at k_stddevs="
            f"{params.k_stddevs:g} (dimension {params.dim}): {params.k_stddevs:g} stddevs of "
            f"the rounded sum need more than 2**{params.bits - 1}; raise bits or lower k_stddevs",
        )
    scale = math.sqrt((budget - n / 4) / signal_and_noise)
    if c * scale < MIN_SCALED_CLIP:
        raise ConfigError(
            "noise_multiplier",
            f"z={z:g}: the noise shares of {n} clients (each for {n_min} survivors) do not fit "
            f"in {params.bits} bits (scaled clip norm {c * scale:.3g} < {MIN_SCALED_CLIP:g}); "
            "raise bits or min_survivors, or lower the noise multiplier",
        )
    variance = (z * c * scale) ** 2 / n_min
    std = math.sqrt(variance)
    l2 = inflated_norm_bound(c * scale, d_pad, params.beta)
    central = (z * c) ** 2
    return DdpChoice(
        scale=scale,
        local_noise=std if params.noise == "gaussian" else variance,
        local_noise_std=std,
        l2_sensitivity=l2,
        l1_sensitivity=l1_norm_bound(l2, d_pad),
        error_variance=central + n_min / (4 * scale**2),
        error_variance_full_cohort=central * n / n_min + n / (4 * scale**2),
        central_variance=central,
    )
