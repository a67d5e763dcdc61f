"""Buffered linear Toeplitz (BLT) noise: C^-1 z streamed with a few d-vector buffers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import scipy.optimize
import scipy.signal
import scipy.special
import torch
from threadpoolctl import threadpool_limits

from engine.errors import require
from mechanisms.banded import prefix_error, toeplitz_lower
from mechanisms.base import Mechanism, NoiseSeed
from mechanisms.gaussian import RoundCursor, add_noise, check_round, standard_normal
from mechanisms.strategy_cache import cached_strategy

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


def pattern_sensitivity(coeffs: np.ndarray, n: int, k: int, b: int) -> tuple[float, np.ndarray]:
    """||C (e_0 + e_b + ... + e_{(k'-1) b})||^2, k' = min(k, ceil(n / b)), and its gradient.

    For non-negative non-increasing Toeplitz coefficients this is sens(C; k, b)^2 (McMahan et
    al. 2024, Thm 2).
    """
    count = min(k, -(-n // b))
    column_sum = np.zeros(n)
    for i in range(count):
        column_sum[i * b :] += coeffs[: n - i * b]
    grad = np.zeros(n)
    for i in range(count):
        grad[: n - i * b] += 2.0 * column_sum[i * b :]
    return float(column_sum @ column_sum), grad


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


class _BltStream:
    """The next round, d, and the buffers B_i = sum_{j >= 1} theta_i^(j-1) w_{t-j}, [m, d].

    `shared` marks buffers handed out by `state_dict` (or taken from `load_state_dict`): they
    are copied before their next in-place update.
    """

    def __init__(self) -> None:
        self.cursor = RoundCursor()
        self.buffers: torch.Tensor | None = None
        self.shared = False


@dataclass(frozen=True)
class BltMechanism(Mechanism):
    """Buffered linear Toeplitz noise: C^-1 z with a Toeplitz C of rational generating function.

    McMahan, Xu, Zhang 2024, "Efficient and near-optimal noise generation for streaming
    differential privacy". C is lower-triangular Toeplitz with c_0 = 1 and c_j = sum_i omega_i
    theta_i^(j-1) (j >= 1, i < `buffers`), theta_i in (0, 1), omega_i >= 0, sum_i omega_i < 1.
    (theta, omega) are chosen by L-BFGS-B from a few starts to minimise the mean over the
    `rounds` rounds of the squared prefix-sum error of A C^-1 times sens(C; k, b)^2, i.e. the
    error at equal rho. Round t's noise is sigma w_t with C w = z, streamed as
    w_t = z_t - sum_i omega_i B_i, then B_i <- theta_i B_i + w_t, z_t ~ N(0, I) from
    (seed, NOISE, t). Parameters are optimised lazily, at first use, and cached on disk
    (`mechanisms.strategy_cache`). Rounds past `rounds` continue the same recursion.

    Guarantees:
        The coefficients are non-negative and non-increasing, so under a (k, b) bound the
        worst participation pattern is 0, b, ..., (k-1) b (McMahan et al. 2024, Thm 2). With
        user-level replace-with-zero adjacency and clipped updates (L2 norm <= 1 in clip
        norms), the release is rho-zCDP with rho = sensitivity_squared(n, k, b) / (2 sigma^2);
        C is lower-triangular, so this holds for adaptive updates (Denisov et al. 2022).
        Assumes secret noise: seeded noise (the default) is known to whoever knows the seed;
        `noise_seed="secret"` draws it from the OS (`mechanisms.base.NoiseSeed`).

    Memory:
        Between rounds, `buffers` float32 d-vectors, updated in place; while privatizing, z,
        one more d-vector and the output. A checkpoint shares the buffers (copied on the next
        update).

    Attributes:
        rounds: n, the planned rounds (injected by the run).
        max_participations: k (injected).
        min_separation: b (injected).
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm (> 0).
        seed: Seed of the noise stream (with noise_seed="seeded").
        noise_seed: "seeded" draws the noise from `seed` (reproducible; the default);
            "secret" from a 128-bit seed drawn from the OS and never logged (`NoiseSeed`).
        buffers: Number of buffers m, 1..8.
    """

    rounds: int
    max_participations: int
    min_separation: int
    noise_multiplier: float = 1.0
    seed: int = 0
    buffers: int = 3
    noise_seed: str = "seeded"
    _stream: _BltStream = field(default_factory=_BltStream, init=False, repr=False, compare=False)
    _noise: NoiseSeed = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("rounds", "max_participations", "min_separation"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        sigma = self.noise_multiplier
        require(math.isfinite(sigma) and sigma > 0, "noise_multiplier", f"must be > 0, got {sigma}")
        object.__setattr__(self, "_noise", NoiseSeed(self.seed, self.noise_seed))
        m = self.buffers
        require(1 <= m <= MAX_BUFFERS, "buffers", f"must be in 1..{MAX_BUFFERS}, got {m}")

    @cached_property
    def parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """(theta, omega), each of `buffers` values (optimised at first use, then cached)."""
        n, b = self.rounds, self.min_separation
        k = min(self.max_participations, -(-n // b))
        key: dict[str, int | str] = {"kind": "blt", "n": n, "k": k, "b": b}
        key.update(buffers=self.buffers, version=BLT_VERSION)

        def compute() -> dict[str, object]:
            theta, omega = optimise_blt(n, k, b, self.buffers)
            return {"theta": theta, "omega": omega}

        params = cached_strategy(key, compute)
        theta, omega = (np.asarray(params[name], dtype=float) for name in ("theta", "omega"))
        valid = theta.shape == omega.shape == (self.buffers,) and omega.sum() <= 1 + 1e-12
        if not valid or np.any((theta <= 0) | (theta >= 1) | (omega < 0)):
            raise ValueError(f"cached BLT strategy {key} is invalid: {theta}, {omega}")
        return theta, omega

    def coefficients(self, rounds: int) -> np.ndarray:
        """C's first column over `rounds` rounds."""
        return blt_coefficients(*self.parameters, rounds)

    def privatize(self, total: torch.Tensor, round_idx: int) -> torch.Tensor:
        """Returns x_t + sigma w_t, w_t = z_t - sum_i omega_i B_i, then B_i <- theta_i B_i + w_t.

        Raises:
            ValueError: If `round_idx` is not the next round, or the dimension changed.
        """
        theta, omega = (torch.tensor(v, dtype=torch.float32) for v in self.parameters)
        stream = self._stream
        dim = check_round(stream.cursor, total, round_idx)
        noise = standard_normal(dim, self._noise.value, round_idx)
        buffers = stream.buffers
        if buffers is None:
            buffers = torch.zeros(self.buffers, dim)
        elif stream.shared:
            buffers = buffers.clone()
        noise.sub_(torch.mv(buffers.t(), omega))
        torch.addcmul(noise.unsqueeze(0), theta.unsqueeze(1), buffers, out=buffers)  # in place
        stream.buffers, stream.shared = buffers, False
        stream.cursor.round += 1
        return add_noise(total, noise, self.noise_multiplier)

    def state_dict(self) -> dict[str, Any]:
        """The next round, the BLT parameters, and the buffers (shared: copied on write)."""
        self._stream.shared = True
        return {
            "round": self._stream.cursor.round,
            "seed": self._noise.value,
            "rounds": self.rounds,
            "max_participations": self.max_participations,
            "min_separation": self.min_separation,
            "num_buffers": self.buffers,
            "theta": torch.tensor(self.parameters[0], dtype=torch.float64),
            "omega": torch.tensor(self.parameters[1], dtype=torch.float64),
            "buffers": self._stream.buffers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues after the rounds that `state` had privatized.

        Raises:
            ValueError: If the state is of another configuration, its noise was built with
                other BLT parameters (a changed optimiser or cache), or its buffers do not fit.
        """
        expected = {
            "rounds": self.rounds,
            "max_participations": self.max_participations,
            "min_separation": self.min_separation,
            "num_buffers": self.buffers,
        }
        for key, mine in expected.items():
            if state[key] != mine:
                raise ValueError(f"state has {key}={state[key]}, this mechanism {mine}")
        theta, omega = self.parameters
        saved = (np.asarray(state["theta"]), np.asarray(state["omega"]))
        if not (np.array_equal(saved[0], theta) and np.array_equal(saved[1], omega)):
            raise ValueError("state's noise was built with other BLT parameters")
        self._noise.restore(state["seed"])
        round_idx, buffers = int(state["round"]), state["buffers"]
        if buffers is not None:
            buffers = buffers.detach().to("cpu", torch.float32)
            if buffers.dim() != 2 or buffers.shape[0] != self.buffers or round_idx == 0:
                raise ValueError(f"buffers of shape {tuple(buffers.shape)} at round {round_idx}")
        elif round_idx > 0:
            raise ValueError(f"round {round_idx} needs {self.buffers} buffers")
        self._stream.cursor.round = round_idx
        self._stream.cursor.dim = None if buffers is None else buffers.shape[1]
        self._stream.buffers = buffers
        self._stream.shared = True

    def row_keys(self, rounds: int) -> list[tuple[int, ...]]:
        """The NOISE-stream keys of the rows of `matrices(rounds)`'s C, in order: (t,)."""
        return [(t,) for t in range(rounds)]

    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense (C, C^-1), both lower-triangular Toeplitz, n x n."""
        theta, omega = self.parameters
        inverse = blt_inverse_coefficients(theta, omega, rounds)
        return toeplitz_lower(self.coefficients(rounds), rounds), toeplitz_lower(inverse, rounds)

    def sensitivity_squared(
        self, rounds: int, max_participations: int, min_separation: int
    ) -> float:
        """Max over (k, b) patterns of ||C sum_i e_i||^2, at participations 0, b, 2b, ..."""
        from mechanisms.sensitivity import toeplitz_sensitivity_squared

        return float(
            toeplitz_sensitivity_squared(
                self.coefficients(rounds), rounds, max_participations, min_separation
            )
        )
