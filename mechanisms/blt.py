"""Buffered linear Toeplitz (BLT) noise: C^-1 z streamed with a few d-vector buffers."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.optimize
import scipy.signal
import scipy.special
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
from mechanisms.participation import participations_that_fit
from mechanisms.sensitivity import toeplitz_sensitivity_squared
from mechanisms.toeplitz import pattern_sensitivity, prefix_error, toeplitz_lower

BLT_VERSION = "blt-lbfgs-1"
MAX_BUFFERS = 8
_LOGIT_BOUND = 30.0  # keeps theta in (0, 1) and each omega > 0 in floating point
_STARTS = ((0.5, 0.5), (0.5, 0.9), (0.1, 0.5), (0.1, 0.9), (0.01, 0.5), (0.01, 0.9))


def blt_coefficients(theta: np.ndarray, omega: np.ndarray, n: int) -> np.ndarray:
    """C's first column over n rounds: c_0 = 1, c_j = sum_i omega_i theta_i^(j-1) for j >= 1."""
    powers = np.asarray(theta, dtype=float)[:, None] ** np.arange(max(n - 1, 0))
    return np.concatenate([[1.0], np.asarray(omega, dtype=float) @ powers])[:n]


def blt_inverse_coefficients(theta: np.ndarray, omega: np.ndarray, n: int) -> np.ndarray:
    """C^-1's first column over n rounds, from C(x) = P(x) / Q(x), Q = prod_i (1 - theta_i x)."""
    denominator = np.array([1.0])
    numerator_tail = np.array([0.0])
    for theta_i, omega_i in zip(theta, omega, strict=True):
        # P / Q = 1 + x sum_i omega_i / (1 - theta_i x): grow Q and x (P - Q) one factor at a time.
        numerator_tail = np.polyadd(
            np.convolve(numerator_tail, [-theta_i, 1.0]), omega_i * denominator
        )
        denominator = np.convolve(denominator, [-theta_i, 1.0])
    q = denominator[::-1]  # numpy's polynomials are highest degree first
    p = np.concatenate([q, [0.0]])
    p[1 : len(numerator_tail) + 1] += numerator_tail[::-1]
    impulse = np.zeros(n)
    impulse[:1] = 1.0
    return np.asarray(scipy.signal.lfilter(q, p, impulse))


def _unpack(x: np.ndarray, buffers: int) -> tuple[np.ndarray, np.ndarray]:
    """Theta = sigmoid(x[:m]) and omega = softmax([x[m:], 0])[:m]: omega >= 0, sum < 1."""
    theta = scipy.special.expit(x[:buffers])
    omega = scipy.special.softmax(np.concatenate([x[buffers:], [0.0]]))[:buffers]
    return theta, omega


def blt_loss(x: np.ndarray, buffers: int, n: int, k: int, b: int) -> tuple[float, np.ndarray]:
    """log(mean_t squared prefix-sum error of A C^-1 * sens(C; k, b)^2) and its gradient in x."""
    theta, omega = _unpack(x, buffers)
    powers = theta[:, None] ** np.arange(n - 1)  # [m, n - 1]
    coeffs = np.concatenate([[1.0], omega @ powers])
    error, error_grad = prefix_error(coeffs, n, blt_inverse_coefficients(theta, omega, n))
    sens, sens_grad = pattern_sensitivity(coeffs, n, k, b)
    if not (math.isfinite(error) and error > 0 and sens > 0):
        return 1e300, np.zeros_like(x)
    grad = (error_grad / error + sens_grad / sens)[1:]  # d loss / d c_j, j >= 1
    d_omega = powers @ grad
    d_powers = np.zeros_like(powers)  # d theta^j / d theta = j theta^(j-1)
    d_powers[:, 1:] = np.arange(1, n - 1) * powers[:, :-1]
    d_theta = omega * (d_powers @ grad)
    d_logits = omega * (d_omega - d_omega @ omega)
    loss = math.log(error / n) + math.log(sens)
    return loss, np.concatenate([d_theta * theta * (1.0 - theta), d_logits])


def optimise_blt(rounds: int, k: int, b: int, buffers: int) -> tuple[np.ndarray, np.ndarray]:
    """(theta, omega) minimising `blt_loss`: L-BFGS-B from a few starts, the best kept.

    Start s: theta_i = 1 - geomspace(gap_s, 1 / rounds), omega_i = mass_s / buffers. BLAS runs
    on one thread: the vectors are short, and threads only contend.
    """
    with threadpool_limits(limits=1):
        return _optimise_blt(rounds, k, b, buffers)


def _optimise_blt(rounds: int, k: int, b: int, buffers: int) -> tuple[np.ndarray, np.ndarray]:
    best: tuple[float, np.ndarray] | None = None
    bounds = [(-_LOGIT_BOUND, _LOGIT_BOUND)] * (2 * buffers)
    for gap, mass in _STARTS:
        theta = 1.0 - np.geomspace(gap, min(gap, 1.0 / rounds), buffers)
        omega = np.full(buffers, mass / buffers)
        start = np.concatenate([scipy.special.logit(theta), np.log(omega / (1.0 - mass))])
        start = np.clip(start, -_LOGIT_BOUND, _LOGIT_BOUND)
        result = scipy.optimize.minimize(
            blt_loss,
            start,
            args=(buffers, rounds, k, b),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 1000, "gtol": 1e-9, "ftol": 1e-14},
        )
        if best is None or result.fun < best[0]:
            best = (float(result.fun), result.x)
    assert best is not None
    return _unpack(best[1], buffers)


@dataclass(frozen=True)
class BltFactorisation:
    """A BLT factorisation: c_0 = 1, c_j = sum_i omega_i theta_i^(j-1) (j >= 1).

    Guarantees:
        theta in (0, 1) and omega >= 0 make the coefficients non-negative and non-increasing,
        which `toeplitz_sensitivity_squared` needs to be exact (McMahan et al. 2024, Thm 2;
        it checks them again).

    Attributes:
        theta: theta_i in (0, 1), one per buffer.
        omega: omega_i >= 0, as many, with sum_i omega_i <= 1: the coefficients are then
            non-negative and non-increasing.
    """

    theta: tuple[float, ...]
    omega: tuple[float, ...]

    def __post_init__(self) -> None:
        theta, omega = self.arrays
        valid = len(theta) == len(omega) >= 1 and omega.sum() <= 1 + 1e-12
        if not valid or np.any((theta <= 0) | (theta >= 1) | (omega < 0)):
            raise ValueError(f"invalid BLT parameters: theta {self.theta}, omega {self.omega}")

    @classmethod
    def optimised(cls, rounds: int, k: int, b: int, buffers: int) -> BltFactorisation:
        """The factorisation of `optimise_blt(n, min(k, ceil(n / b)), b, buffers)`, cached.

        Raises:
            ValueError: If the cache holds parameters of another shape or invalid ones.
        """
        k = participations_that_fit(rounds, b, k)
        key: dict[str, int | str] = {"kind": "blt", "n": rounds, "k": k, "b": b}
        key.update(buffers=buffers, version=BLT_VERSION)

        def compute() -> dict[str, object]:
            theta, omega = optimise_blt(rounds, k, b, buffers)
            return {"theta": theta, "omega": omega}

        params = cached_factorisation(key, compute)
        if not len(params["theta"]) == len(params["omega"]) == buffers:
            raise ValueError(f"cached BLT factorisation {key} is invalid: {params}")
        return cls(tuple(params["theta"]), tuple(params["omega"]))

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(theta, omega) as float64."""
        return np.asarray(self.theta, dtype=float), np.asarray(self.omega, dtype=float)

    @cached_property
    def digest(self) -> str:
        """The fingerprint of (theta, omega) (`mechanisms.base.digest`)."""
        return digest(*self.arrays)

    def coefficients(self, rounds: int) -> np.ndarray:
        """C's first column over `rounds` rounds."""
        return blt_coefficients(*self.arrays, rounds)


@dataclass(frozen=True)
class BltMechanism(NoisyMechanism):
    """Buffered linear Toeplitz noise: C^-1 z with a Toeplitz C of rational generating function.

    McMahan, Xu, Zhang 2024, "Efficient and near-optimal noise generation for streaming
    differential privacy". C is lower-triangular Toeplitz with c_0 = 1 and c_j = sum_i omega_i
    theta_i^(j-1) (j >= 1, i < `buffers`), theta_i in (0, 1), omega_i >= 0, sum_i omega_i < 1.
    `prepare` chooses (theta, omega) by L-BFGS-B from a few starts to minimise the mean over the
    run's n rounds of the squared prefix-sum error of A C^-1 times sens(C; k, b)^2, i.e. the
    error at equal rho (cached on disk, `mechanisms.factorisation_cache`). Round t's noise is
    sigma w_t with C w = z, streamed as w_t = z_t - sum_i omega_i B_i, then
    B_i <- theta_i B_i + w_t, z_t ~ N(0, I) from (seed, NOISE, t). Rounds past n continue the
    same recursion.

    Guarantees:
        The coefficients are non-negative and non-increasing, so under a (k, b) bound the
        worst participation pattern is 0, b, ..., (k-1) b (McMahan et al. 2024, Thm 2). With
        user-level replace-with-zero adjacency and clipped updates (L2 norm <= 1 in clip
        norms), the release is rho-zCDP with rho = sensitivity_squared(n, k, b) / (2 sigma^2);
        C is lower-triangular, so this holds for adaptive updates (Denisov et al. 2022). A
        state records the parameters' fingerprint: its noise never continues with another C.
        Assumes secret noise: seeded noise (the default) is known to whoever knows the seed;
        `noise_seed="secret"` draws it from the OS (`mechanisms.base.NoiseSeed`).

    Memory:
        Between rounds, `buffers` float32 d-vectors (the state's "buffers" [m, d], updated in
        place); while privatizing, z, one more d-vector and the output.

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm (> 0).
        seed: Seed of the noise stream (with noise_seed="seeded").
        noise_seed: "seeded" draws the noise from `seed` (reproducible; the default);
            "secret" from a 128-bit seed drawn from the OS and never logged (`NoiseSeed`).
        buffers: Number of buffers m, 1..8.
        factorisation: (theta, omega), set by `prepare` (None before: no noise, no
            sensitivity).
    """

    buffers: int = 3
    factorisation: BltFactorisation | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        m = self.buffers
        require(1 <= m <= MAX_BUFFERS, "buffers", f"must be in 1..{MAX_BUFFERS}, got {m}")
        f = self.factorisation
        require(f is None or len(f.theta) == m, "factorisation", f"must have {m} buffers")

    def prepare(self, rounds: int, max_participations: int, min_separation: int) -> BltMechanism:
        """This mechanism with (theta, omega) optimised for the run's (n, k, b)."""
        require_run(rounds, max_participations, min_separation)
        factorisation = BltFactorisation.optimised(
            rounds, max_participations, min_separation, self.buffers
        )
        return dataclasses.replace(self, factorisation=factorisation)

    def _prepared(self) -> BltFactorisation:
        """The factorisation.

        Raises:
            ValueError: If the mechanism is not prepared.
        """
        if self.factorisation is None:
            raise ValueError("BltMechanism has no factorisation: prepare() it for the run")
        return self.factorisation

    def _factorisation_digest(self) -> str:
        return self._prepared().digest

    def _buffers(self, dim: int) -> dict[str, torch.Tensor]:
        """The buffers B_i = sum_{j >= 1} theta_i^(j-1) w_{t-j}: zeros before round 0."""
        return {"buffers": torch.zeros(self.buffers, dim)}

    def privatize(
        self, total: torch.Tensor, round_idx: int, state: NoiseState
    ) -> tuple[torch.Tensor, NoiseState]:
        """Returns x_t + sigma w_t, w_t = z_t - sum_i omega_i B_i, then B_i <- theta_i B_i + w_t.

        The buffers are updated in place.

        Raises:
            ValueError: If `state` cannot privatize round `round_idx` (see `_check`).
        """
        self._check(total, round_idx, state)
        theta, omega = (torch.tensor(v, dtype=torch.float32) for v in self._prepared().arrays)
        noise = standard_normal(state.dim, state.seed, round_idx)
        buffers = state.buffers["buffers"]
        noise.sub_(torch.mv(buffers.t(), omega))
        torch.addcmul(noise.unsqueeze(0), theta.unsqueeze(1), buffers, out=buffers)  # in place
        released = add_noise(total, noise, self.noise_multiplier)
        return released, dataclasses.replace(state, round=round_idx + 1)

    def row_keys(self, rounds: int) -> list[tuple[int, ...]]:
        """The NOISE-stream keys of the rows of `matrices(rounds)`'s C, in order: (t,)."""
        return [(t,) for t in range(rounds)]

    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense (C, C^-1), both lower-triangular Toeplitz, n x n."""
        factorisation = self._prepared()
        inverse = blt_inverse_coefficients(*factorisation.arrays, rounds)
        coeffs = factorisation.coefficients(rounds)
        return toeplitz_lower(coeffs, rounds), toeplitz_lower(inverse, rounds)

    def sensitivity_squared(
        self, rounds: int, max_participations: int, min_separation: int
    ) -> float:
        """Max over (k, b) patterns of ||C sum_i e_i||^2, at participations 0, b, 2b, ..."""
        coeffs = self._prepared().coefficients(rounds)
        return float(
            toeplitz_sensitivity_squared(coeffs, rounds, max_participations, min_separation)
        )
