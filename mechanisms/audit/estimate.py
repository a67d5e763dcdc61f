"""One-run epsilon estimate from canary statistics (Andrew et al., ICLR 2024).

Andrew, Kairouz, Oh, Oprea, McMahan and Suriyakumar, "One-shot Empirical Privacy Estimation for
Federated Learning" (ICLR 2024), insert canary clients whose updates are random directions and
measure, at the end of one run, the cosine between each canary's direction and the model's
change. The cosines of inserted canaries (`observed`) and of never-inserted directions (`null`)
are each fitted by a Gaussian; the estimate is the epsilon at the run's delta for which the two
fitted Gaussians are (epsilon, delta)-indistinguishable in both directions:

    epsilon = min{eps >= 0 : max(HS_eps(P1 || P0), HS_eps(P0 || P1)) <= delta},
    HS_eps(P || Q) = integral of max(0, p(x) - e^eps q(x)) dx    (the hockey-stick divergence).

For Gaussians HS has a closed form in normal CDFs: {p > e^eps q} is where a quadratic in x is
positive (an interval or the complement of one), or a half-line when the variances are equal.
Estimates above `EPSILON_CAP` are reported as math.inf. A percentile bootstrap over the canaries
gives a confidence interval.

Guarantees:
    None: the estimate is a heuristic lower estimate of the privacy loss, not a bound, and a
    small estimate does not show that a run is private. It assumes the statistics are Gaussian
    (the paper's assumption, justified for random directions in high dimension, where cosines
    concentrate like Gaussians), and it is meaningful only next to the accounted epsilon at the
    same delta (Andrew et al., ICLR 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import erf, log_ndtr

from common.errors import require

EPSILON_CAP = 1e3
"""Largest epsilon searched: a pair of fits still HS > delta apart at 1e3 is reported as inf."""

_LOG_FLOOR = -1e6  # stands in for log(0) inside the root finder, which needs finite values


@dataclass(frozen=True)
class GaussianFit:
    """A normal distribution N(mean, std^2) fitted to a sample.

    Attributes:
        mean: Sample mean (finite).
        std: Sample standard deviation with ddof=1 (finite, >= 0; 0 is a point mass).
    """

    mean: float
    std: float

    def __post_init__(self) -> None:
        require(math.isfinite(self.mean), "mean", f"must be finite, got {self.mean}")
        require(
            math.isfinite(self.std) and self.std >= 0, "std", f"must be finite >= 0, got {self.std}"
        )

    @classmethod
    def of(cls, samples: np.ndarray) -> GaussianFit:
        """Fits the sample mean and the sample std (ddof=1) of `samples`.

        Raises:
            ConfigError: (a ValueError) unless `samples` holds at least 2 values, all finite.
        """
        values = np.asarray(samples, dtype=np.float64).ravel()
        require(values.size >= 2, "samples", f"needs at least 2 values, got {values.size}")
        require(bool(np.isfinite(values).all()), "samples", "must all be finite")
        return cls(float(values.mean()), float(values.std(ddof=1)))


def _log1mexp(x: float) -> float:
    """log(1 - e^x) for x <= 0, accurate at both ends (-inf when x == 0)."""
    if x >= 0:
        return -math.inf
    return math.log(-math.expm1(x)) if x > -math.log(2.0) else math.log1p(-math.exp(x))


def _log_mass(lo: float, hi: float) -> float:
    """Log P(lo < Z < hi) for Z ~ N(0, 1) and lo < hi, without cancellation in either tail."""
    if lo >= 0:
        upper = float(log_ndtr(-lo))
        return upper + _log1mexp(float(log_ndtr(-hi)) - upper)
    if hi <= 0:
        return _log_mass(-hi, -lo)
    mass = 0.5 * float(erf(hi / math.sqrt(2.0)) - erf(lo / math.sqrt(2.0)))
    return math.log(mass) if mass > 0 else -math.inf


def _log_outside(lo: float, hi: float) -> float:
    """Log P(Z < lo or Z > hi) for Z ~ N(0, 1) and lo < hi."""
    return float(np.logaddexp(log_ndtr(lo), log_ndtr(-hi)))


def _log_difference(log_p: float, log_q: float, epsilon: float) -> float:
    """log(P(A) - e^eps Q(A)) from log P(A) and log Q(A); -inf where it is not positive."""
    gap = log_q + epsilon - log_p
    return -math.inf if log_p == -math.inf or gap >= 0 else log_p + _log1mexp(gap)


def _log_hs_equal_std(shift: float, epsilon: float) -> float:
    """Log HS_eps(N(shift, 1) || N(0, 1)), shift != 0: the set is a half-line (Balle-Wang)."""
    m = abs(shift)
    log_p = float(log_ndtr(m / 2 - epsilon / m))
    log_q = float(log_ndtr(-m / 2 - epsilon / m))
    return _log_difference(log_p, log_q, epsilon)


def _roots(a: float, b: float, c: float) -> tuple[float, float] | None:
    """The two real roots (ascending) of a y^2 + b y + c, a != 0, or None if fewer than two."""
    disc = b * b - 4 * a * c
    if disc <= 0:
        return None
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
    r1, r2 = q / a, c / q
    return (r1, r2) if r1 < r2 else (r2, r1)


def _log_hs_quadratic(shift: float, ratio: float, a: float, epsilon: float) -> float:
    """Log HS_eps(N(shift, ratio^2) || N(0, 1)) for ratio != 1, a = (1 - 1 / ratio^2) / 2.

    log p - log q = a y^2 + b y + c, so {p > e^eps q} is outside the roots when a > 0 (P is the
    wider) and between them when a < 0.
    """
    b = shift / ratio**2
    c = -math.log(ratio) - shift**2 / (2 * ratio**2) - epsilon
    roots = _roots(a, b, c)
    if roots is None:  # the quadratic never changes sign: A is everything (a > 0) or nothing
        return _log1mexp(epsilon) if a > 0 and epsilon < 0 else -math.inf
    lo, hi = roots
    p_lo, p_hi = (lo - shift) / ratio, (hi - shift) / ratio
    if a > 0:
        return _log_difference(_log_outside(p_lo, p_hi), _log_outside(lo, hi), epsilon)
    return _log_difference(_log_mass(p_lo, p_hi), _log_mass(lo, hi), epsilon)


def _log_hockey_stick(p: GaussianFit, q: GaussianFit, epsilon: float) -> float:
    """Log HS_eps(P || Q) (-inf when it is 0)."""
    if p == q:
        return _log1mexp(epsilon) if epsilon < 0 else -math.inf
    if p.std == 0 or q.std == 0:  # a point mass against anything else: an atom separates them
        return 0.0
    shift = (p.mean - q.mean) / q.std  # affine map taking Q to N(0, 1); HS is invariant
    if p.std == q.std:
        return _log_hs_equal_std(shift, epsilon)
    ratio = p.std / q.std
    return _log_hs_quadratic(shift, ratio, (ratio - 1) * (ratio + 1) / (2 * ratio**2), epsilon)


def gaussian_hockey_stick(p: GaussianFit, q: GaussianFit, epsilon: float) -> float:
    """HS_eps(P || Q) = integral of max(0, p - e^eps q), in closed form.

    A zero std is a point mass: against a different distribution HS is then 1 (the atom, or its
    complement, separates them).

    Raises:
        ConfigError: (a ValueError) If `epsilon` is not finite.
    """
    require(math.isfinite(epsilon), "epsilon", f"must be finite, got {epsilon}")
    return math.exp(_log_hockey_stick(p, q, epsilon))


def _log_excess(epsilon: float, null: GaussianFit, observed: GaussianFit, delta: float) -> float:
    """Log max(HS_eps(P1 || P0), HS_eps(P0 || P1)) - log delta, floored to stay finite."""
    worst = max(
        _log_hockey_stick(observed, null, epsilon), _log_hockey_stick(null, observed, epsilon)
    )
    return max(worst, _LOG_FLOOR) - math.log(delta)


def epsilon_between(null: GaussianFit, observed: GaussianFit, delta: float) -> float:
    """The smallest eps >= 0 at which the two Gaussians are (eps, delta)-indistinguishable.

    Returns 0.0 when delta is met at eps = 0 and math.inf when it is not met by `EPSILON_CAP`.

    Raises:
        ConfigError: (a ValueError) Unless 0 < delta < 1.
    """
    require(0 < delta < 1, "delta", f"must be in (0, 1), got {delta}")
    if _log_excess(0.0, null, observed, delta) <= 0:
        return 0.0
    if _log_excess(EPSILON_CAP, null, observed, delta) > 0:
        return math.inf
    return float(brentq(_log_excess, 0.0, EPSILON_CAP, args=(null, observed, delta), xtol=1e-12))


@dataclass(frozen=True)
class EpsilonEstimate:
    """An epsilon estimate with its bootstrap interval and the fits it came from.

    Attributes:
        epsilon: Point estimate, `epsilon_between(null, observed, delta)` (may be inf).
        low: Lower end of the percentile bootstrap interval (may be inf).
        high: Upper end (may be inf).
        observed: Fit of the inserted canaries' statistics.
        null: Fit of the never-inserted canaries' statistics.
    """

    epsilon: float
    low: float
    high: float
    observed: GaussianFit
    null: GaussianFit

    def __post_init__(self) -> None:
        for key in ("epsilon", "low", "high"):
            value = getattr(self, key)
            require(value >= 0, key, f"must be >= 0 (or inf), got {value}")
        require(self.low <= self.high, "low", f"must be <= high, got {self.low} > {self.high}")

    def as_metrics(self, prefix: str = "audit/", suffix: str = "") -> dict[str, float]:
        """The estimate as flat metrics; inf stays float('inf').

        Keys: `{prefix}epsilon_estimate{suffix}` and its `_low` and `_high` (the suffix comes
        before them), and `{prefix}observed_mean{suffix}`, `observed_std`, `null_mean`,
        `null_std`.
        """
        values = {
            f"epsilon_estimate{suffix}": self.epsilon,
            f"epsilon_estimate{suffix}_low": self.low,
            f"epsilon_estimate{suffix}_high": self.high,
            f"observed_mean{suffix}": self.observed.mean,
            f"observed_std{suffix}": self.observed.std,
            f"null_mean{suffix}": self.null.mean,
            f"null_std{suffix}": self.null.std,
        }
        return {f"{prefix}{name}": float(value) for name, value in values.items()}


def _resampled_fits(
    samples: np.ndarray, rng: np.random.Generator, bootstrap: int
) -> list[GaussianFit]:
    """`bootstrap` fits of resamples (with replacement, same size) of `samples`, vectorised."""
    draws = samples[rng.integers(0, samples.size, size=(bootstrap, samples.size))]
    means, stds = draws.mean(axis=1), draws.std(axis=1, ddof=1)
    return [GaussianFit(float(m), float(s)) for m, s in zip(means, stds, strict=True)]


def estimate_epsilon(
    observed: np.ndarray,
    null: np.ndarray,
    delta: float,
    rng: np.random.Generator,
    bootstrap: int = 200,
    confidence: float = 0.95,
) -> EpsilonEstimate:
    """Estimates epsilon at `delta` from canary statistics, with a percentile bootstrap interval.

    Args:
        observed: One statistic per inserted canary (at least 2, finite).
        null: One statistic per never-inserted canary direction (at least 2, finite).
        delta: The run's delta, in (0, 1).
        rng: Source of the bootstrap resamples.
        bootstrap: Number of resamples B (>= 1); observed and null are resampled independently.
        confidence: Coverage of the interval, in (0, 1): the (1 -+ confidence) / 2 quantiles of
            the B estimates (order statistics, so infinite estimates are kept as inf).

    Returns:
        The point estimate, its interval and the two fits.

    Raises:
        ConfigError: (a ValueError) On any invalid argument.
    """
    require(bootstrap >= 1, "bootstrap", f"must be >= 1, got {bootstrap}")
    require(0 < confidence < 1, "confidence", f"must be in (0, 1), got {confidence}")
    require(0 < delta < 1, "delta", f"must be in (0, 1), got {delta}")
    observed_fit, null_fit = GaussianFit.of(observed), GaussianFit.of(null)
    observed_values = np.asarray(observed, dtype=np.float64).ravel()
    null_values = np.asarray(null, dtype=np.float64).ravel()
    pairs = zip(
        _resampled_fits(null_values, rng, bootstrap),
        _resampled_fits(observed_values, rng, bootstrap),
        strict=True,
    )
    estimates = np.array([epsilon_between(n, o, delta) for n, o in pairs])
    tail = (1 - confidence) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail], method="inverted_cdf")
    return EpsilonEstimate(
        epsilon=epsilon_between(null_fit, observed_fit, delta),
        low=float(low),
        high=float(high),
        observed=observed_fit,
        null=null_fit,
    )
