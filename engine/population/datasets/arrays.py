"""An in-memory federated dataset: one pool of examples and the clients that own them.

Every population backed by real data is served by a `FederatedArrays`: the examples of all clients
in two arrays (`x` float32 [n, d], `y` int64 [n]) and two CSR-style partitions of them, one for
the training clients and one for the held-out (evaluation-only) clients.

Client ids: training clients are 0..N-1 in partition order; held-out client j has id N + j, so
held-out ids are never training ids and `held_out_ids(count)` is N, N+1, ... (at most H of them).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from engine.population.base import ClientData, Population


def csr_offsets(sizes: np.ndarray) -> np.ndarray:
    """CSR offsets, int64 [k + 1] from 0, of clients owning `sizes[k]` examples each."""
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes, dtype=np.int64)])


@dataclass(frozen=True)
class Partition:
    """Which examples each client owns, CSR-style.

    Client k owns the examples `indices[offsets[k]:offsets[k + 1]]` of the pool.

    Attributes:
        indices: int64 [m], indices into the pool, client by client.
        offsets: int64 [k + 1], non-decreasing, from 0 to m.
    """

    indices: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if self.indices.dtype != np.int64 or self.offsets.dtype != np.int64:
            raise ValueError("indices and offsets must be int64")
        if self.indices.ndim != 1 or self.offsets.ndim != 1 or len(self.offsets) < 1:
            raise ValueError("indices and offsets must be 1-D, offsets non-empty")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.indices):
            raise ValueError("offsets must run from 0 to len(indices)")
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")

    @classmethod
    def from_sizes(cls, sizes: np.ndarray, start: int = 0) -> Partition:
        """Contiguous clients: client k owns the next `sizes[k]` examples after `start`."""
        offsets = csr_offsets(sizes)
        return cls(np.arange(start, start + offsets[-1], dtype=np.int64), offsets)

    def select(self, clients: np.ndarray) -> Partition:
        """The partition of just `clients` (positions in this one), in increasing order."""
        chosen = np.zeros(self.num_clients, dtype=bool)
        chosen[clients] = True
        sizes = self.sizes()
        return Partition(self.indices[np.repeat(chosen, sizes)], csr_offsets(sizes[chosen]))

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.offsets) - 1

    def sizes(self) -> np.ndarray:
        """Example count (int64) of every client."""
        return np.diff(self.offsets)

    def members(self, client: int) -> np.ndarray:
        """Pool indices of `client`'s examples."""
        return self.indices[self.offsets[client] : self.offsets[client + 1]]


@dataclass(frozen=True)
class FederatedArrays:
    """A pool of examples split among training and held-out clients.

    Attributes:
        x: float32 [n, d], features, flattened.
        y: int64 [n], labels in [0, num_classes).
        train: Partition of the training clients; each owns >= 1 example.
        held_out: Partition of the held-out clients; each owns >= 1 example.
        num_classes: Number of labels.
    """

    x: np.ndarray
    y: np.ndarray
    train: Partition
    held_out: Partition
    num_classes: int

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.x.ndim != 2:
            raise ValueError(f"x must be float32 [n, d], got {self.x.dtype} {self.x.shape}")
        if self.y.dtype != np.int64 or self.y.shape != (len(self.x),):
            raise ValueError(f"y must be int64 [{len(self.x)}], got {self.y.dtype} {self.y.shape}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        if self.train.num_clients < 1:
            raise ValueError("there must be at least one training client")
        for part in (self.train, self.held_out):
            if len(part.indices) and (part.indices.min() < 0 or part.indices.max() >= len(self.y)):
                raise ValueError("partition indices must lie in the pool")
            if np.any(part.sizes() < 1):
                raise ValueError("every client must own at least one example")

    @classmethod
    def from_clients(
        cls, train: Sequence[ClientData], held_out: Sequence[ClientData], num_classes: int
    ) -> FederatedArrays:
        """Pools per-client arrays, training clients first; clients without examples are dropped.

        Args:
            train: Each training client's examples, x of any shape [n, ...].
            held_out: Each held-out client's examples, same feature size.
            num_classes: Number of labels.
        """
        clients = [c for c in [*train, *held_out] if len(c)]
        num_train = sum(1 for c in train if len(c))
        xs = [c.x.reshape(len(c), -1) for c in clients]
        if len({x.shape[1] for x in xs}) > 1:
            raise ValueError("all clients must have the same number of features")
        sizes = np.array([len(c) for c in clients], dtype=np.int64)
        x = np.concatenate(xs) if xs else np.empty((0, 0))
        y = np.concatenate([c.y for c in clients]) if clients else np.empty(0)
        return cls(
            x=x.astype(np.float32, copy=False),
            y=y.astype(np.int64, copy=False),
            train=Partition.from_sizes(sizes[:num_train]),
            held_out=Partition.from_sizes(sizes[num_train:], start=int(sizes[:num_train].sum())),
            num_classes=num_classes,
        )

    @property
    def num_clients(self) -> int:
        """Number of training clients N."""
        return self.train.num_clients

    @property
    def num_features(self) -> int:
        """Flattened input dimension d."""
        return int(self.x.shape[1])

    @cached_property
    def _sizes(self) -> np.ndarray:
        return np.concatenate([self.train.sizes(), self.held_out.sizes()])

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        """Example counts (int64) of training or held-out clients.

        Raises:
            IndexError: An id is neither a training nor a held-out client.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self._sizes)):
            raise IndexError(f"client ids must lie in [0, {len(self._sizes)})")
        return self._sizes[ids]

    def client_data(self, client_id: int) -> ClientData:
        """One client's examples, copied out of the pool.

        Raises:
            IndexError: `client_id` is neither a training nor a held-out client.
        """
        client_id = int(client_id)
        if 0 <= client_id < self.num_clients:
            rows = self.train.members(client_id)
        elif 0 <= client_id - self.num_clients < self.held_out.num_clients:
            rows = self.held_out.members(client_id - self.num_clients)
        else:
            raise IndexError(f"client id {client_id} is out of range")
        return ClientData(x=self.x[rows], y=self.y[rows])

    def held_out_ids(self, count: int) -> np.ndarray:
        """Ids N, N+1, ... of the first min(count, H) held-out clients."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return np.arange(
            self.num_clients, self.num_clients + min(count, self.held_out.num_clients)
        ).astype(np.int64)


@dataclass(frozen=True)
class ArrayPopulation(Population):
    """Base of the populations served from a `FederatedArrays`, loaded once, lazily.

    A subclass is a frozen dataclass of config fields that implements `load`; its `__post_init__`
    validates the fields, then calls `super().__post_init__()`, which loads the data (so a bad file
    fails at config time) and sets the three sizes below. The loaded arrays travel with the object
    when it is pickled.

    Attributes:
        num_clients: Number of training clients N (derived from the data unless a config field).
        num_classes: Number of labels.
        num_features: Flattened input dimension.
    """

    num_clients: int = field(init=False, repr=False, compare=False)
    num_classes: int = field(init=False, repr=False, compare=False)
    num_features: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = self.arrays
        object.__setattr__(self, "num_clients", data.num_clients)
        object.__setattr__(self, "num_classes", data.num_classes)
        object.__setattr__(self, "num_features", data.num_features)

    @abstractmethod
    def load(self) -> FederatedArrays:
        """Reads or builds the data; raises `ConfigError` naming the field (and file) at fault."""

    @cached_property
    def arrays(self) -> FederatedArrays:
        """The loaded data."""
        return self.load()

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        """Example counts (int64) of training or held-out clients, vectorised."""
        return self.arrays.num_examples(ids)

    def client_data(self, client_id: int) -> ClientData:
        """Client `client_id`'s examples (a training or a held-out client)."""
        return self.arrays.client_data(client_id)

    def held_out_ids(self, count: int) -> np.ndarray:
        """Ids N, N+1, ... of at most `count` held-out clients (fewer if there are fewer)."""
        return self.arrays.held_out_ids(count)
