"""What every file loader shares: checking one client's arrays and assembling the population.

A loader reads a path into a list of `ClientData`, one per client in file order, raising
`ConfigError(key, "<file>: <reason>")` for anything malformed; `assemble` then holds out clients
(from a separate test path, or a seeded fraction of the training clients) and pools the arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.datasets.arrays import FederatedArrays
from engine.datasets.partition import split_clients
from engine.errors import require
from engine.population import ClientData
from engine.rng import Stream, generator, require_seed

# Key of the PARTITION stream that picks the held-out clients of a file population.
_HELD_OUT_KEY = 0


def check_split_fields(seed: int, held_out_fraction: float) -> None:
    """Validates the `seed` and `held_out_fraction` fields of a file population."""
    require_seed(seed)
    require(
        0 <= held_out_fraction < 1,
        "held_out_fraction",
        f"must be in [0, 1), got {held_out_fraction}",
    )


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


def check_feature_sizes(named: Sequence[tuple[str, ClientData]], key: str) -> None:
    """Checks that all clients with examples have one feature size.

    Args:
        named: `(where, client)` pairs, `where` naming the client and its file for the message.
        key: Config key to blame.

    Raises:
        ConfigError: `(key, "<where> has d features per example, <first where> has d0")`.
    """
    sized = [(where, c.x.shape[1]) for where, c in named if len(c)]
    for where, size in sized[1:]:
        first, first_size = sized[0]
        require(
            size == first_size,
            key,
            f"{where} has {size} features per example, {first} has {first_size}",
        )


def feature_size(clients: Sequence[ClientData]) -> int | None:
    """The common feature size of clients with examples; None if none has examples."""
    return next((c.x.shape[1] for c in clients if len(c)), None)


def assemble(
    train: Sequence[ClientData],
    test: Sequence[ClientData] | None,
    held_out_fraction: float,
    seed: int,
    test_path: str | None = None,
) -> FederatedArrays:
    """Pools loaded clients into a `FederatedArrays`, dropping clients without examples.

    Args:
        train: The clients read from `path`, in order.
        test: The clients read from `test_path`, all held out; None to hold out a seeded
            `held_out_fraction` of `train` instead (see `split_clients`).
        held_out_fraction: Share of `train` held out when there is no `test`.
        seed: Seed of that choice.
        test_path: Where `test` came from, for error messages.

    Returns:
        Training clients in `train` order, held-out clients in `test` (or `train`) order;
        `num_classes` is one more than the largest label of either, and at least 2.

    Raises:
        ConfigError: No training client has examples ("path"), or the test data has another
            feature size ("test_path").
    """
    train = [c for c in train if len(c)]
    require(len(train) > 0, "path", "no client has any example")
    if test is None:
        keep, held = split_clients(
            len(train), held_out_fraction, generator(seed, Stream.PARTITION, _HELD_OUT_KEY)
        )
        train, test = [train[i] for i in keep], [train[i] for i in held]
    size, test_size = feature_size(train), feature_size(test)
    require(
        test_size is None or test_size == size,
        "test_path",
        f"{test_path}: {test_size} features per example, the training data has {size}",
    )
    labels = [int(c.y.max()) for c in [*train, *test] if len(c)]
    return FederatedArrays.from_clients(train, test, num_classes=max(*labels, 1) + 1)
