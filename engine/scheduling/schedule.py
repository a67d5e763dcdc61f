"""Rounds in simulated time: availability -> selection -> who reports -> retry or commit.

The scheduler lives on the driver. Planning is a pure function of the seed, the round, the
simulated time the round starts at and the committed ledger: it never depends on the number of
workers, and planning a round twice gives the same plan. Simulated time is passed in and handed
back (`RoundPlan.end_s` is where the next round starts); the scheduler keeps no clock. The one
mutation is `Scheduler.commit`, which records a round's cohort in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import require
from common.rng import Stream, generator
from engine.population import Availability, DeviceProfiles
from engine.scheduling.clock import AttemptOutcome, RoundClock
from engine.scheduling.ledger import ParticipationLedger
from engine.scheduling.participation import ParticipationPolicy


class RoundFailedError(RuntimeError):
    """A round never gathered enough reports within the clock's `max_attempts`.

    Args:
        round_idx: The round.
        now_s: Simulated time after the failed attempts.
        message: What happened, in one line.
    """

    def __init__(self, round_idx: int, now_s: float, message: str) -> None:
        super().__init__(message)
        self.round_idx = round_idx
        self.now_s = now_s

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.round_idx, self.now_s, str(self))


@dataclass(frozen=True)
class RoundPlan:
    """The attempt of a round that counts, and what it cost in simulated time.

    Attributes:
        round_idx: The round.
        start_s: Simulated start of the counted attempt.
        end_s: Simulated time at which it closed: where the next round starts.
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

    def __post_init__(self) -> None:
        require(self.round_idx >= 0, "round_idx", f"must be >= 0, got {self.round_idx}")
        require(self.end_s >= self.start_s, "end_s", "must be >= start_s")
        require(self.attempts >= 1, "attempts", f"must be >= 1, got {self.attempts}")
        require(self.available >= 0, "available", f"must be >= 0, got {self.available}")
        reported = len(self.outcome.reported)
        require(self.selected >= reported, "selected", f"must be >= the {reported} reported")

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


@dataclass(frozen=True, eq=False)
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
        ledger: Committed participation (written by `commit` only).
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

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.model_bytes >= 0, "model_bytes", f"must be >= 0, got {self.model_bytes}")
        clients = len(self.ledger.count)
        require(
            self.num_examples.shape == (clients,),
            "num_examples",
            f"must hold one count per client of the ledger ({clients})",
        )

    @property
    def start_s(self) -> float:
        """Simulated time at which the first round starts."""
        return self.clock.start_s

    def durations(self, ids: np.ndarray) -> np.ndarray:
        """Compute plus transfer seconds of each client."""
        examples = self.num_examples[ids].astype(np.float64) * self.epochs
        compute = examples * self.devices.seconds_per_example(ids)
        return compute + 2.0 * self.model_bytes / self.devices.bandwidth(ids)

    def plan(self, round_idx: int, now_s: float) -> RoundPlan:
        """Runs attempts of round `round_idx`, from `now_s` on, until one gathers enough reports.

        Pure: the plan is a function of the arguments, the seed and the committed ledger, and
        nothing changes until `commit`. Failed attempts cost simulated time (check-in, deadline
        and `retry_after_s`), nothing else: the plan starts at its counted attempt.

        Args:
            round_idx: The round.
            now_s: Simulated time at which its first attempt starts (the `end_s` of the round
                before, or `start_s` for the first).

        Raises:
            RoundFailedError: after `clock.max_attempts` failed attempts.
        """
        for attempt in range(self.clock.max_attempts):
            plan = self._attempt(round_idx, attempt, now_s)
            if plan.outcome.counts:
                return plan
            # Summed in this order: the clock is the one it has always been, bit for bit.
            now_s += plan.outcome.duration_s + self.clock.retry_after_s
        cohort_size = self.participation.cohort_size
        raise RoundFailedError(
            round_idx,
            now_s,
            f"round {round_idx}: fewer than {self.clock.min_reports(cohort_size)} of "
            f"{cohort_size} clients reported in each of {self.clock.max_attempts} attempts "
            f"(simulated time now {now_s / 3600:.1f} h); check the availability model, "
            "the participation limits and clock.deadline_s",
        )

    def _attempt(self, round_idx: int, attempt: int, now_s: float) -> RoundPlan:
        """Attempt `attempt` of round `round_idx`, started at `now_s`, whether it counts or not.

        Its randomness is (seed, round, attempt)'s own streams.
        """
        cohort_size = self.participation.cohort_size
        mask = self.availability.available(now_s)
        rng = generator(self.seed, Stream.SELECTION, round_idx, attempt)
        size = self.clock.selection_size(cohort_size)
        selected = self.participation.select(round_idx, now_s, mask, self.ledger, rng, size)
        drop_rng = generator(self.seed, Stream.DROPOUT, round_idx, attempt)
        dropped = drop_rng.random(len(selected)) < self.clock.dropout_prob
        outcome = self.clock.outcome(selected, self.durations(selected), dropped, cohort_size)
        return RoundPlan(
            round_idx=round_idx,
            start_s=now_s,
            end_s=now_s + outcome.duration_s,
            attempts=attempt + 1,
            available=int(np.count_nonzero(mask)),
            selected=len(selected),
            outcome=outcome,
        )

    def commit(self, plan: RoundPlan, exclude: np.ndarray | None = None) -> None:
        """Records the round's cohort in the ledger; the next round starts at `plan.end_s`.

        Args:
            plan: The round as planned.
            exclude: Clients of the cohort whose update did not reach the aggregate (their
                training kept failing): not recorded.
        """
        cohort = plan.cohort if exclude is None else np.setdiff1d(plan.cohort, exclude)
        self.ledger.record(plan.round_idx, plan.start_s, cohort)

    def state_dict(self, now_s: float) -> dict[str, Any]:
        """The checkpointed schedule: the next round's start, `now_s`, and the ledger's state.

        Everything else is a pure function of the experiment.
        """
        return {"now_s": float(now_s), "ledger": self.ledger.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> float:
        """Restores the ledger of `state_dict()`; returns when the next round starts."""
        self.ledger.load_state_dict(state["ledger"])
        return float(state["now_s"])
