"""A FEMNIST-like population: 28 x 28 handwritten-style characters, 62 classes, one writer each.

No download: each class is a seeded glyph of a few pen strokes, and each client is a writer with
a style of its own: where on the page it writes (a shift), how thick its pen is (a blend with
a blurred glyph), how hard it presses (a gain), and which characters it writes most (a
Dirichlet label skew, as in LEAF's FEMNIST where writers differ in what they write). Each
example then jitters by a pixel and gets pixel noise. Everything is a pure function of
(seed, client id), built in O(n x 784) per client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

from common.errors import require
from common.rng import Stream, generator, require_seed
from engine.population.base import ClientData, InputKind, Inputs, LognormalExamples, Population

SIDE = 28
_STROKES = 3
_POINTS = 24  # pen positions rasterised along each stroke
_PEN = 1.1  # stroke radius, pixels


def glyphs(seed: int, num_classes: int) -> np.ndarray:
    """One glyph per class, float64 [C, 28, 28] in [0, 1]: a few straight pen strokes."""
    rng = generator(seed, Stream.TASK)
    ends = rng.uniform(5, SIDE - 5, size=(num_classes, _STROKES, 2, 2))
    t = np.linspace(0, 1, _POINTS)[:, None]
    points = ends[:, :, :1] + t * (ends[:, :, 1:] - ends[:, :, :1])  # [C, S, P, 2]
    points = points.reshape(num_classes, -1, 2)
    grid = np.stack(np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij"), -1)
    grid = grid.reshape(-1, 2).astype(np.float64)
    out = np.empty((num_classes, SIDE * SIDE))
    for c in range(num_classes):  # C x (S*P) x 784 distances, one class at a time
        d2 = ((grid[:, None, :] - points[c][None]) ** 2).sum(-1)
        out[c] = np.exp(-d2 / (2 * _PEN**2)).max(axis=1)
    return out.reshape(num_classes, SIDE, SIDE)


def blurred(images: np.ndarray) -> np.ndarray:
    """A 3 x 3 box blur of images [..., 28, 28] (zero outside), same shape."""
    padded = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(1, 1), (1, 1)])
    total = sum(padded[..., i : i + SIDE, j : j + SIDE] for i in range(3) for j in range(3))
    return np.asarray(total) / 9.0


@dataclass(frozen=True)
class FemnistLikePopulation(LognormalExamples, Population):
    """Writers of 28 x 28 characters (see the module docstring); x is flat float32 [n, 784].

    Attributes:
        num_clients: Population size N (writers).
        seed: Seed of all the data.
        num_classes: Characters (62 in FEMNIST: digits, upper and lower case).
        label_skew: Dirichlet concentration of a writer's character mix (smaller: more skew).
        max_shift: Largest shift of a writer's characters, pixels.
        noise: Standard deviation of the pixel noise.
        median_examples: Median example count per writer.
        sigma_examples: Log-scale spread of the example counts.
        min_examples: Fewest examples per writer.
        max_examples: Most examples per writer.
        num_features: 784 (derived).
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.FEATURES, num_features=SIDE * SIDE)
    num_clients: int = 100_000
    seed: int = 0
    num_classes: int = 62
    label_skew: float = 0.5
    max_shift: int = 2
    noise: float = 0.3
    median_examples: float = 40.0
    sigma_examples: float = 0.8
    min_examples: int = 5
    max_examples: int = 400
    num_features: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require_seed(self.seed)
        require(self.num_classes >= 2, "num_classes", f"must be >= 2, got {self.num_classes}")
        require(self.label_skew > 0, "label_skew", f"must be > 0, got {self.label_skew}")
        require(0 <= self.max_shift <= 6, "max_shift", f"must be in [0, 6], got {self.max_shift}")
        require(self.noise >= 0, "noise", f"must be >= 0, got {self.noise}")
        require(self.median_examples > 0, "median_examples", "must be > 0")
        require(self.sigma_examples >= 0, "sigma_examples", "must be >= 0")
        require(self.min_examples >= 1, "min_examples", "must be >= 1")
        require(self.max_examples >= self.min_examples, "max_examples", "must be >= min_examples")
        object.__setattr__(self, "num_features", SIDE * SIDE)

    @cached_property
    def _glyphs(self) -> tuple[np.ndarray, np.ndarray]:
        """The class glyphs and their blurred (thick-pen) versions, [C, 28, 28] each."""
        sharp = glyphs(self.seed, self.num_classes)
        return sharp, blurred(sharp)

    def client_data(self, client_id: int) -> ClientData:
        """Writer `client_id`'s characters: x float32 [n, 784], y int64 [n]."""
        sharp, thick = self._glyphs
        n = int(self.num_examples(np.array([client_id]))[0])
        rng = generator(self.seed, Stream.CLIENT_DATA, client_id)
        mix = rng.dirichlet(np.full(self.num_classes, self.label_skew))
        shift = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
        pen, gain = rng.uniform(0, 1), rng.uniform(0.7, 1.3)
        y = rng.choice(self.num_classes, size=n, p=mix)
        style = gain * ((1 - pen) * sharp[y] + pen * thick[y])
        jitter = rng.integers(-1, 2, size=(n, 2)) + shift
        images = np.empty_like(style)
        for dx, dy in {(int(a), int(b)) for a, b in jitter}:
            rows = np.flatnonzero((jitter[:, 0] == dx) & (jitter[:, 1] == dy))
            images[rows] = np.roll(style[rows], (dx, dy), axis=(1, 2))
        images += self.noise * rng.standard_normal(images.shape)
        return ClientData(x=images.reshape(n, -1).astype(np.float32), y=y.astype(np.int64))

    def held_out_ids(self, count: int) -> np.ndarray:
        """The `count` writers right after the population: same distribution, never trained."""
        return np.arange(self.num_clients, self.num_clients + count, dtype=np.int64)
