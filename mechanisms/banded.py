"""Banded matrix factorisation (banded-Toeplitz variant): noise C^-1 z with a few-band C."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.optimize
import torch
from threadpoolctl import threadpool_limits

from common.errors import require
from mechanisms.base import (
    NoiseState,
    NoisyMechanism,
    add_noise,
    digest,
    require_run,
    standard_normal,
)
from mechanisms.factorisation_cache import cached_factorisation
from mechanisms.sensitivity import (
    banded_sensitivity_squared,
    general_sensitivity_squared,
    toeplitz_sensitivity_squared,
)
from mechanisms.toeplitz import (
    inverse_coefficients,
    prefix_error,
    sqrt_coefficients,
    toeplitz_lower,
)

BANDED_VERSION = "banded-toeplitz-lbfgs-1"


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


@dataclass(frozen=True)
class BandedFactorisation:
    """A banded lower-triangular Toeplitz C, by its first column c_0..c_{bands-1}.

    Guarantees:
        c_0 > 0, so C is invertible and the noise C^-1 z is defined; the sensitivity is
        computed from these very coefficients (`BandedMechanism.sensitivity_squared`), whatever
        they are.

    Attributes:
        coefficients: c_0 > 0, c_1, ..., finite (the optimiser's have unit norm).
    """

    coefficients: tuple[float, ...]

    def __post_init__(self) -> None:
        c = self.coefficients
        if not c or not all(math.isfinite(v) for v in c) or not c[0] > 0:
            raise ValueError(f"banded coefficients must be finite with c_0 > 0, got {c}")

    @classmethod
    def optimised(cls, rounds: int, bands: int) -> BandedFactorisation:
        """The factorisation of `optimise_banded(rounds, bands)`, through the disk cache.

        Raises:
            ValueError: If the cache holds coefficients of another shape or invalid ones.
        """
        key: dict[str, int | str] = {
            "kind": "banded",
            "n": rounds,
            "bands": bands,
            "version": BANDED_VERSION,
        }
        params = cached_factorisation(key, lambda: {"c": optimise_banded(rounds, bands)})
        if len(params["c"]) != bands:
            raise ValueError(f"cached banded factorisation {key} is invalid: {params['c']}")
        return cls(tuple(params["c"]))

    @cached_property
    def array(self) -> np.ndarray:
        """The coefficients as float64."""
        return np.asarray(self.coefficients, dtype=float)

    @cached_property
    def digest(self) -> str:
        """The fingerprint of the coefficients (`mechanisms.base.digest`)."""
        return digest(self.array)


@dataclass(frozen=True)
class BandedMechanism(NoisyMechanism):
    """Banded matrix factorisation, banded-Toeplitz variant: noise C^-1 z with C banded.

    Choquette-Choo et al. 2023, "(Amplified) banded matrix factorizations: a unified approach
    to private training". C is lower-triangular Toeplitz with `bands` bands (first column
    c_0..c_{bands-1}, unit norm, c_0 > 0), chosen by L-BFGS to minimise the total squared
    prefix-sum error ||A C^-1||_F^2 over the run's n rounds (A the lower-triangular ones)
    subject to every column of C having norm <= 1 (the full ones have norm 1, the last
    bands - 1 are cut short). Restricting C to be Toeplitz (the paper optimises a general
    banded C) makes the optimisation O(n bands) per step and the noise cheap to stream: round
    t's noise is sigma w_t, w_t = (z_t - sum_{j=1}^{bands-1} c_j w_{t-j}) / c_0
    (back-substitution of C w = z), z_t ~ N(0, I) from (seed, NOISE, t). `prepare` optimises
    the coefficients for the run (cached on disk, `mechanisms.factorisation_cache`); rounds
    past n continue the same Toeplitz recursion.

    Guarantees:
        With user-level replace-with-zero adjacency, clipped updates (L2 norm <= 1 in clip
        norms) and at most k participations any two >= b rounds apart, the release is
        rho-zCDP with rho = sensitivity_squared(n, k, b) / (2 sigma^2); every row of C involves
        only elapsed rounds, so this holds for adaptive updates (Denisov et al. 2022). With
        bands <= b (the default), the columns of two participations never overlap and
        sens^2 = k (Choquette-Choo et al. 2023); otherwise see `sensitivity_squared`. A state
        records the coefficients' fingerprint: its noise never continues with another C.
        Assumes secret noise: seeded noise (the default) is known to whoever knows the seed;
        `noise_seed="secret"` draws it from the OS (`mechanisms.base.NoiseSeed`).

    Memory:
        Between rounds, bands - 1 float32 d-vectors (the state's "ring" of past w, updated in
        place); while privatizing, z and the output.

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm (> 0).
        seed: Seed of the noise stream (with noise_seed="seeded").
        noise_seed: "seeded" draws the noise from `seed` (reproducible; the default);
            "secret" from a 128-bit seed drawn from the OS and never logged (`NoiseSeed`).
        bands: Bands of C, or None for min(min_separation, rounds); capped at the rounds.
        factorisation: The coefficients, set by `prepare` (None before: no noise, no
            sensitivity).
    """

    bands: int | None = None
    factorisation: BandedFactorisation | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.bands is None or self.bands >= 1, "bands", f"must be >= 1, got {self.bands}")

    def prepare(self, rounds: int, max_participations: int, min_separation: int) -> BandedMechanism:
        """This mechanism with C optimised for n rounds: min(bands or b, n) bands."""
        require_run(rounds, max_participations, min_separation)
        bands = min(self.bands or min_separation, rounds)
        factorisation = BandedFactorisation.optimised(rounds, bands)
        return dataclasses.replace(self, factorisation=factorisation)

    @property
    def coefficients(self) -> np.ndarray:
        """c_0..c_{bands-1}, C's first column (float64)."""
        return self._prepared().array

    def _prepared(self) -> BandedFactorisation:
        """The factorisation.

        Raises:
            ValueError: If the mechanism is not prepared.
        """
        if self.factorisation is None:
            raise ValueError("BandedMechanism has no factorisation: prepare() it for the run")
        return self.factorisation

    def _factorisation_digest(self) -> str:
        return self._prepared().digest

    def _buffers(self, dim: int) -> dict[str, torch.Tensor]:
        """The ring of the last bands - 1 w (zeros: w_t = 0 before round 0)."""
        slots = len(self.coefficients) - 1
        return {"ring": torch.zeros(slots, dim)} if slots else {}

    def privatize(
        self, total: torch.Tensor, round_idx: int, state: NoiseState
    ) -> tuple[torch.Tensor, NoiseState]:
        """Returns x_t + sigma w_t, streaming w_t = (z_t - sum_j c_j w_{t-j}) / c_0.

        w_{t-j} sits in row (t - j) mod (bands - 1) of the ring, which is updated in place.

        Raises:
            ValueError: If `state` cannot privatize round `round_idx` (see `_check`).
        """
        self._check(total, round_idx, state)
        coeffs = self.coefficients
        noise = standard_normal(state.dim, state.seed, round_idx)
        slots = len(coeffs) - 1
        if slots:
            ring = state.buffers["ring"]
            weights = torch.zeros(slots)
            weights[(round_idx - np.arange(1, slots + 1)) % slots] = torch.from_numpy(
                coeffs[1:]
            ).float()
            noise.sub_(torch.mv(ring.t(), weights))
        noise.div_(float(coeffs[0]))
        if slots:
            ring[round_idx % slots] = noise
        released = add_noise(total, noise, self.noise_multiplier)
        return released, dataclasses.replace(state, round=round_idx + 1)

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
