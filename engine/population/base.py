"""Populations: who the clients are and what data each holds.

A population is a pure function from client id to that client's data; nothing per client is kept
except the columns of `ClientRegistry`, and only the cohort's data is ever built, inside the worker
that trains it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import ClassVar

import numpy as np

from common.errors import require
from common.rng import Stream, generator, lognormal_counts, require_seed

_REGISTRY_BLOCK = 1 << 16


@dataclass(frozen=True)
class ClientData:
    """One client's examples.

    Classifiers: features `x` (float32, [n, ...]) and labels `y` (int64, [n]). Language models:
    token ids `x` (int64, [n, seq]) and next tokens `y` (int64, [n, seq]). Recommenders: item ids
    `x` (int64, [n]) and rating levels `y` (int64, [n]).
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


class InputKind(Enum):
    """What a client's `x` holds, and so what the population's sizes mean (see `ClientData`).

    FEATURES: float vectors [n, d]; `num_features` is d, `num_classes` the number of labels.
    TOKENS: token ids [n, seq] with next tokens y; `num_features` is seq, `num_classes` the
    vocabulary size. ITEMS: rated item ids [n] with rating levels y; `num_features` is the item
    count, `num_classes` the number of rating levels.
    """

    FEATURES = "feature vectors"
    TOKENS = "token sequences"
    ITEMS = "rated item ids"


@dataclass(frozen=True)
class Inputs:
    """The inputs a population gives, or that a model needs (`engine.app.fit` checks they fit).

    Attributes:
        kind: What a client's `x` holds.
        num_features: The number of features when it is fixed (a CNN needs 28 x 28 = 784); None
            when any will do (a model) or when the config or the data files decide (a
            population).
    """

    kind: InputKind
    num_features: int | None = None


@dataclass(frozen=True)
class ClientRegistry:
    """Columnar per-client state of the whole population, one array element per client.

    Attributes:
        num_examples: int32 [N], each client's example count.
    """

    num_examples: np.ndarray

    @property
    def num_clients(self) -> int:
        """Population size N."""
        return len(self.num_examples)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns."""
        return int(self.num_examples.nbytes)


class Population(ABC):
    """A federated population of `num_clients` clients with ids 0..N-1.

    Held-out clients, used only for evaluation, have ids outside that range and never join a
    cohort.
    """

    num_clients: int
    num_classes: int
    num_features: int
    # What its clients' x hold; None: undeclared, so no model is checked against it.
    inputs: ClassVar[Inputs | None] = None

    @abstractmethod
    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        """Example counts (int64) of the given clients, vectorised."""

    @abstractmethod
    def client_data(self, client_id: int) -> ClientData:
        """Builds one client's data, deterministically from the seed and `client_id`."""

    @abstractmethod
    def held_out_ids(self, count: int) -> np.ndarray:
        """Ids of `count` fixed held-out clients for evaluation."""

    def registry(self) -> ClientRegistry:
        """Builds the columnar registry of the training population, block by block."""
        counts = np.empty(self.num_clients, dtype=np.int32)
        for start in range(0, self.num_clients, _REGISTRY_BLOCK):
            stop = min(start + _REGISTRY_BLOCK, self.num_clients)
            counts[start:stop] = self.num_examples(np.arange(start, stop))
        return ClientRegistry(num_examples=counts)


class LognormalExamples:
    """Mixin of populations whose example counts are lognormal, from the fields below."""

    seed: int
    median_examples: float
    sigma_examples: float
    min_examples: int
    max_examples: int

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        """Lognormal example counts, a pure function of (seed, id)."""
        return lognormal_counts(
            self.seed,
            Stream.CLIENT_SIZE,
            ids,
            self.median_examples,
            self.sigma_examples,
            self.min_examples,
            self.max_examples,
        )


@dataclass(frozen=True)
class SyntheticPopulation(LognormalExamples, Population):
    """Non-IID synthetic classification in the style of LEAF's Synthetic(alpha, beta).

    A global linear model (W*, b*) is drawn from the seed. Client k perturbs it,
    W_k = W* + alpha * N(0, 1), b_k = b* + alpha * N(0, 1) (model heterogeneity), and draws a
    feature mean v_k ~ N(B_k, 1) with B_k ~ N(0, beta) (feature heterogeneity, hence label skew).
    Its features are x ~ N(v_k, diag(j^-1.2)) and its labels y = argmax(W_k^T x + b_k), as in
    Li et al. 2020 (FedProx), Section 5.1. Example counts are lognormal: heavy-tailed.

    Attributes:
        num_clients: Population size N.
        seed: Seed of all the data.
        num_features: Input dimension.
        num_classes: Number of labels.
        alpha: Spread of the per-client models around the global one.
        beta: Spread of the per-client feature means.
        median_examples: Median example count per client.
        sigma_examples: Log-scale spread of the example counts.
        min_examples: Smallest example count.
        max_examples: Largest example count.
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.FEATURES)  # num_features is set by the config
    num_clients: int = 1_000_000
    seed: int = 0
    num_features: int = 60
    num_classes: int = 10
    alpha: float = 0.5
    beta: float = 0.5
    median_examples: float = 20.0
    sigma_examples: float = 1.0
    min_examples: int = 2
    max_examples: int = 1000

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require_seed(self.seed)
        require(self.num_features >= 1, "num_features", "must be >= 1")
        require(self.num_classes >= 2, "num_classes", "must be >= 2")
        require(self.alpha >= 0, "alpha", "must be >= 0")
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.median_examples > 0, "median_examples", "must be > 0")
        require(self.sigma_examples >= 0, "sigma_examples", "must be >= 0")
        require(self.min_examples >= 1, "min_examples", "must be >= 1")
        require(self.max_examples >= self.min_examples, "max_examples", "must be >= min_examples")

    @cached_property
    def _task(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = generator(self.seed, Stream.TASK)
        weights = rng.standard_normal((self.num_features, self.num_classes))
        bias = rng.standard_normal(self.num_classes)
        feature_std = np.arange(1, self.num_features + 1, dtype=np.float64) ** -0.6
        return weights, bias, feature_std

    def client_data(self, client_id: int) -> ClientData:
        """Builds client `client_id`'s examples."""
        weights, bias, feature_std = self._task
        n = int(self.num_examples(np.array([client_id]))[0])
        rng = generator(self.seed, Stream.CLIENT_DATA, client_id)
        w = weights + self.alpha * rng.standard_normal(weights.shape)
        b = bias + self.alpha * rng.standard_normal(bias.shape)
        mean = rng.normal(rng.normal(0.0, np.sqrt(self.beta)), 1.0, self.num_features)
        x = mean + rng.standard_normal((n, self.num_features)) * feature_std
        y = np.argmax(x @ w + b, axis=1)
        return ClientData(x=x.astype(np.float32), y=y.astype(np.int64))

    def held_out_ids(self, count: int) -> np.ndarray:
        """The `count` clients right after the population: same distribution, never trained."""
        return np.arange(self.num_clients, self.num_clients + count, dtype=np.int64)
