"""Sensitivity of tree, banded, Toeplitz and general encoders against brute force and goldens."""

from __future__ import annotations

import itertools

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms.participation import participations_that_fit
from mechanisms.sensitivity import (
    banded_sensitivity_squared,
    brute_force_sensitivity_squared,
    general_sensitivity_squared,
    toeplitz_sensitivity_squared,
)
from mechanisms.tree_sensitivity import tree_sensitivity_squared


def tree_matrix(n: int, restart_every: int | None = None) -> np.ndarray:
    """One row per complete dyadic interval of each segment, built from the definition."""
    seg = restart_every or max(n, 1)
    rows = []
    for start in range(0, n, seg):
        length = min(seg, n - start)
        size = 1
        while size <= length:
            for j in range(length // size):
                row = np.zeros(n)
                row[start + j * size : start + (j + 1) * size] = 1.0
                rows.append(row)
            size *= 2
    return np.array(rows).reshape(-1, n)


def patterns(n: int, k: int, b: int) -> np.ndarray:
    """Indicator rows of every pattern (independent of the module's enumeration)."""
    out = [np.zeros(n)]
    for size in range(1, k + 1):
        for combo in itertools.combinations(range(n), size):
            if all(q - p >= b for p, q in itertools.pairwise(combo)):
                row = np.zeros(n)
                row[list(combo)] = 1.0
                out.append(row)
    return np.array(out)


def sqrt_prefix_coeffs(n: int) -> np.ndarray:
    return np.cumprod([1.0] + [(2 * i - 1) / (2 * i) for i in range(1, n)])


def lower_toeplitz(coeffs: np.ndarray) -> np.ndarray:
    n = len(coeffs)
    i, j = np.indices((n, n))
    return np.where(i >= j, coeffs[np.clip(i - j, 0, n - 1)], 0.0)


# --- tree -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "b", "n", "expected"),
    [(1, 8, 8, 4), (3, 4, 9, 11), (3, 3, 7, 9), (8, 3, 24, 88), (8, 1, 8, 120)],
)
def test_tree_golden(k: int, b: int, n: int, expected: int) -> None:
    assert tree_sensitivity_squared(n, k, b) == expected


def test_tree_matches_dp_accounting() -> None:
    sigma, steps = 1.13, 1600
    rho = tree_sensitivity_squared(steps, 1, 1) / (2 * sigma**2)
    assert rho == pytest.approx(4.307307, abs=1e-6)
    relation = dp_accounting.NeighboringRelation.REPLACE_SPECIAL
    tree = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    tree.compose(dp_accounting.dp_event.SingleEpochTreeAggregationDpEvent(sigma, steps))
    zcdp = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    zcdp.compose(dp_accounting.dp_event.ZCDpEvent(rho))
    assert zcdp.get_epsilon(1e-6) == pytest.approx(tree.get_epsilon(1e-6), rel=1e-9)


@pytest.mark.parametrize("restart_every", [None, 1, 2, 3, 5, 8])
def test_tree_matches_brute_force(restart_every: int | None) -> None:
    for n in range(1, 13):
        enc = tree_matrix(n, restart_every)
        for b in range(1, n + 2):
            for k in sorted({*range(1, min(n, 6) + 1), n}):
                expected = brute_force_sensitivity_squared(enc, k, b)
                assert tree_sensitivity_squared(n, k, b, restart_every) == expected, (n, k, b)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(13, 48),
    k=st.integers(1, 3),
    b=st.integers(1, 20),
    restart=st.one_of(st.none(), st.integers(1, 40)),
)
def test_tree_matches_enumeration_beyond_brute_force(n, k, b, restart) -> None:
    values = ((patterns(n, k, b) @ tree_matrix(n, restart).T) ** 2).sum(axis=1)
    assert tree_sensitivity_squared(n, k, b, restart) == values.max()


def test_tree_edge_cases() -> None:
    assert tree_sensitivity_squared(0, 3, 1) == 0.0
    assert tree_sensitivity_squared(10, 0, 1) == 0.0
    assert tree_sensitivity_squared(5, 4, 100) == 3.0  # one round; tree 4 + 1: depth 3
    with pytest.raises(ValueError):
        tree_sensitivity_squared(10, 1, 0)
    with pytest.raises(ValueError):
        tree_sensitivity_squared(10, 1, 1, restart_every=0)


# --- banded ---------------------------------------------------------------------------------


def random_banded(rng: np.random.Generator, n: int, bands: int, signed: bool) -> np.ndarray:
    enc = rng.normal(size=(n, n)) if signed else rng.uniform(size=(n, n))
    i, j = np.indices((n, n))
    return np.where((i >= j) & (i - j < bands), enc, 0.0)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    k=st.integers(1, 6),
    b=st.integers(1, 13),
    bands_frac=st.floats(0, 1),
    signed=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_banded_matches_brute_force(n, k, b, bands_frac, signed, seed) -> None:
    bands = 1 + int(bands_frac * (b - 1))
    enc = random_banded(np.random.default_rng(seed), n, bands, signed)
    norms = (enc**2).sum(axis=0)
    expected = brute_force_sensitivity_squared(enc, k, b)
    assert banded_sensitivity_squared(norms, bands, k, b) == pytest.approx(expected, rel=1e-9)


def test_banded_every_n() -> None:
    rng = np.random.default_rng(0)
    for n in range(1, 13):
        for b in range(1, n + 1):
            enc = random_banded(rng, n, b, signed=True)
            norms = (enc**2).sum(axis=0)
            for k in (1, 2, 3, n):
                expected = brute_force_sensitivity_squared(enc, k, b)
                got = banded_sensitivity_squared(norms, b, k, b)
                assert got == pytest.approx(expected, rel=1e-9)


def test_banded_rejects_too_many_bands() -> None:
    with pytest.raises(ValueError):
        banded_sensitivity_squared(np.ones(6), 3, 2, 2)
    with pytest.raises(ValueError):
        banded_sensitivity_squared(-np.ones(6), 1, 2, 2)


# --- Toeplitz -------------------------------------------------------------------------------


def test_toeplitz_golden() -> None:
    coeffs = sqrt_prefix_coeffs(8)
    assert toeplitz_sensitivity_squared(coeffs, 8, 1, 1) == pytest.approx(1.718379, abs=1e-6)
    assert toeplitz_sensitivity_squared(coeffs, 8, 1, 1) == pytest.approx((coeffs**2).sum())


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    k=st.integers(1, 6),
    b=st.integers(1, 13),
    seed=st.integers(0, 2**32 - 1),
    plateaus=st.booleans(),
)
def test_toeplitz_matches_brute_force(n, k, b, seed, plateaus) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 3, size=n).astype(float) if plateaus else rng.uniform(size=n)
    coeffs = np.sort(raw)[::-1]
    expected = brute_force_sensitivity_squared(lower_toeplitz(coeffs), k, b)
    assert toeplitz_sensitivity_squared(coeffs, n, k, b) == pytest.approx(expected, rel=1e-9)


def test_toeplitz_every_n_sqrt_prefix() -> None:
    for n in range(1, 13):
        coeffs = sqrt_prefix_coeffs(n)
        enc = lower_toeplitz(coeffs)
        for b in range(1, n + 1):
            for k in (1, 2, 3, n):
                expected = brute_force_sensitivity_squared(enc, k, b)
                got = toeplitz_sensitivity_squared(coeffs, n, k, b)
                assert got == pytest.approx(expected, rel=1e-9)


def test_toeplitz_rejects_bad_coefficients() -> None:
    with pytest.raises(ValueError):
        toeplitz_sensitivity_squared(np.array([1.0, 0.5, 0.7]), 3, 2, 1)
    with pytest.raises(ValueError):
        toeplitz_sensitivity_squared(np.array([1.0, -0.5]), 2, 2, 1)
    with pytest.raises(ValueError):
        toeplitz_sensitivity_squared(np.array([1.0]), 2, 2, 1)


# --- general and brute force ----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 14),
    k=st.integers(1, 6),
    b=st.integers(1, 13),
    seed=st.integers(0, 2**32 - 1),
)
def test_general_is_an_upper_bound(n, m, k, b, seed) -> None:
    enc = np.random.default_rng(seed).normal(size=(m, n))
    assert (
        general_sensitivity_squared(enc, k, b) >= brute_force_sensitivity_squared(enc, k, b) - 1e-9
    )


def test_general_upper_bounds_known_encoders() -> None:
    for n in range(1, 13):
        for enc in (tree_matrix(n), lower_toeplitz(sqrt_prefix_coeffs(n))):
            for b in range(1, n + 1):
                for k in (1, 2, 3, n):
                    bound = general_sensitivity_squared(enc, k, b)
                    assert bound >= brute_force_sensitivity_squared(enc, k, b) - 1e-9


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 12),
    k=st.integers(1, 6),
    b=st.integers(1, 13),
    seed=st.integers(0, 2**32 - 1),
)
def test_general_exact_for_orthogonal_columns(n, k, b, seed) -> None:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n + 2, n + 2)))
    enc = q[:, :n] * rng.uniform(0.1, 3.0, size=n)  # C^T C = diag(scales^2)
    expected = brute_force_sensitivity_squared(enc, k, b)
    assert general_sensitivity_squared(enc, k, b) == pytest.approx(expected, rel=1e-9)


def test_brute_force_identity_and_limits() -> None:
    for n, k, b in [(10, 3, 4), (10, 5, 2), (7, 7, 1), (5, 2, 9)]:
        assert brute_force_sensitivity_squared(np.eye(n), k, b) == participations_that_fit(n, b, k)
    assert general_sensitivity_squared(np.eye(10), 3, 4) == 3.0
    with pytest.raises(ValueError):
        brute_force_sensitivity_squared(np.eye(17), 1, 1)
