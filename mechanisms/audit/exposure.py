"""Secret Sharer exposure: random secrets planted in clients' text, ranked among random candidates.

Carlini, Liu, Erlingsson, Kos, Song 2019 ("The Secret Sharer: Evaluating and Testing Unintended
Memorization in Neural Networks"): a secret is a random token sequence inserted, `r` times, into
one client's training data. After training, the model's log-perplexity of the secret is ranked
among those of |R| candidate sequences drawn from the same distribution but never inserted; the
secret's exposure is log2|R| - log2(rank), rank 1 being the most likely. A model that learned
nothing of the secret ranks it anywhere; one that memorised it ranks it first (log2|R| bits).

Format: a secret (and a candidate) is seq_len + 1 tokens, exactly one training example of a text
population (`x` its first seq_len tokens, `y` its last seq_len), tokens uniform over the
vocabulary. Secrets, candidates and the clients that carry the secrets come from three streams of
(seed, `Stream.AUDIT`), keys 2, 3 and 4 (the canaries use keys 0 and 1): public randomness of the
run, independent of every client's data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import require
from common.rng import Stream, generator

# Keys of the secrets' streams under (seed, AUDIT), after the canaries' 0 and 1.
_SECRETS_KEY, _CANDIDATES_KEY, _CARRIERS_KEY = 2, 3, 4


@dataclass(frozen=True)
class SecretPlan:
    """Which secrets an audit plants, and against how many candidates each is ranked.

    Attributes:
        repetitions: One group of secrets per count: each secret of the group is inserted that
            many times into its client's data; distinct, each >= 1 (e.g. (1, 4, 16)).
        secrets_per_repetition: Secrets per group (>= 1); exposure is averaged over a group.
        num_candidates: |R|, the random candidates each secret is ranked among (>= 1).
    """

    repetitions: tuple[int, ...]
    secrets_per_repetition: int = 4
    num_candidates: int = 4096

    def __post_init__(self) -> None:
        counts = tuple(self.repetitions)
        require(len(counts) >= 1, "audit.secrets", "needs at least one repetition count")
        require(
            all(int(r) == r and r >= 1 for r in counts),
            "audit.secrets",
            f"repetition counts must be integers >= 1, got {list(counts)}",
        )
        require(
            len(set(counts)) == len(counts),
            "audit.secrets",
            f"repetition counts must be distinct, got {list(counts)}",
        )
        object.__setattr__(self, "repetitions", tuple(int(r) for r in counts))
        require(
            self.secrets_per_repetition >= 1,
            "audit.secrets_per_repetition",
            f"must be >= 1, got {self.secrets_per_repetition}",
        )
        require(
            self.num_candidates >= 1,
            "audit.num_candidates",
            f"must be >= 1, got {self.num_candidates}",
        )

    @property
    def num_secrets(self) -> int:
        """S: the secrets planted, over all groups."""
        return len(self.repetitions) * self.secrets_per_repetition

    def counts(self) -> np.ndarray:
        """int64 [S]: each secret's repetition count, grouped in the order of `repetitions`."""
        return np.repeat(np.asarray(self.repetitions, np.int64), self.secrets_per_repetition)


def _uniform_tokens(key: int, seed: int, count: int, length: int, vocab_size: int) -> np.ndarray:
    """int64 [count, length] tokens uniform over [0, vocab_size), from (seed, AUDIT, key)."""
    require(count >= 0, "count", f"must be >= 0, got {count}")
    require(length >= 1, "length", f"must be >= 1, got {length}")
    require(vocab_size >= 1, "vocab_size", f"must be >= 1, got {vocab_size}")
    rng = generator(seed, Stream.AUDIT, key)
    return rng.integers(0, vocab_size, size=(count, length), dtype=np.int64)


def secret_sequences(seed: int, count: int, length: int, vocab_size: int) -> np.ndarray:
    """The secrets: int64 [count, length] uniform tokens from (seed, AUDIT, 2).

    `length` is seq_len + 1: one training example of the population's format. Rows are drawn in
    order, so the first k secrets do not depend on `count`.
    """
    return _uniform_tokens(_SECRETS_KEY, seed, count, length, vocab_size)


def candidate_sequences(seed: int, count: int, length: int, vocab_size: int) -> np.ndarray:
    """The |R| = `count` candidates: int64 [count, length] uniform tokens from (seed, AUDIT, 3).

    Same format and distribution as `secret_sequences`, from an independent stream.
    """
    return _uniform_tokens(_CANDIDATES_KEY, seed, count, length, vocab_size)


def secret_carriers(seed: int, num_secrets: int, num_clients: int) -> np.ndarray:
    """int64 [num_secrets]: distinct client ids in [0, num_clients), one per secret.

    Drawn from (seed, AUDIT, 4) without replacement in O(num_secrets) time and memory (numpy's
    `Generator.choice` without replacement samples a small subset without building the
    population).
    """
    require(num_secrets >= 0, "audit.secrets", f"needs >= 0 secrets, got {num_secrets}")
    require(
        num_secrets <= num_clients,
        "audit.secrets",
        f"{num_secrets} secrets need as many distinct clients; the population has {num_clients}",
    )
    rng = generator(seed, Stream.AUDIT, _CARRIERS_KEY)
    return np.asarray(rng.choice(num_clients, size=num_secrets, replace=False), dtype=np.int64)


def exposures(secret_scores: np.ndarray, candidate_scores: np.ndarray) -> np.ndarray:
    """float64 [S]: the exposure of each secret against the same candidates (see `exposure`).

    Raises:
        ValueError: If there is no candidate, or a score is NaN.
    """
    secrets = np.asarray(secret_scores, dtype=np.float64).reshape(-1)
    candidates = np.sort(np.asarray(candidate_scores, dtype=np.float64).reshape(-1))
    if candidates.size == 0:
        raise ValueError("exposure needs at least one candidate")
    if np.isnan(secrets).any() or np.isnan(candidates).any():
        raise ValueError("log-perplexities must not be NaN")
    below = np.searchsorted(candidates, secrets, side="left")
    tied = np.searchsorted(candidates, secrets, side="right") - below
    rank = 1.0 + below + 0.5 * tied
    return np.log2(candidates.size) - np.log2(rank)


def exposure(secret_score: float, candidate_scores: np.ndarray) -> float:
    """Exposure of one secret: log2|R| - log2(rank), in bits.

    Args:
        secret_score: The model's log-perplexity of the secret (lower: more likely).
        candidate_scores: Log-perplexities [|R|] of the candidates.

    Returns:
        log2|R| - log2(rank), where rank = 1 + (candidates strictly below the secret) +
        (candidates equal to it) / 2: a tie counts as half a candidate ranked above, the mean
        rank over the orders that break the tie. So exposure lies in
        [log2|R| - log2(|R| + 1), log2|R|]: log2|R| when the secret is strictly the most likely,
        about 0 when it is the least.

    Guarantees:
        Assumes the secret and the candidates are drawn independently from one distribution and
        the secret's score is a function of a model independent of it (it was not inserted):
        then its rank is uniform over 1..|R| + 1 (continuous scores) and P(exposure >= e) <=
        2**-e, the null behind Carlini et al. 2019's exposure. Exposure measures memorisation;
        it does not bound privacy loss, and a low exposure implies no guarantee.

    Raises:
        ValueError: If there is no candidate, or a score is NaN.
    """
    return float(exposures(np.array([secret_score]), candidate_scores)[0])


def exposures_by_repetition(
    plan: SecretPlan, secret_scores: np.ndarray, candidate_scores: np.ndarray
) -> dict[int, float]:
    """Mean exposure of each group of secrets, by repetition count.

    Args:
        plan: The audit's plan.
        secret_scores: Log-perplexities [S] of the secrets, in `plan.counts()` order.
        candidate_scores: Log-perplexities [|R|] of the plan's candidates.

    Returns:
        {repetition count: mean exposure (bits) of the secrets inserted that many times}, in
        the order of `plan.repetitions`.

    Raises:
        ValueError: If the score counts do not match the plan, or a score is NaN.
    """
    scores = np.asarray(secret_scores, dtype=np.float64).reshape(-1)
    if scores.size != plan.num_secrets:
        raise ValueError(f"expected {plan.num_secrets} secret scores, got {scores.size}")
    if np.size(candidate_scores) != plan.num_candidates:
        raise ValueError(
            f"expected {plan.num_candidates} candidate scores, got {np.size(candidate_scores)}"
        )
    values = exposures(scores, candidate_scores)
    counts = plan.counts()
    return {r: float(values[counts == r].mean()) for r in plan.repetitions}
