"""Partitioners: split a centralized dataset among clients, or a set of clients in two.

Every function takes its `numpy.random.Generator`; callers derive it with
`common.rng.generator(seed, Stream.PARTITION, key)`, so a partition is a pure function of the seed.
Partitions are CSR-style: `(indices, offsets)`, both int64, client k owning the examples
`indices[offsets[k]:offsets[k + 1]]` (in increasing index order).
"""

from __future__ import annotations

import numpy as np

from engine.population.datasets.arrays import csr_offsets


def _csr(owners: np.ndarray, num_clients: int) -> tuple[np.ndarray, np.ndarray]:
    indices = np.argsort(owners, kind="stable").astype(np.int64)
    return indices, csr_offsets(np.bincount(owners, minlength=num_clients))


def _check(num_examples: int, num_clients: int, min_examples: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if min_examples < 0:
        raise ValueError(f"min_examples must be >= 0, got {min_examples}")
    if num_clients * min_examples > num_examples:
        raise ValueError(
            f"{num_examples} examples cannot give {num_clients} clients {min_examples} each"
        )


def _top_up(
    owners: np.ndarray, num_clients: int, min_examples: int, rng: np.random.Generator
) -> None:
    """Moves examples, in place, so that every client owns at least `min_examples`.

    Water-filling: the largest clients are cut down to a common level, just low enough to cover
    the total deficit (the first few of them, by id, give one example less, to cover it exactly),
    and the examples taken, random ones of each, are dealt at random to the short clients.
    """
    sizes = np.bincount(owners, minlength=num_clients)
    need = np.maximum(min_examples - sizes, 0)
    total = int(need.sum())
    if total == 0:
        return
    # The largest level whose excess covers the deficit; feasible since n >= K * min_examples.
    low, high = min_examples, int(sizes.max())
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if np.maximum(sizes - mid, 0).sum() >= total else (low, mid - 1)
    take = np.maximum(sizes - low, 0)
    take[np.flatnonzero(take)[: int(take.sum()) - total]] -= 1
    candidates = np.flatnonzero(take[owners] > 0)
    order = candidates[np.lexsort((rng.random(len(candidates)), owners[candidates]))]
    starts = np.searchsorted(owners[order], owners[order])
    chosen = order[np.arange(len(order)) - starts < take[owners[order]]]
    owners[rng.permutation(chosen)] = np.repeat(np.arange(num_clients), need)


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_examples: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Label-skewed partition (Hsu et al. 2019, "Measuring the effects of non-identical data").

    For each class, the clients' shares of its examples are drawn from Dirichlet(alpha, ..., alpha)
    and its examples dealt out by a multinomial draw with those shares. Small alpha gives each
    client few classes; large alpha approaches an IID split of the labels.

    Clients left with fewer than `min_examples` examples are topped up from the largest clients,
    which are cut down to a common level just low enough to cover the deficit (never below
    `min_examples`); the examples moved are random ones of theirs. No draw is repeated, so the
    function always terminates, and only as many examples move as the deficit needs.

    Args:
        labels: Integer labels [n], one per example.
        num_clients: Number of clients K.
        alpha: Dirichlet concentration, > 0.
        rng: Source of randomness; the partition is a function of its state.
        min_examples: Fewest examples any client ends with.

    Returns:
        `(indices, offsets)`: int64 [n] and int64 [K + 1]; every example is assigned exactly once.

    Raises:
        ValueError: alpha <= 0, or fewer than K * min_examples examples.
    """
    labels = np.asarray(labels)
    _check(len(labels), num_clients, min_examples)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    owners = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shares = rng.dirichlet(np.full(num_clients, alpha))
        counts = rng.multinomial(len(members), shares / shares.sum())
        owners[rng.permutation(members)] = np.repeat(np.arange(num_clients), counts)
    _top_up(owners, num_clients, min_examples, rng)
    return _csr(owners, num_clients)


def iid_partition(
    num_examples: int, num_clients: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random partition into clients whose sizes differ by at most one.

    Args:
        num_examples: Number of examples n.
        num_clients: Number of clients K <= n.
        rng: Source of randomness.

    Returns:
        `(indices, offsets)` as for `dirichlet_partition`.
    """
    _check(num_examples, num_clients, 1)
    owners = np.empty(num_examples, dtype=np.int64)
    owners[rng.permutation(num_examples)] = np.arange(num_examples) % num_clients
    return _csr(owners, num_clients)


def split_clients(
    num_clients: int, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Chooses the held-out clients among `num_clients`, at random.

    round(fraction * num_clients) clients are held out, but at least one when fraction > 0 and
    never all of them: one client always stays for training.

    Args:
        num_clients: Number of clients to split.
        fraction: Share of them to hold out, in [0, 1).
        rng: Source of randomness.

    Returns:
        `(train, held_out)`: the two sets of client positions, each in increasing order.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    count = round(fraction * num_clients)
    if fraction > 0:
        count = max(count, 1)
    count = max(min(count, num_clients - 1), 0)
    held = np.zeros(num_clients, dtype=bool)
    held[rng.choice(num_clients, size=count, replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)
