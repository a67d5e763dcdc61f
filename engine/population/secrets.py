"""A text population with Secret Sharer secrets planted in some clients' data.

Carlini et al. 2019 ("The Secret Sharer"): each secret, a random sequence of seq_len + 1 tokens
(`mechanisms.audit.exposure.secret_sequences`), is appended `r` times to one carrier client's
sequences. Nothing else changes: the carriers are ordinary clients with `r` more examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

from common.errors import require
from engine.population.base import ClientData, ClientRegistry, InputKind, Inputs, Population


def _frozen(values: np.ndarray) -> np.ndarray:
    """An int64 read-only copy of `values`."""
    out = np.array(values, dtype=np.int64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class WithSecrets(Population):
    """`population` with secret i appended `repetitions[i]` times to client `carriers[i]`'s data.

    A secret of tokens s_0..s_L (L = seq_len) is one example: x = s[:-1], y = s[1:]. A client
    that carries several secrets gets them in the order of `secrets`, after its own sequences.
    Held-out clients (ids >= N) never carry secrets. Compares by identity (numpy fields).

    Attributes:
        population: A population of token sequences (`InputKind.TOKENS`).
        secrets: int64 [S, seq_len + 1] token ids in [0, vocab_size).
        carriers: int64 [S] training client ids in [0, N), the client of each secret.
        repetitions: int64 [S] >= 1, the copies of each secret its client holds.

    Guarantees:
        A carrier is an ordinary client to the mechanism: its `r` copies are examples of that
        one client, clipped, noised and accounted with the rest of its update. So where the run
        is user-level DP (McMahan et al. 2018, "Learning Differentially Private Recurrent
        Language Models"), its guarantee covers the secret whatever `r`. The secrets are public
        randomness of the seed, independent of every client's data. The carrier's example count
        grows by `r`, as any client's with more data would (visible to example-weighted
        aggregation, as ever).
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.TOKENS)
    population: Population
    secrets: np.ndarray
    carriers: np.ndarray
    repetitions: np.ndarray
    num_clients: int = field(init=False)
    num_classes: int = field(init=False)
    num_features: int = field(init=False)

    def __post_init__(self) -> None:
        base = self.population
        gives = type(base).inputs
        require(
            gives is not None and gives.kind == InputKind.TOKENS,
            "audit.secrets",
            "secrets need a text population (token sequences); "
            f"{type(base).__name__} gives {gives.kind.value if gives else 'undeclared inputs'}",
        )
        for name in ("secrets", "carriers", "repetitions"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "num_clients", base.num_clients)
        object.__setattr__(self, "num_classes", base.num_classes)
        object.__setattr__(self, "num_features", base.num_features)
        self._validate()

    def _validate(self) -> None:
        """Raises `ConfigError("audit.secrets", ...)` unless the arrays fit the population."""
        secrets, carriers, reps = self.secrets, self.carriers, self.repetitions
        shape = (len(carriers), self.num_features + 1)
        require(
            secrets.ndim == 2 and secrets.shape == shape and reps.shape == carriers.shape,
            "audit.secrets",
            f"expected secrets {shape} and {shape[0]} carriers and repetitions, got "
            f"{secrets.shape}, {carriers.shape} and {reps.shape}",
        )
        require(
            bool(((secrets >= 0) & (secrets < self.num_classes)).all()),
            "audit.secrets",
            f"secret tokens must be in [0, {self.num_classes})",
        )
        require(
            bool(((carriers >= 0) & (carriers < self.num_clients)).all()),
            "audit.secrets",
            f"carriers must be training clients, in [0, {self.num_clients})",
        )
        require(bool((reps >= 1).all()), "audit.secrets", "repetitions must be >= 1")

    @cached_property
    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """Carriers sorted, and the cumulative repetitions in that order (with a leading 0)."""
        order = np.argsort(self.carriers, kind="stable")
        cumulative = np.concatenate([[0], np.cumsum(self.repetitions[order])])
        return self.carriers[order], cumulative.astype(np.int64)

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        """The base counts (int64), plus the repetitions of the secrets each client carries."""
        ids = np.asarray(ids, dtype=np.int64)
        carriers, cumulative = self._lookup
        extra = (
            cumulative[np.searchsorted(carriers, ids, side="right")]
            - cumulative[np.searchsorted(carriers, ids, side="left")]
        )
        return np.asarray(self.population.num_examples(ids), dtype=np.int64) + extra

    def client_data(self, client_id: int) -> ClientData:
        """The client's own sequences, then each of its secrets repeated (none for most)."""
        data = self.population.client_data(client_id)
        mine = np.flatnonzero(self.carriers == client_id)
        if mine.size == 0:
            return data
        planted = np.repeat(self.secrets[mine], self.repetitions[mine], axis=0)
        x = np.concatenate([data.x.astype(np.int64, copy=False), planted[:, :-1]])
        y = np.concatenate([data.y.astype(np.int64, copy=False), planted[:, 1:]])
        return ClientData(x=x, y=y)

    def held_out_ids(self, count: int) -> np.ndarray:
        """The population's held-out clients (they carry no secrets)."""
        return self.population.held_out_ids(count)

    def registry(self) -> ClientRegistry:
        """The population's registry, with the carriers' counts grown by their repetitions."""
        counts = self.population.registry().num_examples.copy()
        np.add.at(counts, self.carriers, self.repetitions.astype(counts.dtype))
        return ClientRegistry(num_examples=counts)
