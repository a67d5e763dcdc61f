"""The noise-mechanism interface: correlated Gaussian noise C^-1 z, in units of the clip norm.

A mechanism is a frozen value: its configuration and, once `prepare`d for a run, its
factorisation. What changes from round to round is a `NoiseState` that the caller holds (the
parameter server, which checkpoints it), as with jax_privacy's noise adders: `init_state(dim)`
starts a stream and `privatize(total, round, state)` returns the release and the next state.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.errors import require
from common.rng import Stream, require_seed, torch_generator
from mechanisms.participation import participations_that_fit

NOISE_SEEDS = ("seeded", "secret")
SECRET_SEED_BITS = 128


def require_noise_multiplier(sigma: float, key: str = "noise_multiplier") -> None:
    """Raises `ConfigError(key)` unless sigma is finite and > 0: the one check of a noise scale."""
    require(math.isfinite(sigma) and sigma > 0, key, f"must be finite and > 0, got {sigma}")


def require_run(rounds: int, max_participations: int, min_separation: int) -> None:
    """Raises `ConfigError` unless the run's n, k and b are each >= 1 (what `prepare` takes)."""
    for key, value in (
        ("rounds", rounds),
        ("max_participations", max_participations),
        ("min_separation", min_separation),
    ):
        require(value >= 1, key, f"must be >= 1, got {value}")


def digest(*arrays: Any) -> str:
    """A short fingerprint of float64 values: what a state records of its factorisation."""
    data = b"".join(np.asarray(a, dtype=np.float64).tobytes() for a in arrays)
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class NoiseSeed:
    """The seed of a mechanism's noise stream: the configured `seed`, or a secret one.

    Guarantees:
        "secret" draws 128 bits from the operating system's cryptographic source
        (`secrets.randbits`) each time a stream starts (`draw`); the value appears in no
        config, log or error message, only in the stream's `NoiseState` (so in checkpoints).
        "seeded" noise is reproducible from the config's seed, which is logged with the run:
        anyone who knows it can subtract the noise, so the DP guarantees assume secret noise.
        The noise itself comes from PyTorch's CPU generator (a Mersenne Twister, not a
        cryptographic generator), keyed for each round and tree node with 64 bits that
        `SeedSequence` derives from the seed and the keys: enough for a rehearsal, where nobody
        attacks the generator; a deployment draws its noise from a cryptographic generator.

    Attributes:
        seed: The configured seed (used when `kind` is "seeded").
        kind: "seeded" or "secret".
    """

    seed: int
    kind: str

    def __post_init__(self) -> None:
        require_seed(self.seed)
        kinds = NOISE_SEEDS
        require(self.kind in kinds, "noise_seed", f"must be one of {kinds}, got {self.kind!r}")

    def draw(self) -> int:
        """The seed of a new stream: `seed`, or 128 fresh secret bits."""
        return secrets.randbits(SECRET_SEED_BITS) if self.kind == "secret" else self.seed

    def check(self, value: Any) -> None:
        """Checks that a stream of seed `value` may be continued as this one's.

        Raises:
            ValueError: If a seeded stream's value is another seed, or a secret one's is no
                seed of the secret's size (the values stay unsaid: one may be a secret).
        """
        if self.kind == "secret":
            if type(value) is not int or not 0 <= value < 2**SECRET_SEED_BITS:
                raise ValueError("the state holds no secret noise seed")
        elif value != self.seed:
            raise ValueError("state is of another noise seed than this mechanism's")


@dataclass(frozen=True, eq=False)
class NoiseState:
    """Where a noise stream stands between two rounds: all that its next rounds depend on.

    The caller holds it (the parameter server, which checkpoints `as_dict()`); the noise itself
    is regenerated from the seed, so only the stored noise of correlated mechanisms is kept.
    `Mechanism.privatize` consumes a state: its buffers live on, updated in place, in the next.

    Guarantees:
        A secret seed is held here and in `as_dict()` (so in checkpoints) only: the repr shows
        neither the seed nor the noise, and no error message of this class or of the checks of
        `NoisyMechanism` quotes them.

    Attributes:
        round: The next round to privatize.
        dim: The coordinates of every total.
        seed: The stream's seed (a secret one: 128 bits, never logged).
        buffers: The stored noise by name, float32 tensors [..., dim] on the host.
        factorisation: Fingerprint of the factorisation the buffers were built with (the
            coefficients' digest, the tree's shape; "" for C = I), so that a stream never
            continues with another C.
    """

    round: int
    dim: int
    seed: int = field(repr=False)  # a secret one must not reach a log through a repr
    buffers: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False)
    factorisation: str = ""

    def __post_init__(self) -> None:
        if type(self.round) is not int or self.round < 0:
            raise ValueError(f"state round must be an int >= 0, got {self.round!r}")
        if type(self.dim) is not int or self.dim < 1:
            raise ValueError(f"state dim must be an int >= 1, got {self.dim!r}")
        if type(self.seed) is not int or self.seed < 0:
            raise ValueError("state seed must be an int >= 0")
        for name, buffer in self.buffers.items():
            if not isinstance(buffer, torch.Tensor) or buffer.shape[-1:] != (self.dim,):
                raise ValueError(f"state buffer {name!r} is not a tensor [..., {self.dim}]")

    def as_dict(self) -> dict[str, Any]:
        """The state as ints, a str and copies of the buffers (for a checkpoint)."""
        return {
            "round": self.round,
            "dim": self.dim,
            "seed": self.seed,
            "buffers": {name: buffer.clone() for name, buffer in self.buffers.items()},
            "factorisation": self.factorisation,
        }

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> NoiseState:
        """The state that `as_dict` returned (its buffers taken, as float32 on the host).

        Raises:
            ValueError: If `saved` is not such a state.
        """
        if set(saved) != {"round", "dim", "seed", "buffers", "factorisation"}:
            raise ValueError(f"not a noise state: keys {sorted(saved)}")
        buffers, factorisation = saved["buffers"], saved["factorisation"]
        if not isinstance(buffers, Mapping) or not all(
            isinstance(b, torch.Tensor) for b in buffers.values()
        ):
            raise ValueError("noise state buffers must be tensors by name")
        if not isinstance(factorisation, str):
            raise ValueError("noise state factorisation must be a str")
        kept = {str(k): b.detach().to("cpu", torch.float32) for k, b in buffers.items()}
        return cls(saved["round"], saved["dim"], saved["seed"], kept, factorisation)

    def copy(self) -> NoiseState:
        """The same state with its own buffers (`privatize` consumes the one it is given)."""
        return NoiseState.from_dict(self.as_dict())


class Mechanism(ABC):
    """Extension point: adds privacy noise to the summed update of each round, on the server.

    The server hands the mechanism each round's sum in units of the clip norm (every client's
    contribution has L2 norm <= 1), and the mechanism returns x_t + noise_multiplier * (C^-1 z)_t,
    with z ~ N(0, I) per coordinate and per row of C, drawn from (seed, round): reproducible, so
    the state holds only the noise that later rounds reuse. Rounds are privatized in order,
    0, 1, 2, ..., each with the state the previous one returned.

    Guarantees:
        For clients that participate under a (k, b) bound, the released sequence is rho-zCDP
        with rho = sensitivity_squared(n, k, b) / (2 noise_multiplier^2) (Denisov et al. 2022;
        Choquette-Choo et al. 2023), under user-level replace-with-zero adjacency, provided the
        mechanism that adds the noise is the `prepare`d one the accountant reads. Assumes the
        noise is secret: a seeded stream (the default, for reproducible simulation) is known to
        whoever knows the seed; `noise_seed="secret"` draws it from the OS (`NoiseSeed`).

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm.
    """

    noise_multiplier: float

    def prepare(self, rounds: int, max_participations: int, min_separation: int) -> Mechanism:
        """The mechanism for a run of n rounds under a (k, b) bound, its factorisation set.

        Optimised factorisations (banded, BLT) are computed here, once per run (or read from
        the disk cache), so that the accountant and the noise use the very same C. Mechanisms
        with nothing to optimise return themselves.
        """
        return self

    @abstractmethod
    def init_state(self, dim: int) -> NoiseState:
        """The state of a new stream of d-coordinate totals, before round 0.

        A secret seed is drawn here, so it lives only in the states (and the checkpoints).
        """

    @abstractmethod
    def privatize(
        self, total: torch.Tensor, round_idx: int, state: NoiseState
    ) -> tuple[torch.Tensor, NoiseState]:
        """Round `round_idx`'s release x_t + sigma (C^-1 z)_t (a new tensor) and the next state.

        `state` is consumed, as a donated buffer is in JAX: its buffers may be updated in place
        and live on in the returned state, so only the returned one may be used afterwards
        (`NoiseState.copy` keeps one). A state refused (out of order, another dimension, seed
        or factorisation) raises ValueError before anything is changed.
        """

    @abstractmethod
    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """The dense factorisation of a run of `rounds` rounds, for analysis and tests.

        Returns:
            (C, C_inv): the encoder C [m, n] whose rows each get one fresh N(0, 1) per
            coordinate, and the decoder C_inv [n, m] that maps them to each round's noise, with
            C_inv @ C = I. The noise of round t is noise_multiplier * (C_inv @ z)[t].
        """

    @abstractmethod
    def sensitivity_squared(
        self, rounds: int, max_participations: int, min_separation: int
    ) -> float:
        """Max over participation patterns pi of || C sum_{i in pi} e_i ||^2.

        Patterns are sets of at most k rounds in [0, rounds), any two at least b apart.
        """


class IndependentNoise(Mechanism):
    """C = I: independent noise every round (Gaussian, no noise, the distributed mechanisms)."""

    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """C = C_inv = I: one fresh row of noise per round."""
        return np.eye(rounds), np.eye(rounds)

    def sensitivity_squared(
        self, rounds: int, max_participations: int, min_separation: int
    ) -> float:
        """As for C = I: the participations that fit, min(k, ceil(n / b))."""
        return float(participations_that_fit(rounds, min_separation, max_participations))


@dataclass(frozen=True)
class NoisyMechanism(Mechanism):
    """What every mechanism with noise shares: sigma, the seed, and the checks of a state.

    Guarantees:
        As `Mechanism`. A state is continued only from the round it stands at, with totals of
        its dimension, its seed (`NoiseSeed.check`) and its factorisation.

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm (> 0).
        seed: Seed of the noise stream (with noise_seed="seeded").
        noise_seed: "seeded" draws the noise from `seed` (reproducible; the default);
            "secret" from a 128-bit seed drawn from the OS and never logged (`NoiseSeed`).
    """

    noise_multiplier: float = 1.0
    seed: int = 0
    noise_seed: str = "seeded"

    def __post_init__(self) -> None:
        require_noise_multiplier(self.noise_multiplier)
        NoiseSeed(self.seed, self.noise_seed)

    def init_state(self, dim: int) -> NoiseState:
        """Round 0, a new seed, and the buffers of `_buffers` (none by default)."""
        seed = NoiseSeed(self.seed, self.noise_seed).draw()
        return NoiseState(0, dim, seed, self._buffers(dim), self._factorisation_digest())

    def _buffers(self, dim: int) -> dict[str, torch.Tensor]:
        """The stored noise of a new stream."""
        return {}

    def _factorisation_digest(self) -> str:
        """The fingerprint of the factorisation the noise is built with ("" for none)."""
        return ""

    def _check(self, total: torch.Tensor, round_idx: int, state: NoiseState) -> None:
        """Checks that `state` can privatize `total` as round `round_idx`.

        Raises:
            ValueError: rounds out of order, another dimension, a non-floating total, or a
                state of another seed or factorisation.
        """
        if round_idx != state.round:
            raise ValueError(
                f"rounds must be privatized in order: expected {state.round}, got {round_idx}"
            )
        if not total.is_floating_point():
            raise ValueError(f"total must be a floating tensor, got {total.dtype}")
        if total.numel() != state.dim:
            raise ValueError(f"total has {total.numel()} coordinates, the state {state.dim}")
        NoiseSeed(self.seed, self.noise_seed).check(state.seed)
        if state.factorisation != self._factorisation_digest():
            raise ValueError("state's noise was built with another factorisation")


def standard_normal(
    dim: int, seed: int, *keys: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Returns d float32 N(0, 1) draws from the stream (seed, NOISE, *keys), into `out` if given."""
    generator = torch_generator(seed, Stream.NOISE, *keys)
    if out is None:
        return torch.randn(dim, generator=generator)
    return torch.randn(dim, generator=generator, out=out)


def add_noise(
    total: torch.Tensor, noise: torch.Tensor, noise_multiplier: float, reuse: bool = False
) -> torch.Tensor:
    """Returns total + noise_multiplier * noise in `total`'s shape, dtype and device.

    Args:
        total: The round's sum (left as is).
        noise: d float32 values, any device.
        noise_multiplier: sigma.
        reuse: Write the result into `noise` (which the caller gives up) when it has `total`'s
            dtype and device: one pass and no new d-vector (a fresh one costs page faults
            that take about as long as the pass itself).
    """
    flat = total.reshape(-1)
    if reuse and noise.dtype == total.dtype and noise.device == total.device:
        return torch.add(flat, noise, alpha=noise_multiplier, out=noise).reshape(total.shape)
    noise = noise.to(device=total.device, dtype=total.dtype)
    return torch.add(flat, noise, alpha=noise_multiplier).reshape(total.shape)
