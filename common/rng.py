"""Random streams. Every stream is a pure function of (seed, stream, keys); none is global.

A client's data depends on (seed, client id); its local shuffling on (seed, round, client id);
the cohort on (seed, round). That makes a client's update independent of which worker trains it,
how the cohort is chunked, and whether the chunk is retried.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch
from scipy.special import ndtri

from common.errors import require


class Stream(IntEnum):
    """Independent random streams, one per purpose."""

    MODEL_INIT = 0
    CLIENT_DATA = 1
    CLIENT_TRAIN = 2
    SELECTION = 3
    TASK = 4
    CLIENT_SIZE = 5
    AVAILABILITY = 6
    DEVICE = 7
    DROPOUT = 8
    PARTITION = 9
    NOISE = 10
    FAULTS = 11
    AUDIT = 12


MAX_SEED = 2**32 - 1


def require_seed(seed: int, key: str = "seed") -> None:
    """Raises `ConfigError(key, ...)` unless `seed` is in [0, 2**32)."""
    require(0 <= seed <= MAX_SEED, key, f"must be in [0, 2**32), got {seed}")


def generator(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """Returns a fresh generator for (seed, stream, *keys).

    The number of keys is part of the entropy: SeedSequence pads with zeros, which would
    otherwise make (seed, stream) and (seed, stream, 0) the same stream.
    """
    entropy = [seed, int(stream), len(keys), *keys]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def torch_generator(seed: int, stream: Stream, *keys: int) -> torch.Generator:
    """A torch CPU generator for (seed, stream, *keys), seeded like `generator`."""
    state = np.random.SeedSequence([seed, int(stream), len(keys), *keys]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, stream: Stream, ids: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in (0, 1), one per id: vectorised, no per-id state.

    Args:
        seed: Run seed.
        stream: Which stream (so that two columns of one client are independent).
        ids: Non-negative integer ids, any shape.

    Returns:
        float64 array of the shape of `ids`.
    """
    key = _splitmix64(np.array([seed * 1_000_003 + int(stream)], dtype=np.uint64))
    with np.errstate(over="ignore"):
        bits = _splitmix64(np.asarray(ids, dtype=np.uint64) * _GOLDEN ^ key)
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    # Above 2**52, x + 0.5 rounds half to even: the top hash would give exactly 1.0.
    return np.minimum(u, 1.0 - 2.0**-53)


def lognormal(
    seed: int, stream: Stream, ids: np.ndarray, median: float, sigma: float
) -> np.ndarray:
    """Heavy-tailed positive values, one per id: median * exp(sigma * N(0, 1))."""
    return median * np.exp(sigma * ndtri(uniform(seed, stream, ids)))


def lognormal_counts(
    seed: int, stream: Stream, ids: np.ndarray, median: float, sigma: float, low: int, high: int
) -> np.ndarray:
    """Heavy-tailed integer counts, one per id: round(lognormal(...)), clipped to [low, high]."""
    counts = np.rint(lognormal(seed, stream, ids, median, sigma))
    return np.clip(counts, low, high).astype(np.int64)
