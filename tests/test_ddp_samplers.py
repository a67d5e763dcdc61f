"""The discrete Gaussian and Skellam samplers against their exact laws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mechanisms.ddp import discrete_gaussian, skellam


def exact_discrete_gaussian(sigma: float, support: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(values, pmf) of N_Z(0, sigma**2), normalised over a support far beyond its mass."""
    values = np.arange(-support, support + 1)
    weights = np.exp(-(values.astype(np.float64) ** 2) / (2 * sigma**2))
    return values, weights / weights.sum()


def chi_square_pvalue(samples: np.ndarray, values: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square goodness of fit, the bins with expected count < 5 merged into the tails."""
    n = samples.size
    keep = pmf * n >= 5
    low, high = values[keep].min(), values[keep].max()
    inner = np.arange(low, high + 1)
    observed = np.array(
        [np.sum(samples < low), *[np.sum(samples == v) for v in inner], np.sum(samples > high)]
    )
    expected = n * np.array(
        [pmf[values < low].sum(), *[pmf[values == v][0] for v in inner], pmf[values > high].sum()]
    )
    used = expected > 0
    return float(stats.chisquare(observed[used], expected[used] * n / expected[used].sum())[1])


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_discrete_gaussian_mean_and_exact_variance(sigma: float) -> None:
    values, pmf = exact_discrete_gaussian(sigma)
    variance = float(np.sum(pmf * values.astype(np.float64) ** 2))
    if sigma == 0.5:  # well below sigma**2 for small sigma
        assert variance == pytest.approx(0.21501, abs=1e-4)
    draws = discrete_gaussian((200_000,), sigma, np.random.default_rng(11))
    assert draws.dtype == np.int64
    se = np.sqrt(variance / draws.size)
    assert abs(draws.mean()) < 5 * se
    # Var of the sample variance: (mu4 - var**2) / n, mu4 from the exact pmf.
    mu4 = float(np.sum(pmf * values.astype(np.float64) ** 4))
    assert abs(draws.var() - variance) < 5 * np.sqrt((mu4 - variance**2) / draws.size)


@pytest.mark.parametrize("sigma", [0.5, 1.5, 4.0])
def test_discrete_gaussian_pmf_chi_square(sigma: float) -> None:
    values, pmf = exact_discrete_gaussian(sigma)
    draws = discrete_gaussian((100_000,), sigma, np.random.default_rng(5))
    assert chi_square_pvalue(draws, values, pmf) > 1e-3


def test_discrete_gaussian_zero_sigma_and_bad_sigma() -> None:
    rng = np.random.default_rng(0)
    assert np.array_equal(discrete_gaussian((3, 4), 0.0, rng), np.zeros((3, 4), dtype=np.int64))
    for bad in (-1.0, float("nan"), float("inf"), 2.0**60):
        with pytest.raises(ValueError, match="sigma"):
            discrete_gaussian((2,), bad, rng)


def test_discrete_gaussian_tiny_sigma_is_zero() -> None:
    for sigma in (5e-324, 1e-200, 0.01):
        draws = discrete_gaussian((1000,), sigma, np.random.default_rng(1))
        assert np.array_equal(draws, np.zeros(1000, dtype=np.int64))


def test_discrete_gaussian_large_sigma_variance() -> None:
    sigma = 1e6
    draws = discrete_gaussian((100_000,), sigma, np.random.default_rng(2)).astype(np.float64)
    assert draws.std() == pytest.approx(sigma, rel=0.02)
    assert abs(draws.mean()) < 5 * sigma / np.sqrt(draws.size)


@pytest.mark.parametrize("mu", [0.7, 4.0, 50.0])
def test_skellam_variance_and_pmf(mu: float) -> None:
    draws = skellam((150_000,), mu, np.random.default_rng(3))
    assert draws.dtype == np.int64
    assert abs(draws.mean()) < 5 * np.sqrt(mu / draws.size)
    assert draws.var() == pytest.approx(mu, rel=0.03)
    values = np.arange(-1000, 1001)
    pmf = stats.skellam.pmf(values, mu / 2, mu / 2)
    assert chi_square_pvalue(draws, values, pmf) > 1e-3


def test_skellam_zero_and_bad_mu() -> None:
    rng = np.random.default_rng(0)
    assert np.array_equal(skellam((5,), 0.0, rng), np.zeros(5, dtype=np.int64))
    for bad in (-0.1, float("nan"), 1e19):
        with pytest.raises(ValueError, match="mu"):
            skellam((2,), bad, rng)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    scale=st.floats(0.0, 20.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_samplers_shape_dtype_and_determinism(shape: tuple[int, ...], scale: float, seed: int):
    for sampler in (discrete_gaussian, skellam):
        first = sampler(shape, scale, np.random.default_rng(seed))
        again = sampler(shape, scale, np.random.default_rng(seed))
        assert first.shape == shape
        assert first.dtype == np.int64
        assert np.array_equal(first, again)
