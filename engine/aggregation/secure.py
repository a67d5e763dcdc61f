"""Secure aggregation, simulated: chunks of encoded updates summed modulo 2^bits.

With a distributed DP mechanism (`mechanisms.ddp`), each worker encodes its chunk's clipped
updates (rotation, scale, conditional rounding, the clients' noise shares, mod m) and ships
only their modular sum. Modular addition is associative, so the total is bit-identical for any
number of workers; the server decodes it once (`ModularPartial.dense_sum`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from common.rng import Stream, generator
from engine.aggregation.base import DenseAggregator, Partial, checked_layout
from engine.training import ClientUpdate, ParameterLayout
from mechanisms.ddp.codec import CodecSpec, add_mod, decode, encode_chunk, wrapped_coordinates
from mechanisms.ddp.rotation import padded_dim, rotation_signs

SHARES = 2  # NOISE-stream key of the clients' noise shares (1: the rotation's signs)
# Coordinates of the clients' updates stacked for one encoding call: a chunk of many clients
# of a large model is encoded group by group, never copied whole.
ENCODE_COORDINATES = 1 << 24


@dataclass
class ModularPartial(Partial):
    """The modular sum of a chunk's encoded updates (and the counts every partial keeps).

    Until `SecureAggregator.seal` encodes them, the chunk's clipped updates wait in `rows`, in
    the worker; a sealed partial holds none, and `update_sum` stays empty: what travels to the
    server is the modular sum alone.

    Attributes:
        modular_sum: int64 [d'] in [0, 2^bits).
        codec: The encoding (bits, scale, norm bound, noise share, d).
        seed: The run's seed; with `round_idx`, the public rotation.
        round_idx: The round (-1 while empty).
        rounding_retries: Conditional-rounding retries of the summed clients.
        unreduced: float64 [d'], the same sum without the modulus: a simulator-only
            diagnostic (how many coordinates wrapped around), never decoded or released.
        rows: The chunk's clipped updates before sealing.
    """

    modular_sum: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    codec: CodecSpec | None = None
    seed: int = 0
    round_idx: int = -1
    rounding_retries: int = 0
    unreduced: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    rows: list[np.ndarray] = field(default_factory=list)

    def add(self, update: ClientUpdate, weight: float, bit: float = 0.0) -> None:
        """Keeps one client's clipped update for `seal` (every client has weight 1)."""
        self.rows.append(update.delta)
        codec = self._codec()
        self._count(update, weight, bit, padded_dim(codec.dim) * codec.bits // 8)

    def merge(self, other: Partial) -> None:
        """Adds another sealed partial: counts, and the modular sums mod 2^bits."""
        if not isinstance(other, ModularPartial) or other.rows or self.rows:
            raise ValueError("only sealed modular partials merge")
        super().merge(other)
        self.rounding_retries += other.rounding_retries
        if other.round_idx < 0:
            return
        if self.round_idx < 0:
            self.round_idx, self.seed = other.round_idx, other.seed
        self.unreduced = self.unreduced + other.unreduced
        self.modular_sum = add_mod(self.modular_sum, other.modular_sum, self._codec().bits)

    def dense_sum(self) -> np.ndarray:
        """The decoded sum, float32 [d]: centred mod m, divided by the scale, rotated back."""
        codec = self._codec()
        if self.round_idx < 0:
            return np.zeros(codec.dim, np.float32)
        signs = rotation_signs(self.seed, self.round_idx, padded_dim(codec.dim))
        return decode(self.modular_sum, signs, codec).cpu().numpy()

    def metrics(self) -> dict[str, float]:
        """The encoding (public) and the rounding retries (data-dependent: simulator only)."""
        codec = self._codec()
        return {
            "privacy/ddp_bits": float(codec.bits),
            "privacy/ddp_scale": codec.scale,
            "privacy/ddp_local_noise": codec.local_noise,
            "system/ddp_rounding_retries": float(self.rounding_retries),
            "system/ddp_wrapped_coordinates": float(
                wrapped_coordinates(self.unreduced, codec.bits) if self.unreduced.size else 0
            ),
        }

    @property
    def nbytes(self) -> int:
        """The modular sum's bytes."""
        return int(self.modular_sum.nbytes)

    def _codec(self) -> CodecSpec:
        if self.codec is None:
            raise ValueError("a modular partial needs its codec")
        return self.codec


@dataclass(frozen=True)
class SecureAggregator(DenseAggregator):
    """Dense sums of distributed-DP encodings under simulated secure aggregation.

    Guarantees:
        No partial that leaves a worker holds an individual client's encoded (or clear)
        update: `seal` replaces the chunk's rows by their modular sum, and the server reduces
        and decodes sums only (the honest-but-curious server of Kairouz, Liu, Steinke 2021).

    Attributes:
        weighting: "uniform" (every client 1, as clipping needs).
        codec: The mechanism's encoding.
        seed: The run's seed.
    """

    weighting: str = "uniform"
    codec: CodecSpec | None = None
    seed: int = 0

    def zeros(self, dim: int, layout: ParameterLayout | None = None) -> ModularPartial:
        """An empty modular partial of the model's dimension."""
        checked_layout(dim, layout)
        padded = padded_dim(dim)
        return ModularPartial(
            np.zeros(0, np.float32),
            modular_sum=np.zeros(padded, np.int64),
            codec=self.codec,
            unreduced=np.zeros(padded, np.float64),
        )

    def seal(self, partial: Partial, round_idx: int, client_ids: Sequence[int]) -> Partial:
        """Encodes the chunk's clients (one noise share each, from (seed, round, client)).

        Raises:
            ValueError: `partial` is not this aggregator's, or holds other clients.
        """
        if not isinstance(partial, ModularPartial) or len(partial.rows) != len(client_ids):
            raise ValueError("seal takes this aggregator's partial of the chunk's clients")
        codec = partial._codec()
        partial.seed, partial.round_idx = self.seed, round_idx
        signs = rotation_signs(self.seed, round_idx, padded_dim(codec.dim))
        group = max(1, ENCODE_COORDINATES // padded_dim(codec.dim))  # rows stacked at a time
        for start in range(0, len(client_ids), group):
            ids = client_ids[start : start + group]
            rows = torch.from_numpy(np.stack(partial.rows[start : start + group]))
            rngs = [generator(self.seed, Stream.NOISE, SHARES, round_idx, c) for c in ids]
            encoded = encode_chunk(rows, signs, codec, rngs, wide=True)
            assert encoded.wide is not None
            partial.modular_sum = add_mod(partial.modular_sum, encoded.total, codec.bits)
            partial.rounding_retries += encoded.retries
            partial.unreduced = partial.unreduced + encoded.wide
        partial.rows = []
        return partial
