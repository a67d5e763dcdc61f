"""Handwritten digits, Dirichlet-partitioned: a small real task that needs no download.

scikit-learn ships the UCI optical digits (1797 images of 8x8 pixels, 16 grey levels, 10 classes)
inside its package; `load_digits` reads them from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from common.errors import require
from common.rng import Stream, generator, require_seed
from engine.population.base import InputKind, Inputs
from engine.population.datasets.arrays import ArrayPopulation, FederatedArrays, Partition
from engine.population.datasets.partition import dirichlet_partition

# Keys of the PARTITION streams: train/test split, training clients, held-out clients.
_SPLIT, _TRAIN, _HELD_OUT = 1, 2, 3
_MAX_PIXEL = 16.0


@dataclass(frozen=True)
class DigitsDirichlet(ArrayPopulation):
    """scikit-learn's digits, label-skewed over clients by a Dirichlet partition.

    Pixels are scaled to [0, 1] (64 float32 features, 10 classes). A seeded random
    `test_fraction` of the images is set aside; the rest is split among `num_clients` training
    clients by `dirichlet_partition` (each gets >= 1 image), and the test images among
    `num_held_out_clients` held-out clients (ids N, N+1, ...) the same way, with the same alpha,
    so evaluation clients are as skewed as training ones.

    Attributes:
        num_clients: Number of training clients N, at most the number of training images.
        alpha: Dirichlet concentration, > 0: small is skewed, large is close to IID.
        seed: Seed of the split and of both partitions.
        test_fraction: Share of the images held out, in (0, 1).
        num_held_out_clients: Number of held-out clients, at most the number of test images.
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.FEATURES, num_features=64)  # 8 x 8 pixels
    num_clients: int = 100
    alpha: float = 0.5
    seed: int = 0
    test_fraction: float = 0.2
    num_held_out_clients: int = 20

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        require_seed(self.seed)
        require(
            0 < self.test_fraction < 1,
            "test_fraction",
            f"must be in (0, 1), got {self.test_fraction}",
        )
        require(
            self.num_held_out_clients >= 1,
            "num_held_out_clients",
            f"must be >= 1, got {self.num_held_out_clients}",
        )
        super().__post_init__()

    def load(self) -> FederatedArrays:
        """Loads the images from scikit-learn's package and partitions them."""
        from sklearn.datasets import load_digits  # Imported here: slow, and only needed here.

        pixels, labels = load_digits(return_X_y=True)
        num_test = round(self.test_fraction * len(labels))
        num_train = len(labels) - num_test
        require(
            self.num_clients <= num_train,
            "num_clients",
            f"must be <= {num_train}, the number of training images, got {self.num_clients}",
        )
        require(
            self.num_held_out_clients <= num_test,
            "num_held_out_clients",
            f"must be <= {num_test}, the number of test images, got {self.num_held_out_clients}",
        )
        labels = labels.astype(np.int64)
        order = generator(self.seed, Stream.PARTITION, _SPLIT).permutation(len(labels))
        parts = []
        for rows, clients, key in (
            (order[num_test:], self.num_clients, _TRAIN),
            (order[:num_test], self.num_held_out_clients, _HELD_OUT),
        ):
            rng = generator(self.seed, Stream.PARTITION, key)
            indices, offsets = dirichlet_partition(labels[rows], clients, self.alpha, rng)
            parts.append(Partition(rows[indices].astype(np.int64), offsets))
        return FederatedArrays(
            x=(pixels / _MAX_PIXEL).astype(np.float32),
            y=labels,
            train=parts[0],
            held_out=parts[1],
            num_classes=10,
        )
