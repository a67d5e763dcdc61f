"""Banded matrix factorisation (banded-Toeplitz variant): noise C^-1 z with a few-band C."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.signal
import torch
from threadpoolctl import threadpool_limits

from engine.errors import require
from mechanisms.base import Mechanism, NoiseSeed
from mechanisms.gaussian import RoundCursor, add_noise, check_round, standard_normal
from mechanisms.strategy_cache import cached_strategy

BANDED_VERSION = "banded-toeplitz-lbfgs-1"


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


def optimise_banded(rounds: int, bands: int) -> np.ndarray:
    """Unit-norm c_0..c_{bands-1} (c_0 > 0) minimising ||A C^-1||_F^2 over `rounds` rounds.

    L-BFGS on c = v / ||v||, minimising log ||A C^-1||_F^2, from the truncated square root of A.
    BLAS runs on one thread: the vectors are short, and threads only contend.
    """
    with threadpool_limits(limits=1):
        return _optimise_banded(rounds, bands)


def _optimise_banded(rounds: int, bands: int) -> np.ndarray:
    start = sqrt_coefficients(bands)
    start /= np.linalg.norm(start)
    if bands == 1:
        return start

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        norm = float(np.linalg.norm(v))
        coeffs = v / norm
        error, grad = prefix_error(coeffs, rounds)
        if not math.isfinite(error) or error <= 0:
            return 1e300, np.zeros_like(v)
        grad = grad / error
        return math.log(error), (grad - coeffs * np.dot(coeffs, grad)) / norm

    result = scipy.optimize.minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-15},
    )
    coeffs = result.x / np.linalg.norm(result.x)
    coeffs *= np.sign(coeffs[0]) or 1.0
    if not coeffs[0] > 0 or prefix_error(coeffs, rounds)[0] > prefix_error(start, rounds)[0]:
        return start
    return coeffs


class _BandStream:
    """The next round, d, and the last bands - 1 noise vectors w in a ring [bands - 1, d].

    w_{t-j} sits in row (t - j) mod (bands - 1). `shared` marks a ring handed out by
    `state_dict` (or taken from `load_state_dict`): it is copied before its next write.
    """

    def __init__(self) -> None:
        self.cursor = RoundCursor()
        self.ring: torch.Tensor | None = None
        self.shared = False


@dataclass(frozen=True)
class BandedMechanism(Mechanism):
    """Banded matrix factorisation, banded-Toeplitz variant: noise C^-1 z with C banded.

    Choquette-Choo et al. 2023, "(Amplified) banded matrix factorizations: a unified approach
    to private training". C is lower-triangular Toeplitz with `bands` bands (first column
    c_0..c_{bands-1}, unit norm, c_0 > 0), chosen by L-BFGS to minimise the total squared
    prefix-sum error ||A C^-1||_F^2 over `rounds` rounds (A the lower-triangular ones) subject
    to every column of C having norm <= 1 (the full ones have norm 1, the last bands - 1 are
    cut short). Restricting C to be Toeplitz (the paper optimises a general banded C) makes
    the optimisation O(n bands) per step and the noise cheap to stream: round t's noise is
    sigma w_t, w_t = (z_t - sum_{j=1}^{bands-1} c_j w_{t-j}) / c_0 (back-substitution of
    C w = z), z_t ~ N(0, I) from (seed, NOISE, t). Coefficients are optimised lazily, at the
    first use, and cached on disk (`mechanisms.strategy_cache`). Rounds past `rounds` continue
    the same Toeplitz recursion.

    Guarantees:
        With user-level replace-with-zero adjacency, clipped updates (L2 norm <= 1 in clip
        norms) and at most k participations any two >= b rounds apart, the release is
        rho-zCDP with rho = sensitivity_squared(n, k, b) / (2 sigma^2); every row of C involves
        only elapsed rounds, so this holds for adaptive updates (Denisov et al. 2022). With
        bands <= b (the default), the columns of two participations never overlap and
        sens^2 = k (Choquette-Choo et al. 2023); otherwise see `sensitivity_squared`.
        Assumes secret noise: seeded noise (the default) is known to whoever knows the seed;
        `noise_seed="secret"` draws it from the OS (`mechanisms.base.NoiseSeed`).

    Memory:
        Between rounds, bands - 1 float32 d-vectors (the ring of past w); while privatizing, z
        and the output. A checkpoint shares the ring (copied on the next write).

    Attributes:
        rounds: n, the planned rounds (injected by the run).
        max_participations: k (injected).
        min_separation: b (injected).
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm (> 0).
        seed: Seed of the noise stream (with noise_seed="seeded").
        noise_seed: "seeded" draws the noise from `seed` (reproducible; the default);
            "secret" from a 128-bit seed drawn from the OS and never logged (`NoiseSeed`).
        bands: Bands of C, or None for min(min_separation, rounds); capped at `rounds`.
    """

    rounds: int
    max_participations: int
    min_separation: int
    noise_multiplier: float = 1.0
    seed: int = 0
    bands: int | None = None
    noise_seed: str = "seeded"
    _stream: _BandStream = field(default_factory=_BandStream, init=False, repr=False, compare=False)
    _noise: NoiseSeed = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("rounds", "max_participations", "min_separation"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        sigma = self.noise_multiplier
        require(math.isfinite(sigma) and sigma > 0, "noise_multiplier", f"must be > 0, got {sigma}")
        object.__setattr__(self, "_noise", NoiseSeed(self.seed, self.noise_seed))
        require(self.bands is None or self.bands >= 1, "bands", f"must be >= 1, got {self.bands}")

    @property
    def num_bands(self) -> int:
        """The bands of C: `bands`, or min(min_separation, rounds), capped at `rounds`."""
        return min(self.bands or self.min_separation, self.rounds)

    @cached_property
    def coefficients(self) -> np.ndarray:
        """c_0..c_{bands-1}, C's first column (optimised at first use, then from the cache)."""
        bands = self.num_bands
        key: dict[str, int | str] = {
            "kind": "banded",
            "n": self.rounds,
            "bands": bands,
            "version": BANDED_VERSION,
        }
        params = cached_strategy(key, lambda: {"c": optimise_banded(self.rounds, bands)})
        coeffs = np.asarray(params["c"], dtype=float)
        if coeffs.shape != (bands,) or not coeffs[0] > 0:
            raise ValueError(f"cached banded strategy {key} is invalid: {coeffs}")
        return coeffs

    def privatize(self, total: torch.Tensor, round_idx: int) -> torch.Tensor:
        """Returns x_t + sigma w_t, streaming w_t = (z_t - sum_j c_j w_{t-j}) / c_0.

        Raises:
            ValueError: If `round_idx` is not the next round, or the dimension changed.
        """
        coeffs = self.coefficients
        stream = self._stream
        dim = check_round(stream.cursor, total, round_idx)
        noise = standard_normal(dim, self._noise.value, round_idx)
        slots = len(coeffs) - 1
        if slots:
            if stream.ring is None:
                stream.ring = torch.zeros(slots, dim)
            elif stream.shared:
                stream.ring = stream.ring.clone()
            stream.shared = False
            weights = torch.zeros(slots)
            weights[(round_idx - np.arange(1, slots + 1)) % slots] = torch.from_numpy(
                coeffs[1:]
            ).float()
            noise.sub_(torch.mv(stream.ring.t(), weights))
        noise.div_(float(coeffs[0]))
        if slots:
            assert stream.ring is not None
            stream.ring[round_idx % slots] = noise
        stream.cursor.round += 1
        return add_noise(total, noise, self.noise_multiplier)

    def state_dict(self) -> dict[str, Any]:
        """The next round, the coefficients, and the ring of past w (shared: copied on write)."""
        self._stream.shared = True
        return {
            "round": self._stream.cursor.round,
            "seed": self._noise.value,
            "rounds": self.rounds,
            "bands": self.num_bands,
            "coefficients": torch.tensor(self.coefficients, dtype=torch.float64),
            "ring": self._stream.ring,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues after the rounds that `state` had privatized.

        Raises:
            ValueError: If the state is of another configuration, its noise was built with
                other coefficients (a changed optimiser or cache), or its ring does not fit.
        """
        expected = {"rounds": self.rounds, "bands": self.num_bands}
        for key, mine in expected.items():
            if state[key] != mine:
                raise ValueError(f"state has {key}={state[key]}, this mechanism {mine}")
        if not np.array_equal(np.asarray(state["coefficients"]), self.coefficients):
            raise ValueError("state's noise was built with other banded coefficients")
        self._noise.restore(state["seed"])
        round_idx, ring = int(state["round"]), state["ring"]
        slots = self.num_bands - 1
        if ring is not None:
            ring = ring.detach().to("cpu", torch.float32)
            if ring.dim() != 2 or ring.shape[0] != slots or round_idx == 0:
                raise ValueError(f"ring of shape {tuple(ring.shape)} at round {round_idx}")
        elif round_idx > 0 and slots > 0:
            raise ValueError(f"round {round_idx} needs a ring of {slots} vectors")
        self._stream.cursor.round = round_idx
        self._stream.cursor.dim = None if ring is None else ring.shape[1]
        self._stream.ring = ring
        self._stream.shared = True

    def row_keys(self, rounds: int) -> list[tuple[int, ...]]:
        """The NOISE-stream keys of the rows of `matrices(rounds)`'s C, in order: (t,)."""
        return [(t,) for t in range(rounds)]

    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense (C, C^-1), both lower-triangular Toeplitz, n x n."""
        coeffs = self.coefficients
        return toeplitz_lower(coeffs, rounds), toeplitz_lower(
            inverse_coefficients(coeffs, rounds), rounds
        )

    def sensitivity_squared(
        self, rounds: int, max_participations: int, min_separation: int
    ) -> float:
        """Max over (k, b) patterns of ||C sum_i e_i||^2.

        Exact when bands <= b (k column norms^2: disjoint columns) or when the coefficients are
        non-negative and non-increasing (as optimised ones have been in every case tried; the
        worst pattern is then 0, b, 2b, ...); otherwise an upper bound from C^T C.
        """
        from mechanisms.sensitivity import (
            banded_sensitivity_squared,
            general_sensitivity_squared,
            toeplitz_sensitivity_squared,
        )

        coeffs = self.coefficients
        bands = min(len(coeffs), rounds)
        k, b = max_participations, min_separation
        if bands <= b:
            cumulative = np.cumsum(coeffs[:bands] ** 2)
            column_norms_sq = cumulative[np.minimum(bands, rounds - np.arange(rounds)) - 1]
            return float(banded_sensitivity_squared(column_norms_sq, bands, k, b))
        if np.all(coeffs >= 0) and np.all(np.diff(coeffs) <= 0):
            column = np.zeros(rounds)
            column[:bands] = coeffs[:bands]
            return float(toeplitz_sensitivity_squared(column, rounds, k, b))
        return float(general_sensitivity_squared(self.matrices(rounds)[0], k, b))
