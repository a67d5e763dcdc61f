"""Sensitivity sens(C; k, b)^2 of noise encoders C under a (k, b) participation bound.

A participation pattern is a set of at most k rounds in [0, n), any two at least b apart
(|i - j| >= b), and sens(C; k, b)^2 = max over patterns pi of || C sum_{i in pi} e_i ||^2, in
units of the clip norm. Every function here is pure and takes plain integers or arrays: banded,
Toeplitz and general encoders, and brute force; the tree's exact programme is in
`mechanisms.tree_sensitivity`.
"""

from __future__ import annotations

import numpy as np

from mechanisms.participation import participations_that_fit


def check_bound(k: int, b: int) -> None:
    """Raises ValueError unless k >= 0 and b >= 1."""
    if k < 0 or b < 1:
        raise ValueError(f"need k >= 0 and b >= 1, got k={k}, b={b}")


def _best_pattern_sum(weights: np.ndarray, k: int, b: int) -> np.ndarray:
    """Max sum of weights[..., i] over patterns (<= k rounds, >= b apart), per leading index.

    Weights must be non-negative, so "at most k" equals the best over exactly j <= k rounds.
    O(n k) per row: best_j[i] = w[i] + max_{i' <= i - b} best_{j-1}[i'] via prefix maxima.
    """
    n = weights.shape[-1]
    if n == 0 or k == 0:
        return np.zeros(weights.shape[:-1])
    last = weights.copy()  # best over patterns of j + 1 rounds whose last round is i
    best = last.max(axis=-1)
    for _ in range(1, min(k, n)):
        shifted = np.full_like(weights, -np.inf)
        if b < n:
            shifted[..., b:] = np.maximum.accumulate(last, axis=-1)[..., : n - b]
        last = weights + shifted
        best = np.maximum(best, last.max(axis=-1))
    return np.maximum(best, 0.0)


def banded_sensitivity_squared(column_norms_sq: np.ndarray, bands: int, k: int, b: int) -> float:
    """Exact sens^2 of a lower-triangular banded C from its squared column norms.

    With C[i, j] = 0 whenever i - j >= bands, column j is supported on rows [j, j + bands), so
    columns of rounds >= b >= bands apart have disjoint supports and || C sum_{i in pi} e_i ||^2
    = sum_{i in pi} ||C e_i||^2. The maximum over patterns is an O(n k) dynamic programme over
    positions (prefix maxima of the best sum of j norms ending at each round).

    Args:
        column_norms_sq: ||C e_i||^2 for i in [0, n), non-negative, shape [n].
        bands: Number of bands of C (C[i, j] = 0 when i - j >= bands), >= 1.
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b).

    Returns:
        The exact sensitivity squared.

    Raises:
        ValueError: If bands > b (then use `general_sensitivity_squared`), or bad inputs.

    Guarantees:
        Exact for banded C with bands <= b (Choquette-Choo et al. 2023, "(Amplified) banded
        matrix factorizations: a unified approach to private training"), assuming C really is
        lower-triangular with `bands` bands and the norms are its column norms.
    """
    check_bound(k, b)
    norms = np.asarray(column_norms_sq, dtype=np.float64)
    if norms.ndim != 1 or np.any(norms < 0) or not np.all(np.isfinite(norms)):
        raise ValueError("column_norms_sq must be a 1-D array of finite non-negative values")
    if bands < 1 or bands > b:
        raise ValueError(f"need 1 <= bands <= b, got bands={bands}, b={b}")
    return float(_best_pattern_sum(norms, k, b))


def toeplitz_sensitivity_squared(coeffs: np.ndarray, n: int, k: int, b: int) -> float:
    """Exact sens^2 of the n x n lower-triangular Toeplitz C with first column `coeffs`.

    For non-negative, non-increasing c_0 >= c_1 >= ... >= 0 the worst pattern is 0, b, 2b, ...
    (as many of k rounds as fit), so sens^2 = || sum_j C e_{jb} ||^2, computed in O(n k)
    without building C.

    Args:
        coeffs: c_0, c_1, ..., at least n of them (only the first n are used).
        n: Number of rounds.
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b).

    Returns:
        The exact sensitivity squared.

    Raises:
        ValueError: If the first n coefficients are not non-negative and non-increasing, or
            there are fewer than n of them.

    Guarantees:
        Exact under the stated assumption on the coefficients (McMahan, Xu, Zhang 2024,
        "Efficient and near-optimal noise generation for streaming differential privacy",
        Theorem 2).
    """
    check_bound(k, b)
    c = np.asarray(coeffs, dtype=np.float64).ravel()
    if n < 0 or len(c) < n:
        raise ValueError(f"need n >= 0 and at least n={n} coefficients, got {len(c)}")
    c = c[:n]
    if np.any(c < 0) or np.any(np.diff(c) > 0) or not np.all(np.isfinite(c)):
        raise ValueError("Toeplitz coefficients must be finite, non-negative, non-increasing")
    column_sum = np.zeros(n)
    for start in range(0, participations_that_fit(n, b, k) * b, b):
        column_sum[start:] += c[: n - start]
    return float(column_sum @ column_sum)


def general_sensitivity_squared(C: np.ndarray, k: int, b: int) -> float:  # noqa: N803
    """An upper bound on sens^2 for any encoder C, exact when C^T C is diagonal.

    With A = |C^T C| (entrywise), let r_i = max over patterns pi' containing i of
    sum_{j in pi'} A_ij (row i's best pattern-constrained sum, computed by the O(n k) pattern
    programme on the weights A_ij for |i - j| >= b). The bound is max over patterns pi of
    sum_{i in pi} r_i (the same programme on the weights r). It holds because for every
    pattern pi, || C sum_{i in pi} e_i ||^2 = sum_{i, j in pi} G_ij <= sum_{i in pi}
    sum_{j in pi} A_ij <= sum_{i in pi} r_i. When G is diagonal, r_i = G_ii and both
    inequalities are equalities. Cost O(n^2 k) time and O(n^2) memory.

    Args:
        C: The encoder, shape [m, n].
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b).

    Returns:
        An upper bound on the sensitivity squared.

    Guarantees:
        Always >= the true sens(C; k, b)^2, for any C, by the chain of inequalities above
        (sensitivity as defined for multi-participation matrix mechanisms by Choquette-Choo et
        al. 2023, "(Amplified) banded matrix factorizations: a unified approach to private
        training"); equal to it when C^T C is diagonal, or when only one round fits.
    """
    check_bound(k, b)
    if k == 0 or C.shape[1] == 0:
        return 0.0
    a = np.abs(C.T @ C)
    n = a.shape[0]
    offsets = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    others = np.where(offsets >= b, a, 0.0)  # zero weight is harmless: a skipped round
    rows = np.diag(a) + _best_pattern_sum(others, k - 1, b)
    return float(_best_pattern_sum(rows, k, b))


def brute_force_sensitivity_squared(C: np.ndarray, k: int, b: int) -> float:  # noqa: N803
    """Exact sens^2 of any C by enumerating every participation pattern (for tests).

    Args:
        C: The encoder, shape [m, n] with n <= 16.
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b).

    Returns:
        max over patterns pi of || C sum_{i in pi} e_i ||^2.

    Raises:
        ValueError: If n > 16.

    Guarantees:
        Exact by definition (no assumption on C); cost exponential in n.
    """
    check_bound(k, b)
    n = C.shape[1]
    if n > 16:
        raise ValueError(f"brute force is limited to n <= 16, got {n}")
    patterns: list[tuple[int, ...]] = [()]
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(min(k, n)):
        frontier = [(*p, i) for p in frontier for i in range(p[-1] + b if p else 0, n)]
        patterns.extend(frontier)
    indicator = np.zeros((len(patterns), n))
    for row, p in enumerate(patterns):
        indicator[row, list(p)] = 1.0
    return float(((indicator @ C.T) ** 2).sum(axis=1).max())
