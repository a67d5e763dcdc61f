"""The `audit` settings: canary clients and Secret Sharer secrets (both off by default)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import require


@dataclass(frozen=True)
class Audit:
    """Empirical privacy auditing of a run (`audit=canaries`, `audit=secrets`).

    Attributes:
        num_canaries: Canary clients added to the population (0: none), and as many null
            directions; their cosine statistics give `audit/epsilon_estimate` (Andrew et al.,
            ICLR 2024). Needs clipping: a canary's update has norm equal to the clip norm.
        secrets: Repetition counts of the Secret Sharer's secrets (Carlini et al. 2019), e.g.
            (1, 4, 16); empty: none. Text populations and language models only.
        secrets_per_repetition: Secrets inserted per repetition count, each in its own client.
        num_candidates: |R|, the random sequences a secret is ranked among.
        bootstrap: Bootstrap resamples of the estimate's confidence interval.
        confidence: The interval's coverage.
    """

    num_canaries: int = 0
    secrets: tuple[int, ...] = ()
    secrets_per_repetition: int = 4
    num_candidates: int = 4096
    bootstrap: int = 200
    confidence: float = 0.95

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", tuple(int(r) for r in self.secrets))
        require(self.num_canaries >= 0, "num_canaries", f"must be >= 0, got {self.num_canaries}")
        counts = self.secrets
        require(all(r >= 1 for r in counts), "secrets", f"counts must be >= 1, got {counts}")
        require(self.secrets_per_repetition >= 1, "secrets_per_repetition", "must be >= 1")
        require(self.num_candidates >= 1, "num_candidates", "must be >= 1")
        require(self.bootstrap >= 1, "bootstrap", f"must be >= 1, got {self.bootstrap}")
        require(0 < self.confidence < 1, "confidence", f"must be in (0, 1): {self.confidence}")

    @property
    def canaries(self) -> bool:
        """Whether the run inserts canaries."""
        return self.num_canaries > 0
