"""engine/participation.py: cohort selection and the participation bound."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from engine.errors import ConfigError
from engine.participation import (
    ParticipationBound,
    ParticipationPolicy,
    UniformParticipation,
    sample_available,
)

# Every ParticipationPolicy implementation, by cohort size. Add new ones here.
POLICIES: list[tuple[str, Callable[[int], ParticipationPolicy]]] = [
    ("uniform", lambda size: UniformParticipation(cohort_size=size)),
]


@pytest.fixture(params=[f for _, f in POLICIES], ids=[n for n, _ in POLICIES])
def make_policy(request) -> Callable[[int], ParticipationPolicy]:
    return request.param


def _mask(num_clients: int, num_available: int, seed: int) -> np.ndarray:
    mask = np.zeros(num_clients, dtype=bool)
    mask[np.random.default_rng(seed).permutation(num_clients)[:num_available]] = True
    return mask


def _check_cohort(ids: np.ndarray, mask: np.ndarray, size: int) -> None:
    assert isinstance(ids, np.ndarray)
    assert ids.dtype == np.int64
    assert ids.ndim == 1
    assert len(ids) == min(size, int(mask.sum()))
    assert np.all(np.diff(ids) > 0)  # sorted and distinct
    if len(ids):
        assert ids.min() >= 0
        assert ids.max() < len(mask)
        assert mask[ids].all()


# -- contract, every ParticipationPolicy -------------------------------------------------------


@pytest.mark.parametrize(
    ("num_clients", "num_available", "cohort_size"),
    [
        (1, 1, 1),
        (10, 10, 3),
        (10, 0, 3),
        (10, 2, 5),  # fewer available than the cohort
        (1000, 1000, 100),
        (1000, 900, 100),  # dense: rejection path
        (1000, 30, 10),  # sparse: flatnonzero path
        (1000, 30, 30),
        (1000, 30, 31),
    ],
)
def test_contract_select(make_policy, num_clients, num_available, cohort_size):
    policy = make_policy(cohort_size)
    assert policy.cohort_size == cohort_size
    mask = _mask(num_clients, num_available, seed=num_clients + num_available)
    for round_idx in range(3):
        ids = policy.select(round_idx, 60.0 * round_idx, mask, np.random.default_rng(round_idx))
        _check_cohort(ids, mask, cohort_size)
        again = make_policy(cohort_size).select(
            round_idx, 60.0 * round_idx, mask, np.random.default_rng(round_idx)
        )
        np.testing.assert_array_equal(ids, again)


def test_contract_select_does_not_modify_the_mask(make_policy):
    mask = _mask(500, 400, seed=1)
    before = mask.copy()
    make_policy(50).select(0, 0.0, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(mask, before)


def test_contract_bound(make_policy):
    bound = make_policy(10).bound
    assert isinstance(bound, ParticipationBound)
    assert bound.min_separation >= 1
    assert bound.max_participations is None or bound.max_participations >= 1


def test_uniform_policy_bound_is_unbounded():
    assert UniformParticipation(cohort_size=5).bound == ParticipationBound(None, 1)


def test_uniform_policy_rounds_differ():
    policy = UniformParticipation(cohort_size=20)
    mask = np.ones(1000, dtype=bool)
    a = policy.select(0, 0.0, mask, np.random.default_rng(0))
    b = policy.select(1, 0.0, mask, np.random.default_rng(1))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("cohort_size", [0, -1])
def test_uniform_policy_validation(cohort_size):
    with pytest.raises(ConfigError) as info:
        UniformParticipation(cohort_size=cohort_size)
    assert info.value.key == "cohort_size"


# -- sample_available --------------------------------------------------------------------------


class _Recorder:
    """Wraps a Generator and records which of its methods were called."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.rng, name)


def _sample(mask: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    recorder = _Recorder(np.random.default_rng(seed))
    ids = sample_available(mask, size, cast(np.random.Generator, recorder))
    return ids, recorder.calls


@st.composite
def sparse_masks(draw: st.DrawFn) -> np.ndarray:
    """Masks with fewer than 5% of the clients available."""
    n = draw(st.integers(21, 3000))
    available = draw(st.integers(1, -(-n // 20) - 1))
    return _mask(n, available, draw(st.integers(0, 2**32 - 1)))


@st.composite
def dense_masks(draw: st.DrawFn) -> np.ndarray:
    """Masks with at least 5% of the clients available."""
    n = draw(st.integers(1, 3000))
    available = draw(st.integers(-(-n // 20), n))
    return _mask(n, available, draw(st.integers(0, 2**32 - 1)))


@pytest.mark.parametrize(
    ("masks", "path", "other"),
    [(sparse_masks, "choice", "integers"), (dense_masks, "integers", "choice")],
)
def test_sample_available_takes_the_right_path(masks, path, other):
    @given(mask=masks(), data=st.data(), seed=st.integers(0, 2**32 - 1))
    @settings(max_examples=100, deadline=None)
    def check(mask, data, seed):
        size = data.draw(st.integers(0, len(mask)))
        ids, calls = _sample(mask, size, seed)
        _check_cohort(ids, mask, size)
        if len(ids):
            assert path in calls and other not in calls
        np.testing.assert_array_equal(ids, _sample(mask, size, seed)[0])

    check()


@given(
    mask=st.lists(st.booleans(), min_size=0, max_size=200).map(lambda m: np.array(m, dtype=bool)),
    size=st.integers(0, 250),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=150, deadline=None)
def test_sample_available_arbitrary_masks(mask, size, seed):
    ids = sample_available(mask, size, np.random.default_rng(seed))
    _check_cohort(ids, mask, size)


def test_sample_available_takes_everyone_when_size_reaches_availability():
    for available in (1, 30, 900, 1000):
        mask = _mask(1000, available, seed=available)
        ids = sample_available(mask, available + 5, np.random.default_rng(0))
        np.testing.assert_array_equal(ids, np.flatnonzero(mask))


def test_sample_available_none_available():
    ids = sample_available(np.zeros(100, dtype=bool), 10, np.random.default_rng(0))
    assert ids.dtype == np.int64
    assert ids.shape == (0,)


def test_sample_available_inclusion_is_uniform_on_the_rejection_path():
    mask = _mask(50, 45, seed=3)
    size, draws = 10, 8000
    rng = np.random.default_rng(2024)
    _, calls = _sample(mask, size, 0)
    assert "integers" in calls  # this mask takes the rejection path
    counts = np.zeros(50, dtype=np.int64)
    for _ in range(draws):
        counts[sample_available(mask, size, rng)] += 1
    assert counts[~mask].sum() == 0
    observed = counts[mask]
    assert observed.sum() == size * draws
    # Each available client joins with probability size / 45.
    assert stats.chisquare(observed).pvalue > 1e-4


def test_sample_available_subsets_are_uniform_on_the_rejection_path():
    # All C(6, 2) = 15 pairs of the available clients are equally likely.
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    _, calls = _sample(mask, 2, 0)
    assert "integers" in calls
    pairs = {p: i for i, p in enumerate(itertools.combinations(np.flatnonzero(mask).tolist(), 2))}
    counts = np.zeros(len(pairs), dtype=np.int64)
    rng = np.random.default_rng(7)
    for _ in range(6000):
        a, b = sample_available(mask, 2, rng).tolist()
        counts[pairs[(a, b)]] += 1
    assert stats.chisquare(counts).pvalue > 1e-4


def test_sample_available_inclusion_is_uniform_on_the_fallback_path():
    mask = _mask(1000, 20, seed=5)
    rng = np.random.default_rng(11)
    counts = np.zeros(1000, dtype=np.int64)
    for _ in range(3000):
        counts[sample_available(mask, 5, rng)] += 1
    assert counts[~mask].sum() == 0
    assert stats.chisquare(counts[mask]).pvalue > 1e-4


# -- ParticipationBound ------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "b"), [(None, 1), (1, 1), (5, 3), (100, 1000)])
def test_bound_accepts_valid_values(k, b):
    bound = ParticipationBound(max_participations=k, min_separation=b)
    assert bound.max_participations == k
    assert bound.min_separation == b


@pytest.mark.parametrize(
    ("k", "b", "key"),
    [(0, 1, "max_participations"), (-2, 1, "max_participations"), (None, 0, "min_separation")],
)
def test_bound_validation_names_the_key(k, b, key):
    with pytest.raises(ConfigError) as info:
        ParticipationBound(max_participations=k, min_separation=b)
    assert info.value.key == key
