"""Lower-triangular Toeplitz factorisations: their matrices and the objectives they optimise.

A lower-triangular Toeplitz C is its first column c_0, c_1, ...; C^-1 is Toeplitz too, with
first column the power series 1 / c(x). The banded and BLT factorisations are of this kind.
Every function here is pure and takes plain integers or arrays.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.signal

from mechanisms.participation import participations_that_fit


def toeplitz_lower(column: np.ndarray, n: int) -> np.ndarray:
    """The n x n lower-triangular Toeplitz matrix with first column `column` (cut or padded)."""
    first = np.zeros(n)
    first[: min(n, len(column))] = column[:n]
    return scipy.linalg.toeplitz(first, np.zeros(n))


def inverse_coefficients(coeffs: np.ndarray, n: int) -> np.ndarray:
    """The first n coefficients of the power series 1 / c(x): C^-1's first column."""
    impulse = np.zeros(n)
    impulse[:1] = 1.0
    return np.asarray(scipy.signal.lfilter([1.0], np.asarray(coeffs, dtype=float), impulse))


def sqrt_coefficients(n: int) -> np.ndarray:
    """c_j = prod_{i <= j} (2i - 1) / (2i): the Toeplitz square root of the prefix-sum matrix A."""
    ratios = (2.0 * np.arange(1, n) - 1.0) / (2.0 * np.arange(1, n))
    return np.cumprod(np.concatenate([[1.0], ratios]))[:n]


def prefix_error(
    coeffs: np.ndarray, n: int, inverse: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """||A C^-1||_F^2 over n rounds for the Toeplitz C with first column `coeffs`, and its gradient.

    C^-1 is Toeplitz with first column r = 1 / c(x), A C^-1 is Toeplitz with first column
    s = cumsum(r), so the squared norm is sum_m (n - m) s_m^2: O(n len(coeffs)). Since
    dr = -r^2 dc (power series), the gradient is a correlation with r * r (FFT, O(n log n)).

    Args:
        coeffs: C's first column (entries past n are ignored).
        n: Rounds.
        inverse: r, if the caller has it (else computed from `coeffs`).

    Returns:
        (error, d error / d coeffs); (inf, zeros) if C^-1 overflows.
    """
    coeffs = np.asarray(coeffs, dtype=float)
    with np.errstate(all="ignore"):
        r = inverse_coefficients(coeffs, n) if inverse is None else inverse
        s = np.cumsum(r)
        weights = np.arange(n, 0, -1, dtype=float)
        error = float(np.dot(weights, s * s))
        if not math.isfinite(error):
            return math.inf, np.zeros_like(coeffs)
        d_r = np.cumsum((2.0 * weights * s)[::-1])[::-1]  # d error / d r_m
        square = scipy.signal.fftconvolve(r, r)[:n]
        lags = np.arange(min(len(coeffs), n))
        grad = np.zeros_like(coeffs)
        grad[lags] = -scipy.signal.fftconvolve(d_r[::-1], square)[n - 1 - lags]
    return error, grad


def pattern_sensitivity(coeffs: np.ndarray, n: int, k: int, b: int) -> tuple[float, np.ndarray]:
    """||C (e_0 + e_b + ... + e_{(k'-1) b})||^2, k' = min(k, ceil(n / b)), and its gradient.

    For non-negative non-increasing Toeplitz coefficients this is sens(C; k, b)^2 (McMahan et
    al. 2024, Thm 2; `mechanisms.sensitivity.toeplitz_sensitivity_squared` checks them).
    """
    count = participations_that_fit(n, b, k)
    column_sum = np.zeros(n)
    for i in range(count):
        column_sum[i * b :] += coeffs[: n - i * b]
    grad = np.zeros(n)
    for i in range(count):
        grad[: n - i * b] += 2.0 * column_sum[i * b :]
    return float(column_sum @ column_sum), grad
