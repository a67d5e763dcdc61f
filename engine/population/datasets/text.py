"""Synthetic federated next-word prediction: Zipfian words, per-client topics, bigram habits.

Every client's data is a pure function of (seed, client id), built in O(n x seq) without any
O(vocabulary) work: the population keeps two cumulative distributions (global and topic Zipf
laws) and small per-topic tables, and draws ranks by inverse-CDF `searchsorted`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

from common.errors import require
from common.rng import Stream, generator, lognormal_counts, require_seed
from engine.population.base import ClientData, InputKind, Inputs, Population

# Modulus of the per-topic successor hash (a prime; keeps (a * token + b) within int64).
_PRIME = 2**31 - 1


def zipf_cdf(size: int, exponent: float) -> np.ndarray:
    """Cumulative distribution, float64 [size], of P(rank r) proportional to (r + 1)^-exponent."""
    weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


@dataclass(frozen=True)
class ZipfTextPopulation(Population):
    """Next-word prediction over a Zipfian vocabulary, with topics and bigram structure.

    Token ids are global frequency ranks: token r has probability proportional to
    (r + 1)^-zipf_exponent under the global unigram law. Each of `num_topics` topics is a
    seeded random subset of `topic_vocab` tokens in its own Zipf order, and has a successor map
    succ_t(v) = topic_t[((a_t v + b_t) mod p) mod topic_vocab] (a seeded hash into the topic).

    Client k holds 1..max_topics_per_client topics. Each of its sequences picks one of them; a
    token is drawn from that topic with probability `topic_strength`, else from the global law,
    and then, with probability `bigram_strength`, replaced by the successor of the token before
    it. A sequence has seq_len + 1 tokens: x is the first seq_len, y the last seq_len (x shifted
    by one), both int64 [n, seq_len]. Sequence counts are lognormal.

    Attributes:
        num_clients: Population size N.
        seed: Seed of all the data.
        vocab_size: Vocabulary size V (the model's `num_classes`).
        seq_len: Tokens per input sequence (the model's `num_features`).
        zipf_exponent: Exponent of the global and topic Zipf laws.
        num_topics: Number of topics.
        topic_vocab: Tokens per topic, at most V.
        max_topics_per_client: Most topics one client holds (each holds 1 to this many).
        topic_strength: Probability that a token is drawn from the sequence's topic.
        bigram_strength: Probability that a token is the successor of the one before it.
        median_sequences: Median sequence count per client.
        sigma_sequences: Log-scale spread of the sequence counts.
        min_sequences: Fewest sequences per client.
        max_sequences: Most sequences per client.
        num_features: seq_len (derived).
        num_classes: vocab_size (derived).
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.TOKENS)
    num_clients: int = 100_000
    seed: int = 0
    vocab_size: int = 10_000
    seq_len: int = 20
    zipf_exponent: float = 1.1
    num_topics: int = 20
    topic_vocab: int = 1000
    max_topics_per_client: int = 2
    topic_strength: float = 0.5
    bigram_strength: float = 0.5
    median_sequences: float = 10.0
    sigma_sequences: float = 1.0
    min_sequences: int = 1
    max_sequences: int = 200
    num_features: int = field(init=False, repr=False, compare=False)
    num_classes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require_seed(self.seed)
        require(self.vocab_size >= 2, "vocab_size", f"must be >= 2, got {self.vocab_size}")
        require(self.vocab_size < _PRIME, "vocab_size", f"must be < {_PRIME}")
        require(self.seq_len >= 1, "seq_len", f"must be >= 1, got {self.seq_len}")
        require(self.zipf_exponent >= 0, "zipf_exponent", "must be >= 0")
        require(self.num_topics >= 1, "num_topics", f"must be >= 1, got {self.num_topics}")
        require(
            1 <= self.topic_vocab <= self.vocab_size,
            "topic_vocab",
            f"must be in [1, vocab_size], got {self.topic_vocab}",
        )
        require(
            1 <= self.max_topics_per_client <= self.num_topics,
            "max_topics_per_client",
            f"must be in [1, num_topics], got {self.max_topics_per_client}",
        )
        require(0 <= self.topic_strength <= 1, "topic_strength", "must be in [0, 1]")
        require(0 <= self.bigram_strength <= 1, "bigram_strength", "must be in [0, 1]")
        require(self.median_sequences > 0, "median_sequences", "must be > 0")
        require(self.sigma_sequences >= 0, "sigma_sequences", "must be >= 0")
        require(self.min_sequences >= 1, "min_sequences", "must be >= 1")
        require(
            self.max_sequences >= self.min_sequences, "max_sequences", "must be >= min_sequences"
        )
        object.__setattr__(self, "num_features", self.seq_len)
        object.__setattr__(self, "num_classes", self.vocab_size)

    @cached_property
    def _task(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Global CDF [V], topic CDF [topic_vocab], topic tokens [T, topic_vocab], hash [T, 2]."""
        rng = generator(self.seed, Stream.TASK)
        topics = np.stack(
            [
                rng.choice(self.vocab_size, self.topic_vocab, replace=False)
                for _ in range(self.num_topics)
            ]
        ).astype(np.int64)
        hashes = np.stack(
            [rng.integers(1, _PRIME, self.num_topics), rng.integers(0, _PRIME, self.num_topics)],
            axis=1,
        ).astype(np.int64)
        global_cdf = zipf_cdf(self.vocab_size, self.zipf_exponent)
        return global_cdf, zipf_cdf(self.topic_vocab, self.zipf_exponent), topics, hashes

    def successor(self, topic: np.ndarray, token: np.ndarray) -> np.ndarray:
        """succ_topic(token), elementwise over broadcastable int arrays."""
        _, _, topics, hashes = self._task
        slot = (hashes[topic, 0] * token + hashes[topic, 1]) % _PRIME % self.topic_vocab
        return topics[topic, slot]

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        """Lognormal sequence counts, a pure function of (seed, id)."""
        return lognormal_counts(
            self.seed,
            Stream.CLIENT_SIZE,
            ids,
            self.median_sequences,
            self.sigma_sequences,
            self.min_sequences,
            self.max_sequences,
        )

    def client_data(self, client_id: int) -> ClientData:
        """Builds client `client_id`'s sequences: x, y int64 [n, seq_len], y = x shifted by 1."""
        global_cdf, topic_cdf, topics, _ = self._task
        n = int(self.num_examples(np.array([client_id]))[0])
        rng = generator(self.seed, Stream.CLIENT_DATA, client_id)
        held = rng.choice(
            self.num_topics, rng.integers(1, self.max_topics_per_client + 1), replace=False
        )
        topic = held[rng.integers(len(held), size=n)][:, None]
        shape = (n, self.seq_len + 1)
        from_topic = rng.random(shape) < self.topic_strength
        global_rank = np.searchsorted(global_cdf, rng.random(shape), side="right")
        topic_rank = np.searchsorted(topic_cdf, rng.random(shape), side="right")
        tokens = np.where(
            from_topic,
            topics[topic, np.minimum(topic_rank, self.topic_vocab - 1)],
            np.minimum(global_rank, self.vocab_size - 1),
        )
        follow = rng.random((n, self.seq_len)) < self.bigram_strength
        for t in range(1, self.seq_len + 1):
            nxt = self.successor(topic[:, 0], tokens[:, t - 1])
            tokens[:, t] = np.where(follow[:, t - 1], nxt, tokens[:, t])
        tokens = tokens.astype(np.int64, copy=False)
        return ClientData(x=np.ascontiguousarray(tokens[:, :-1]), y=tokens[:, 1:].copy())

    def held_out_ids(self, count: int) -> np.ndarray:
        """The `count` clients right after the population: same distribution, never trained."""
        require(count >= 0, "count", f"must be >= 0, got {count}")
        return np.arange(self.num_clients, self.num_clients + count, dtype=np.int64)
