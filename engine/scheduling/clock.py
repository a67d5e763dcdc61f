"""The simulated clock of a round: who reports before the deadline, and how long it took.

Nothing sleeps: a round's duration is computed from the selected clients' device profiles and
the simulated time jumps by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.errors import require

PRIVATE_TIMED_EXAMPLES = 32


@dataclass(frozen=True)
class RoundClock:
    """Deadline, over-selection, dropouts and retries of a round, in simulated seconds.

    A selected client takes compute + transfer seconds: examples x epochs x its seconds per
    example, plus the model's bytes down and up over its bandwidth. It reports when it neither
    drops out (probability `dropout_prob`, mid-round) nor misses the deadline (a straggler). The
    server keeps the first `cohort_size` reports; the round closes at the last kept report, or
    at the deadline when fewer arrive. With fewer than `min_report_fraction` of the cohort, the
    round is retried `retry_after_s` after its deadline, with a fresh selection.

    Attributes:
        deadline_s: Seconds from the start of training to the deadline.
        over_selection: Clients selected per cohort slot (1.3 selects 1.3 x cohort_size).
        dropout_prob: Probability that a selected client drops out mid-round.
        min_report_fraction: Share of cohort_size that must report for the round to count.
        checkin_s: Seconds before training starts (check-in and selection), per attempt.
        retry_after_s: Seconds between a failed attempt's deadline and the next attempt.
        max_attempts: Failed attempts of one round before the run stops with an error.
        start_h: Simulated time of the first round, in hours.
        timed_examples: Examples every client is timed for; None: its own example count. A
            private run never times a client by its own count, which is its data: with None it
            times every client for `PRIVATE_TIMED_EXAMPLES`, so that who reports in time, the
            cohort that follows and the simulated clock depend on no client's data.
        secagg_client_s: Secure aggregation's extra seconds per client (key agreement, masking
            and encoding), added to its compute: with it a client may become a straggler.
        secagg_interaction_s: Seconds of secure aggregation's rounds of interaction after the
            reports (the unmasking rounds), added to every attempt that gathers enough.

    Guarantees:
        With `timed_examples` set (as a private run always has it), which clients report and
        when is a function of the seed, the devices and availability: public, so the
        participation ledger, and the accountant's (k, b), do not depend on the clients' data.
    """

    deadline_s: float = 600.0
    over_selection: float = 1.0
    dropout_prob: float = 0.0
    min_report_fraction: float = 0.8
    checkin_s: float = 0.0
    retry_after_s: float = 600.0
    max_attempts: int = 100
    start_h: float = 0.0
    timed_examples: int | None = None
    secagg_client_s: float = 0.0
    secagg_interaction_s: float = 0.0

    def __post_init__(self) -> None:
        require(self.deadline_s > 0, "deadline_s", f"must be > 0, got {self.deadline_s}")
        require(self.over_selection >= 1, "over_selection", "must be >= 1")
        require(0 <= self.dropout_prob < 1, "dropout_prob", "must be in [0, 1)")
        frac = self.min_report_fraction
        require(0 < frac <= 1, "min_report_fraction", f"must be in (0, 1], got {frac}")
        require(self.checkin_s >= 0, "checkin_s", "must be >= 0")
        require(self.retry_after_s >= 0, "retry_after_s", "must be >= 0")
        require(self.max_attempts >= 1, "max_attempts", "must be >= 1")
        require(self.start_h >= 0, "start_h", "must be >= 0")
        require(self.secagg_client_s >= 0, "secagg_client_s", "must be >= 0")
        require(self.secagg_interaction_s >= 0, "secagg_interaction_s", "must be >= 0")
        timed = self.timed_examples
        require(timed is None or timed >= 1, "timed_examples", f"must be >= 1, got {timed}")

    @property
    def start_s(self) -> float:
        """Simulated time of the first round, in seconds."""
        return self.start_h * 3600.0

    def timed_counts(self, num_examples: np.ndarray, private: bool) -> np.ndarray:
        """The example count each client is timed for, from the population's counts.

        Args:
            num_examples: Each client's own example count.
            private: Whether the run adds noise (then its own count is never used).
        """
        timed = self.timed_examples
        if timed is None and private:
            timed = PRIVATE_TIMED_EXAMPLES
        if timed is None:
            return num_examples
        return np.broadcast_to(np.int64(timed), num_examples.shape)

    def selection_size(self, cohort_size: int) -> int:
        """Clients to select for a cohort of `cohort_size`."""
        return math.ceil(self.over_selection * cohort_size - 1e-9)

    def min_reports(self, cohort_size: int) -> int:
        """Reports a round needs to count."""
        return max(1, math.ceil(self.min_report_fraction * cohort_size - 1e-9))

    def outcome(
        self, selected: np.ndarray, durations: np.ndarray, dropped: np.ndarray, cohort_size: int
    ) -> AttemptOutcome:
        """Who of `selected` reports, and when the attempt closes.

        Args:
            selected: Selected ids.
            durations: Each one's compute + transfer seconds.
            dropped: Bool, each one's mid-round dropout.
            cohort_size: Reports the server keeps.
        """
        durations = durations + self.secagg_client_s
        on_time = ~dropped & (durations <= self.deadline_s)
        order = np.argsort(durations[on_time], kind="stable")[:cohort_size]
        reported = np.sort(selected[on_time][order])
        full = len(order) == cohort_size
        training_s = float(durations[on_time][order[-1]]) if full else self.deadline_s
        counts = len(reported) >= self.min_reports(cohort_size)
        secagg_s = self.secagg_interaction_s if counts else 0.0
        return AttemptOutcome(
            reported=reported,
            dropped=int(np.count_nonzero(dropped)),
            stragglers=int(np.count_nonzero(~dropped & (durations > self.deadline_s))),
            late=int(np.count_nonzero(on_time)) - len(reported),
            duration_s=self.checkin_s + training_s + secagg_s,
            counts=counts,
        )


@dataclass(frozen=True)
class AttemptOutcome:
    """One attempt at a round.

    Attributes:
        reported: Sorted ids whose updates the server keeps.
        dropped: Selected clients that dropped out.
        stragglers: Selected clients that missed the deadline.
        late: Clients that reported in time after the cohort was full (over-selection).
        duration_s: Simulated seconds from the attempt's start to its close.
        counts: Whether enough reported for the round to count.
    """

    reported: np.ndarray
    dropped: int
    stragglers: int
    late: int
    duration_s: float
    counts: bool
