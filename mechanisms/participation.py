"""What the accountant reads of participation: the bound a policy declares and what was seen.

The engine's participation policies declare a `ParticipationBound`; its ledger reports an
`ObservedParticipation`. Both live here, beside the accountant, so that privacy code imports
nothing of the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import require


def participations_that_fit(
    rounds: int, min_separation: int, max_participations: int | None = None
) -> int:
    """min(k, ceil(n / b)): the most of n rounds a client can join, any two >= b apart.

    The one place this count is written: the sensitivity of C = I, the participation count the
    BLT factorisation is optimised for, the tree programme's table sizes and the accountant's
    resolved k all use it.

    Guarantees:
        Exact: rounds 0, b, 2b, ... fit ceil(n / b) participations in [0, n), and no pattern
        with gaps >= b fits more.

    Args:
        rounds: n >= 0.
        min_separation: b >= 1.
        max_participations: k, or None for no limit beyond what b allows.

    Raises:
        ValueError: If b < 1 or n < 0.
    """
    if min_separation < 1 or rounds < 0:
        raise ValueError(f"need n >= 0 and b >= 1, got n={rounds}, b={min_separation}")
    most = -(-rounds // min_separation)
    return most if max_participations is None else min(max_participations, most)


@dataclass(frozen=True)
class ParticipationBound:
    """The participation guarantee a policy makes, read by the privacy accountant.

    Guarantees:
        Every client joins at most `max_participations` rounds (None: no limit beyond the
        number of rounds), and any two of its rounds i, j satisfy |i - j| >= `min_separation`
        (Choquette-Choo et al. 2023, "(k, b)-participation"; b counts the distance, not the
        rounds strictly between).

    Attributes:
        max_participations: k, or None when unbounded.
        min_separation: b >= 1.
    """

    max_participations: int | None
    min_separation: int

    def __post_init__(self) -> None:
        k = self.max_participations
        require(k is None or k >= 1, "max_participations", f"must be >= 1 or None, got {k}")
        require(self.min_separation >= 1, "min_separation", "must be >= 1")

    def resolved(self, rounds: int) -> int:
        """The k of a run of `rounds` rounds: the bound's, or the most that b lets fit."""
        return participations_that_fit(rounds, self.min_separation, self.max_participations)


@dataclass(frozen=True)
class ObservedParticipation:
    """What the ledger saw: the tightest (k, b) that the committed rounds satisfy.

    Attributes:
        max_participations: Largest number of rounds any client joined (0 if none did).
        min_separation: Smallest distance |i - j| between two rounds of one client; None when no
            client joined twice.
        clients: Clients that joined at least once.
        contributions: Committed (round, client) pairs.
    """

    max_participations: int
    min_separation: int | None
    clients: int
    contributions: int
