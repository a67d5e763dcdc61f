"""What every file population shares: checking clients' arrays, then pooling and holding out.

A `FilePopulation` reads a path into `(where, ClientData)` pairs, one per client in file order,
raising `ConfigError(key, "<file>: <reason>")` for anything malformed; `check_feature_sizes`
checks them against each other, and `assemble` holds out clients (those of a separate test path,
or a seeded fraction of the training clients) and pools the arrays.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from common.errors import require
from common.rng import Stream, generator, require_seed
from engine.population.base import ClientData
from engine.population.datasets.arrays import ArrayPopulation, FederatedArrays
from engine.population.datasets.partition import split_clients

# Key of the PARTITION stream that picks the held-out clients of a file population.
_HELD_OUT_KEY = 0


def one_line(text: object) -> str:
    """`text` as a single line (library error messages may span several)."""
    return " ".join(str(text).split())


def client_from_raw(x: Any, y: Any) -> ClientData:
    """Checks and converts one client's raw examples.

    Args:
        x: Features, array-like [n, ...] of numbers; flattened to float32 [n, d].
        y: Labels, array-like [n] of non-negative integers (integral floats accepted).

    Raises:
        ValueError: With a one-line reason, if the arrays are not numeric, ragged, of different
            lengths, or the labels are not non-negative integers.
    """
    try:
        features = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"features are not a numeric array ({one_line(error)})") from None
    labels = np.asarray(y)
    if features.size == 0 and labels.size == 0:
        return ClientData(x=np.empty((0, 0), np.float32), y=np.empty(0, np.int64))
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if features.ndim == 0 or len(features) != len(labels):
        raise ValueError(f"{features.shape[:1]} feature rows but {len(labels)} labels")
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if len(labels) and (labels.dtype.kind not in "iu" or labels.min() < 0):
        raise ValueError(f"labels must be non-negative integers, got dtype {labels.dtype}")
    size = int(np.prod(features.shape[1:]))
    if size == 0:
        raise ValueError("examples have no features")
    features = features.reshape(len(labels), size)
    if not np.all(np.isfinite(features)):
        raise ValueError("features are not all finite")
    return ClientData(x=features, y=labels.astype(np.int64))


def check_feature_sizes(
    named: Sequence[tuple[str, ClientData]], key: str, first: tuple[str, int] | None = None
) -> tuple[str, int] | None:
    """Checks that all clients with examples have one feature size.

    Args:
        named: `(where, client)` pairs, `where` naming the client and its file for the message.
        key: Config key to blame.
        first: `(where, size)` of a client read before, that these must match; None for none.

    Returns:
        `(where, size)` of the first client with examples (`first` when given); None if none.

    Raises:
        ConfigError: `(key, "<where> has d features per example, <first where> has d0")`.
    """
    for where, client in named:
        if not len(client):
            continue
        size = client.x.shape[1]
        first = first or (where, size)
        require(
            size == first[1],
            key,
            f"{where} has {size} features per example, {first[0]} has {first[1]}",
        )
    return first


def assemble(
    train: Sequence[ClientData],
    test: Sequence[ClientData] | None,
    held_out_fraction: float,
    seed: int,
) -> FederatedArrays:
    """Pools loaded clients into a `FederatedArrays` (which drops clients without examples).

    Args:
        train: The clients read from `path`, in order, all of one feature size.
        test: The clients read from `test_path`, all held out, of the same feature size; None to
            hold out a seeded `held_out_fraction` of `train` instead (see `split_clients`).
        held_out_fraction: Share of `train` held out when there is no `test`.
        seed: Seed of that choice.

    Returns:
        Training clients in `train` order, held-out clients in `test` (or `train`) order;
        `num_classes` is one more than the largest label of either, and at least 2.

    Raises:
        ConfigError: No training client has examples ("path").
    """
    require(any(len(c) for c in train), "path", "no client has any example")
    held_out = [] if test is None else test
    num_classes = max(int(np.max(c.y, initial=1)) for c in [*train, *held_out]) + 1
    arrays = FederatedArrays.from_clients(train, held_out, num_classes)
    if test is not None:
        return arrays
    keep, held = split_clients(
        arrays.num_clients, held_out_fraction, generator(seed, Stream.PARTITION, _HELD_OUT_KEY)
    )
    return replace(arrays, train=arrays.train.select(keep), held_out=arrays.train.select(held))


class FilePopulation(ArrayPopulation):
    """Base of the populations read from files: the training clients, and held-out ones.

    A subclass is a frozen dataclass with the fields below (declared there, so that its own fields
    can come between them) and implements `read`. Held-out clients are those of `test_path`, or
    else a seeded `held_out_fraction` of the clients of `path`, taken out of training.

    Attributes:
        path: The training data.
        test_path: Optional data of the held-out clients.
        seed: Seed of the held-out choice when there is no `test_path`.
        held_out_fraction: Share of clients held out when there is no `test_path`, in [0, 1).
    """

    path: str
    test_path: str | None
    seed: int
    held_out_fraction: float

    def __post_init__(self) -> None:
        require_seed(self.seed)
        require(
            0 <= self.held_out_fraction < 1,
            "held_out_fraction",
            f"must be in [0, 1), got {self.held_out_fraction}",
        )
        super().__post_init__()

    @abstractmethod
    def read(self, path: str, key: str) -> list[tuple[str, ClientData]]:
        """Reads the clients of `path` as `(where, client)` pairs, in order.

        Raises:
            ConfigError: `(key, "<file>: <reason>")` for a missing or malformed file.
        """

    def load(self) -> FederatedArrays:
        """Reads the files; every client must have the feature size of the first."""
        train = self.read(self.path, "path")
        first = check_feature_sizes(train, "path")
        test = None
        if self.test_path:
            named = self.read(self.test_path, "test_path")
            check_feature_sizes(named, "test_path", first)
            test = [client for _, client in named]
        return assemble([c for _, c in train], test, self.held_out_fraction, self.seed)
