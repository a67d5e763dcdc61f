"""Rounds in simulated time: availability -> selection -> who reports -> retry or commit.

The scheduler lives on the driver. Everything it decides is a pure function of the seed and
the round, attempt and client ids, so it never depends on the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.availability import Availability
from engine.clock import AttemptOutcome, RoundClock
from engine.devices import DeviceProfiles
from engine.ledger import ParticipationLedger
from engine.participation import ParticipationPolicy
from engine.rng import Stream, generator


class RoundFailedError(RuntimeError):
    """A round never gathered enough reports within the clock's `max_attempts`."""


@dataclass(frozen=True)
class RoundPlan:
    """The attempt of a round that counts, and what it cost in simulated time.

    Attributes:
        round_idx: The round.
        start_s: Simulated start of the counted attempt.
        end_s: Simulated time at which it closed.
        attempts: Attempts, the counted one included.
        available: Clients available at `start_s`.
        selected: Clients selected (over-selection included).
        outcome: Who reported, dropped out or straggled.
    """

    round_idx: int
    start_s: float
    end_s: float
    attempts: int
    available: int
    selected: int
    outcome: AttemptOutcome

    @property
    def cohort(self) -> np.ndarray:
        """The ids whose updates go into the aggregate."""
        return self.outcome.reported

    def metrics(self) -> dict[str, float]:
        """The round's participation/ and system/ clock metrics."""
        return {
            "participation/available": float(self.available),
            "participation/selected": float(self.selected),
            "participation/reported": float(len(self.cohort)),
            "participation/dropped": float(self.outcome.dropped),
            "participation/stragglers": float(self.outcome.stragglers),
            "participation/late": float(self.outcome.late),
            "participation/attempts": float(self.attempts),
            "system/sim_time_h": self.start_s / 3600.0,
            "system/sim_round_s": self.end_s - self.start_s,
        }


@dataclass
class Scheduler:
    """Plans each round in simulated time and commits its cohort to the ledger.

    Args:
        seed: Run seed.
        availability: Who is online when.
        participation: Who may be selected.
        clock: Deadline, over-selection, dropouts, retries.
        devices: Per-client compute and bandwidth.
        num_examples: The example count each client is timed for (`RoundClock.timed_counts`).
        epochs: Local epochs per round.
        model_bytes: Bytes of the model, transferred down and up once per round.
        ledger: Committed participation.
    """

    seed: int
    availability: Availability
    participation: ParticipationPolicy
    clock: RoundClock
    devices: DeviceProfiles
    num_examples: np.ndarray
    epochs: int
    model_bytes: int
    ledger: ParticipationLedger
    now_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.now_s = self.clock.start_h * 3600.0

    def durations(self, ids: np.ndarray) -> np.ndarray:
        """Compute plus transfer seconds of each client."""
        examples = self.num_examples[ids].astype(np.float64) * self.epochs
        compute = examples * self.devices.seconds_per_example(ids)
        return compute + 2.0 * self.model_bytes / self.devices.bandwidth(ids)

    def plan(self, round_idx: int) -> RoundPlan:
        """Runs attempts of round `round_idx` until one gathers enough reports.

        Failed attempts cost simulated time (deadline plus `retry_after_s`), nothing else.

        Raises:
            RoundFailedError: after `clock.max_attempts` failed attempts.
        """
        cohort_size = self.participation.cohort_size
        size = self.clock.selection_size(cohort_size)
        for attempt in range(self.clock.max_attempts):
            mask = self.availability.available(self.now_s)
            rng = generator(self.seed, Stream.SELECTION, round_idx, attempt)
            selected = self.participation.select(
                round_idx, self.now_s, mask, self.ledger, rng, size
            )
            drop_rng = generator(self.seed, Stream.DROPOUT, round_idx, attempt)
            dropped = drop_rng.random(len(selected)) < self.clock.dropout_prob
            outcome = self.clock.outcome(selected, self.durations(selected), dropped, cohort_size)
            if outcome.counts:
                return RoundPlan(
                    round_idx=round_idx,
                    start_s=self.now_s,
                    end_s=self.now_s + outcome.duration_s,
                    attempts=attempt + 1,
                    available=int(np.count_nonzero(mask)),
                    selected=len(selected),
                    outcome=outcome,
                )
            self.now_s += outcome.duration_s + self.clock.retry_after_s
        raise RoundFailedError(
            f"round {round_idx}: fewer than {self.clock.min_reports(cohort_size)} of "
            f"{cohort_size} clients reported in each of {self.clock.max_attempts} attempts "
            f"(simulated time now {self.now_s / 3600:.1f} h); check the availability model, "
            "the participation limits and clock.deadline_s"
        )

    def state_dict(self) -> dict[str, Any]:
        """The simulated clock and the ledger's state (everything else is a pure function)."""
        return {"now_s": self.now_s, "ledger": self.ledger.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()`."""
        self.ledger.load_state_dict(state["ledger"])
        self.now_s = float(state["now_s"])

    def commit(self, plan: RoundPlan, exclude: np.ndarray | None = None) -> None:
        """Records the round's cohort in the ledger and moves the clock to its end.

        Args:
            plan: The round as planned.
            exclude: Clients of the cohort whose update did not reach the aggregate (their
                training kept failing): not recorded.
        """
        cohort = plan.cohort if exclude is None else np.setdiff1d(plan.cohort, exclude)
        self.ledger.record(plan.round_idx, plan.start_s, cohort)
        self.now_s = plan.end_s
