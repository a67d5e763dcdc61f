"""common/rng.py: seeded generators, counter-based uniforms and lognormal counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from common.rng import Stream, generator, lognormal_counts, uniform

# -- generator ---------------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**32 - 1),
    stream=st.sampled_from(list(Stream)),
    keys=st.lists(st.integers(0, 2**31), max_size=3),
)
@settings(max_examples=50, deadline=None)
def test_generator_is_a_pure_function_of_its_arguments(seed, stream, keys):
    a = generator(seed, stream, *keys).random(8)
    b = generator(seed, stream, *keys).random(8)
    np.testing.assert_array_equal(a, b)


def test_generator_returns_a_fresh_generator_each_call():
    g1 = generator(3, Stream.SELECTION, 7)
    g1.random(100)  # advancing one must not advance the next
    g2 = generator(3, Stream.SELECTION, 7)
    np.testing.assert_array_equal(g2.random(4), generator(3, Stream.SELECTION, 7).random(4))


def test_generator_streams_seeds_and_keys_are_independent():
    draws = {}
    for seed in (0, 1):
        for stream in Stream:
            for keys in ((0, 0), (0, 1), (1, 0), (5, 9)):
                draws[(seed, stream, keys)] = generator(seed, stream, *keys).random(16)
    values = list(draws.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not np.array_equal(values[i], values[j])
    # Independent-looking: two streams of one seed are uncorrelated.
    a = generator(0, Stream.CLIENT_DATA, 1).random(50_000)
    b = generator(0, Stream.CLIENT_TRAIN, 1).random(50_000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03


# -- uniform -----------------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**32 - 1),
    stream=st.sampled_from(list(Stream)),
    ids=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=50),
)
@settings(max_examples=100, deadline=None)
def test_uniform_is_open_unit_interval_deterministic_and_vectorised(seed, stream, ids):
    arr = np.array(ids, dtype=np.int64)
    u = uniform(seed, stream, arr)
    assert u.dtype == np.float64
    assert u.shape == arr.shape
    assert np.all(u > 0.0)
    assert np.all(u < 1.0)
    np.testing.assert_array_equal(u, uniform(seed, stream, arr))
    # The same value for an id whether computed alone or in a batch.
    for i, client in enumerate(ids):
        assert uniform(seed, stream, np.array([client]))[0] == u[i]
        assert uniform(seed, stream, np.array(client)) == u[i]


def test_uniform_keeps_the_shape_of_ids():
    ids = np.arange(24).reshape(2, 3, 4)
    u = uniform(1, Stream.CLIENT_SIZE, ids)
    assert u.shape == (2, 3, 4)
    np.testing.assert_array_equal(u.ravel(), uniform(1, Stream.CLIENT_SIZE, ids.ravel()))


def test_uniform_differs_across_seeds_and_streams():
    ids = np.arange(1000)
    columns = [uniform(seed, stream, ids) for seed in (0, 1, 2, 12345) for stream in Stream]
    for i in range(len(columns)):
        for j in range(i + 1, len(columns)):
            # Distinct streams share (almost) no values.
            assert np.mean(columns[i] == columns[j]) < 0.01
            assert abs(np.corrcoef(columns[i], columns[j])[0, 1]) < 0.15


def test_uniform_is_roughly_uniform_and_uncorrelated():
    ids = np.arange(100_000)
    u = uniform(7, Stream.CLIENT_SIZE, ids)
    assert abs(u.mean() - 0.5) < 0.005
    assert abs(u.var() - 1 / 12) < 0.002
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    # Neighbouring ids are not correlated; nor are two streams of one client.
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    other = uniform(7, Stream.CLIENT_DATA, ids)
    assert abs(np.corrcoef(u, other)[0, 1]) < 0.02
    # Strided ids (e.g. a shard of the population) are uniform too.
    strided = uniform(7, Stream.CLIENT_SIZE, np.arange(0, 64 * 20_000, 64))
    assert stats.kstest(strided, "uniform").pvalue > 1e-4


# An independent inverse of SplitMix64's finaliser, to construct ids whose hash has every top bit
# set: the largest output `uniform` can produce, which must still be below 1.
_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _splitmix(z: int) -> int:
    z = (z + _GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _unxorshift(y: int, shift: int) -> int:
    x = y
    for _ in range(64 // shift + 1):
        x = y ^ (x >> shift)
    return x


def _unsplitmix(out: int) -> int:
    z = _unxorshift(out, 31)
    z = (z * pow(_M2, -1, 1 << 64)) & _MASK
    z = _unxorshift(z, 27)
    z = (z * pow(_M1, -1, 1 << 64)) & _MASK
    z = _unxorshift(z, 30)
    return (z - _GAMMA) & _MASK


def _id_with_top_hash(seed: int, stream: Stream) -> int:
    key = _splitmix(seed * 1_000_003 + int(stream))
    for low in range(1 << 11):  # the 11 bits `uniform` discards are free
        pre = _unsplitmix(_MASK ^ low)
        client = ((pre ^ key) * pow(_GAMMA, -1, 1 << 64)) & _MASK
        if client < 2**63:
            return client
    raise AssertionError("no int64 id found")


def test_inverse_splitmix_reference_is_an_inverse():
    for z in (0, 1, 12345, _MASK, 0xDEADBEEF << 20):
        assert _unsplitmix(_splitmix(z)) == z


@pytest.mark.parametrize("seed", [0, 1, 99])
@pytest.mark.parametrize("stream", [Stream.CLIENT_SIZE, Stream.CLIENT_DATA])
def test_uniform_stays_below_one_at_its_largest_hash(seed, stream):
    client = _id_with_top_hash(seed, stream)
    u = uniform(seed, stream, np.array([client], dtype=np.int64))
    assert 0.0 < u[0] < 1.0
    assert u[0] > 1.0 - 1e-15
    counts = lognormal_counts(seed, stream, np.array([client]), 20.0, 1.0, 2, 1000)
    assert counts[0] == 1000


# -- lognormal_counts --------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**31),
    median=st.floats(0.5, 1e4),
    sigma=st.floats(0.0, 4.0),
    low=st.integers(0, 100),
    extra=st.integers(0, 10_000),
)
@settings(max_examples=60, deadline=None)
def test_lognormal_counts_respect_bounds(seed, median, sigma, low, extra):
    high = low + extra
    ids = np.arange(500)
    counts = lognormal_counts(seed, Stream.CLIENT_SIZE, ids, median, sigma, low, high)
    assert counts.dtype == np.int64
    assert counts.shape == ids.shape
    assert counts.min() >= low
    assert counts.max() <= high
    np.testing.assert_array_equal(
        counts, lognormal_counts(seed, Stream.CLIENT_SIZE, ids, median, sigma, low, high)
    )


def test_lognormal_counts_with_zero_sigma_are_the_rounded_median():
    ids = np.arange(100)
    counts = lognormal_counts(0, Stream.CLIENT_SIZE, ids, 20.4, 0.0, 1, 1000)
    np.testing.assert_array_equal(counts, np.full(100, 20))
    clipped = lognormal_counts(0, Stream.CLIENT_SIZE, ids, 20.4, 0.0, 25, 1000)
    np.testing.assert_array_equal(clipped, np.full(100, 25))


@pytest.mark.parametrize(("median", "sigma"), [(20.0, 1.0), (200.0, 0.5), (1000.0, 2.0)])
def test_lognormal_counts_median_and_spread(median, sigma):
    ids = np.arange(100_000)
    counts = lognormal_counts(3, Stream.CLIENT_SIZE, ids, median, sigma, 0, 10**9)
    assert abs(np.median(counts) - median) <= max(1.0, 0.03 * median)
    positive = counts[counts > 0]
    # Log-scale spread close to sigma (rounding blurs it a little at small medians).
    assert abs(np.log(positive).std() - sigma) < 0.05 * sigma + 0.02
    # Heavy right tail: mean above the median, as for a lognormal (mean = median e^{s^2/2}).
    expected_mean = median * np.exp(sigma**2 / 2)
    assert abs(counts.mean() - expected_mean) < 0.1 * expected_mean
