"""The noise-mechanism interface: correlated Gaussian noise C^-1 z, in units of the clip norm."""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from engine.errors import require
from engine.rng import require_seed

NOISE_SEEDS = ("seeded", "secret")
SECRET_SEED_BITS = 128


class NoiseSeed:
    """The seed of a mechanism's noise stream: the configured `seed`, or a secret one.

    A mutable holder inside a frozen mechanism: a resumed secret run adopts the seed of its
    checkpoint, the only place that seed is ever written.

    Guarantees:
        "secret" draws 128 bits from the operating system's cryptographic source
        (`secrets.randbits`) when the mechanism is built; the value appears in no config, log
        or error message, only in the mechanism's `state_dict` (so in checkpoints). "seeded"
        noise is reproducible from the config's seed, which is logged with the run: anyone who
        knows it can subtract the noise, so the DP guarantees assume secret noise. The noise
        itself comes from PyTorch's CPU generator (a Mersenne Twister, not a cryptographic
        generator), keyed for each round and tree node with 64 bits that `SeedSequence` derives
        from the seed and the keys: enough for a rehearsal, where nobody attacks the generator;
        a deployment draws its noise from a cryptographic generator.

    Args:
        seed: The configured seed (used when `kind` is "seeded").
        kind: "seeded" or "secret".
    """

    def __init__(self, seed: int, kind: str) -> None:
        require_seed(seed)
        require(kind in NOISE_SEEDS, "noise_seed", f"must be one of {NOISE_SEEDS}, got {kind!r}")
        self.kind = kind
        self.value = secrets.randbits(SECRET_SEED_BITS) if kind == "secret" else seed

    def restore(self, saved: Any) -> None:
        """Continues a stream whose `state_dict` stored `saved` as its seed.

        Raises:
            ValueError: If a seeded stream's state is of another seed, or a secret one's state
                holds no seed of the secret's size.
        """
        if self.kind == "secret":
            if not isinstance(saved, int) or not 0 <= saved < 2**SECRET_SEED_BITS:
                raise ValueError("the state holds no secret noise seed")
            self.value = saved
        elif saved != self.value:  # the values stay unsaid: the state's may be a secret
            raise ValueError("state is of another noise seed than this mechanism's")


class Mechanism(ABC):
    """Extension point: adds privacy noise to the summed update of each round, on the server.

    The server hands the mechanism each round's sum in units of the clip norm (every client's
    contribution has L2 norm <= 1), and the mechanism returns x_t + noise_multiplier * (C^-1 z)_t,
    with z ~ N(0, I) per coordinate and per row of C, drawn from (seed, round): reproducible, so
    the state can be checkpointed and the noise regenerated instead of stored. Rounds must be
    privatized in order, 0, 1, 2, ...

    Guarantees:
        For clients that participate under a (k, b) bound, the released sequence is rho-zCDP
        with rho = sensitivity_squared(n, k, b) / (2 noise_multiplier^2) (Denisov et al. 2022;
        Choquette-Choo et al. 2023), under user-level replace-with-zero adjacency. Assumes the
        noise is secret: a seeded stream (the default, for reproducible simulation) is known to
        whoever knows the seed; `noise_seed="secret"` draws it from the OS (`NoiseSeed`).

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm.
    """

    noise_multiplier: float

    @abstractmethod
    def privatize(self, total: torch.Tensor, round_idx: int) -> torch.Tensor:
        """Returns round `round_idx`'s released value x_t + sigma (C^-1 z)_t (a new tensor)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the noise sequence after a restart."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""

    @abstractmethod
    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """The dense strategy of a run of `rounds` rounds, for analysis and tests.

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
