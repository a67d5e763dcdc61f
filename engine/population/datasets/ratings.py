"""Synthetic MovieLens-like ratings from a planted low-rank model, one user per client.

The data is a pure function of (seed, user id): the item side (factors, biases, popularity) is
drawn once from the seed, and each user's factor, bias, rated items and rating noise from
(seed, user id). Only the cohort's users are ever built.

A client's `ClientData` is one user's ratings: `x` holds the rated item ids (int64 [n], distinct,
in random order) and `y` the ratings as classes 0..4 (int64 [n], for 1..5 stars). Ratings are
classes rather than float targets so that the existing classification metrics (accuracy,
cross-entropy, majority-class rate) apply unchanged. `num_features` is the item count: the model
receives it (and `num_classes`) from the population, and sizes its item table with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
from scipy.special import ndtri

from common.errors import require
from common.rng import Stream, generator, lognormal_counts, require_seed
from engine.population.base import ClientData, InputKind, Inputs, Population

# Cumulative share of 1, 2, 3 and 4 stars in MovieLens-100K (the rest are 5 stars):
# 6.1%, 11.4%, 27.1%, 34.2%, 21.2%.
STAR_CDF = (0.061, 0.175, 0.446, 0.788)
NUM_LEVELS = len(STAR_CDF) + 1


@dataclass(frozen=True)
class RatingsPopulation(Population):
    """Explicit 5-level ratings of `num_items` items by `num_clients` users (one per client).

    Planted model: user u rates item i with the latent score
    z = b_u + b_i + <p_u, q_i> + eps, where b_u ~ N(0, user_bias_std^2),
    b_i ~ N(0, item_bias_std^2), p_u ~ N(0, interaction_std^2 / rank) per coordinate (so that
    <p_u, q_i> has variance interaction_std^2), q_i ~ N(0, 1) per coordinate and
    eps ~ N(0, noise_std^2). The score is cut into 5 levels at the quantiles of its marginal
    normal distribution that give MovieLens-100K's star shares (`STAR_CDF`).

    Which items a user rates: the count is lognormal (heavy-tailed, like MovieLens), the items
    are drawn without replacement with Zipf popularity weights (rank^-popularity_exponent over a
    seeded permutation of the items), by Gumbel top-k in O(num_items) per user.

    Attributes:
        num_clients: Number of training users N; held-out users have ids N, N+1, ...
        num_items: Number of items; also `num_features`, the model's item table size.
        seed: Seed of all the data.
        rank: Rank of the planted factors.
        median_ratings: Median number of ratings per user.
        sigma_ratings: Log-scale spread of the rating counts.
        min_ratings: Fewest ratings per user.
        max_ratings: Most ratings per user; counts are also capped at `num_items`.
        user_bias_std: Spread of the user biases.
        item_bias_std: Spread of the item biases.
        interaction_std: Spread of the user-item interaction <p_u, q_i>.
        noise_std: Spread of the rating noise.
        popularity_exponent: Zipf exponent of item popularity; 0 is uniform.
        num_classes: Rating levels, always 5 (not a constructor argument).
        num_features: Equals `num_items` (not a constructor argument).
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.ITEMS)
    num_clients: int = 100_000
    num_items: int = 2000
    seed: int = 0
    rank: int = 8
    median_ratings: float = 20.0
    sigma_ratings: float = 1.0
    min_ratings: int = 4
    max_ratings: int = 500
    user_bias_std: float = 0.5
    item_bias_std: float = 0.5
    interaction_std: float = 1.0
    noise_std: float = 0.5
    popularity_exponent: float = 0.8
    num_classes: int = field(init=False, default=NUM_LEVELS)
    num_features: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require(self.num_items >= 2, "num_items", f"must be >= 2, got {self.num_items}")
        require_seed(self.seed)
        require(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        require(self.median_ratings > 0, "median_ratings", "must be > 0")
        require(self.sigma_ratings >= 0, "sigma_ratings", "must be >= 0")
        require(self.min_ratings >= 1, "min_ratings", "must be >= 1")
        require(self.max_ratings >= self.min_ratings, "max_ratings", "must be >= min_ratings")
        for key in ("user_bias_std", "item_bias_std", "interaction_std", "noise_std"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(self.popularity_exponent >= 0, "popularity_exponent", "must be >= 0")
        object.__setattr__(self, "num_features", self.num_items)

    @cached_property
    def thresholds(self) -> np.ndarray:
        """The score cut points between consecutive rating levels, float64 [4]."""
        total_std = np.sqrt(
            self.user_bias_std**2
            + self.item_bias_std**2
            + self.interaction_std**2
            + self.noise_std**2
        )
        return float(total_std) * ndtri(np.array(STAR_CDF))

    @cached_property
    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The item side, from the seed: factors [I, rank], biases [I], log-popularity [I]."""
        rng = generator(self.seed, Stream.TASK)
        factors = rng.standard_normal((self.num_items, self.rank))
        biases = self.item_bias_std * rng.standard_normal(self.num_items)
        popularity_rank = rng.permutation(self.num_items) + 1.0
        return factors, biases, -self.popularity_exponent * np.log(popularity_rank)

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        """Lognormal rating counts, a pure function of (seed, id)."""
        return lognormal_counts(
            self.seed,
            Stream.CLIENT_SIZE,
            ids,
            self.median_ratings,
            self.sigma_ratings,
            min(self.min_ratings, self.num_items),
            min(self.max_ratings, self.num_items),
        )

    def user(self, client_id: int) -> tuple[np.ndarray, float, np.random.Generator]:
        """User `client_id`'s planted factor [rank] and bias, and its stream for the rest."""
        rng = generator(self.seed, Stream.CLIENT_DATA, client_id)
        factor = rng.standard_normal(self.rank) * (self.interaction_std / np.sqrt(self.rank))
        bias = self.user_bias_std * float(rng.standard_normal())
        return factor, bias, rng

    def scores(self, client_id: int, item_ids: np.ndarray) -> np.ndarray:
        """Noise-free planted scores b_u + b_i + <p_u, q_i> of one user for the given items."""
        factors, biases, _ = self.items
        factor, bias, _ = self.user(client_id)
        return bias + biases[item_ids] + factors[item_ids] @ factor

    def client_data(self, client_id: int) -> ClientData:
        """User `client_id`'s ratings: item ids (x) and rating levels 0..4 (y)."""
        factors, biases, log_popularity = self.items
        n = int(self.num_examples(np.array([client_id]))[0])
        factor, bias, rng = self.user(client_id)
        keys = log_popularity + rng.gumbel(size=self.num_items)
        chosen = np.argpartition(-keys, n - 1)[:n] if n < self.num_items else np.arange(n)
        item_ids = rng.permutation(chosen).astype(np.int64)
        score = bias + biases[item_ids] + factors[item_ids] @ factor
        score = score + self.noise_std * rng.standard_normal(n)
        levels = np.searchsorted(self.thresholds, score).astype(np.int64)
        return ClientData(x=item_ids, y=levels)

    def held_out_ids(self, count: int) -> np.ndarray:
        """The `count` users right after the population: same distribution, never trained."""
        require(count >= 0, "count", f"must be >= 0, got {count}")
        return np.arange(self.num_clients, self.num_clients + count, dtype=np.int64)
