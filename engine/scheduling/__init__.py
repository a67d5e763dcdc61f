"""Rounds in time: the clock, participation policies, the scheduler and the ledger.

Owns the simulated clock (deadline, over-selection, dropouts, retries), the participation
policies that pick each cohort from the available clients (and declare the
`mechanisms.participation.ParticipationBound` the accountant reads), the scheduler that plans a
round, and the ledger of which client contributed to which round.
"""

from engine.scheduling.clock import AttemptOutcome, RoundClock
from engine.scheduling.ledger import ParticipationLedger, read_log
from engine.scheduling.participation import (
    CyclicParticipation,
    ParticipationPolicy,
    UniformParticipation,
)
from engine.scheduling.schedule import RoundFailedError, RoundPlan, Scheduler

__all__ = [
    "AttemptOutcome",
    "CyclicParticipation",
    "ParticipationLedger",
    "ParticipationPolicy",
    "RoundClock",
    "RoundFailedError",
    "RoundPlan",
    "Scheduler",
    "UniformParticipation",
    "read_log",
]
