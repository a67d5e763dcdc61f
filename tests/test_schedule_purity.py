"""engine/scheduling/schedule.py: `Scheduler.plan` is pure; simulated time goes in and comes out."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.population import AlwaysAvailable, LognormalDevices
from engine.scheduling import (
    ParticipationLedger,
    RoundClock,
    RoundFailedError,
    RoundPlan,
    Scheduler,
    UniformParticipation,
)

NUM_CLIENTS = 300


def _scheduler(seed: int = 11) -> Scheduler:
    """Heavy-tailed devices, dropouts, over-selection, min separation, frequent retries."""
    return Scheduler(
        seed=seed,
        availability=AlwaysAvailable(NUM_CLIENTS),
        participation=UniformParticipation(cohort_size=20, min_separation=3),
        clock=RoundClock(
            deadline_s=120.0,
            over_selection=1.2,
            dropout_prob=0.15,
            min_report_fraction=1.0,
            checkin_s=10.0,
            retry_after_s=50.0,
            start_h=0.25,
        ),
        devices=LognormalDevices(seed=seed, sigma_speed=1.0),
        num_examples=np.random.default_rng(seed).integers(1, 60, NUM_CLIENTS),
        epochs=2,
        model_bytes=1_250_000,
        ledger=ParticipationLedger(NUM_CLIENTS),
    )


def _key(plan: RoundPlan) -> tuple[object, ...]:
    """Everything a plan holds, comparable with ==."""
    outcome = plan.outcome
    return (
        plan.round_idx,
        plan.start_s,
        plan.end_s,
        plan.attempts,
        plan.available,
        plan.selected,
        plan.cohort.tolist(),
        (outcome.dropped, outcome.stragglers, outcome.late, outcome.duration_s, outcome.counts),
    )


def _commit_rounds(scheduler: Scheduler, rounds: int, probes: list[tuple[int, float]]) -> list:
    """Commits `rounds` rounds, planning each probe (round, time) before each commit."""
    keys, now = [], scheduler.start_s
    for r in range(rounds):
        for probe_round, probe_s in probes:
            scheduler.plan(probe_round, probe_s)
        plan = scheduler.plan(r, now)
        scheduler.commit(plan)
        keys.append(_key(plan))
        now = plan.end_s
    return keys


# Computed with the scheduler as it was before planning became pure (it kept its own clock).
GOLDEN_ATTEMPTS = [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 3]
GOLDEN_LAST_END_S = float.fromhex("0x1.ea58930d5ea82p+10")
GOLDEN_COHORTS_SHA256 = "d2cc7a8b88657743ef249d82d4dcd09291794ef61516bbc63a92e487a62dc7d2"


def test_plans_are_those_of_the_stateful_scheduler_bit_for_bit():
    keys = _commit_rounds(_scheduler(), 12, [])
    assert [k[3] for k in keys] == GOLDEN_ATTEMPTS
    assert keys[-1][2] == GOLDEN_LAST_END_S
    cohorts = b"".join(np.asarray(k[6], np.int64).tobytes() for k in keys)
    assert hashlib.sha256(cohorts).hexdigest() == GOLDEN_COHORTS_SHA256


@settings(max_examples=25, deadline=None)
@given(round_idx=st.integers(0, 50), now_s=st.floats(0.0, 1e6), history=st.integers(0, 4))
def test_same_inputs_give_equal_plans(round_idx, now_s, history):
    a, b = _scheduler(), _scheduler()
    _commit_rounds(a, history, [])
    _commit_rounds(b, history, [])
    first = a.plan(round_idx, now_s)
    assert _key(first) == _key(a.plan(round_idx, now_s)) == _key(b.plan(round_idx, now_s))
    assert first.start_s >= now_s
    assert first.end_s > first.start_s


@settings(max_examples=10, deadline=None)
@given(probes=st.lists(st.tuples(st.integers(0, 30), st.floats(0.0, 1e5)), max_size=3))
def test_planning_changes_no_later_plan(probes):
    assert _commit_rounds(_scheduler(), 8, probes) == _commit_rounds(_scheduler(), 8, [])


def test_planning_leaves_the_ledger_alone_and_the_scheduler_is_frozen():
    scheduler = _scheduler()
    _commit_rounds(scheduler, 3, [])
    before = pickle.dumps(scheduler.ledger.state_dict())
    for r in range(3, 10):
        scheduler.plan(r, 1000.0 * r)
    assert pickle.dumps(scheduler.ledger.state_dict()) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        scheduler.seed = 1  # type: ignore[misc]


def test_the_next_round_starts_where_the_time_passed_in_says():
    scheduler = _scheduler()
    plan = scheduler.plan(0, scheduler.start_s)
    assert scheduler.start_s == 0.25 * 3600.0 == plan.start_s  # its first attempt counts
    later = scheduler.plan(0, plan.start_s + 500.0)
    assert later.start_s >= plan.start_s + 500.0


def test_state_dict_carries_the_time_passed_in():
    scheduler = _scheduler()
    _commit_rounds(scheduler, 2, [])
    state = scheduler.state_dict(1234.5)
    assert state["now_s"] == 1234.5
    fresh = _scheduler()
    assert fresh.load_state_dict(pickle.loads(pickle.dumps(state))) == 1234.5
    assert _key(fresh.plan(2, 1234.5)) == _key(scheduler.plan(2, 1234.5))


def test_round_failed_error_survives_pickling():
    error = RoundFailedError(4, 99.0, "round 4: nobody")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.round_idx, copy.now_s, str(copy)) == (4, 99.0, "round 4: nobody")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"epochs": 0}, "epochs"),
        ({"model_bytes": -1}, "model_bytes"),
        ({"num_examples": np.ones(NUM_CLIENTS + 1, np.int64)}, "num_examples"),
    ],
)
def test_scheduler_validates(change, key):
    with pytest.raises(ValueError, match=rf"^{key}:"):
        dataclasses.replace(_scheduler(), **change)


def test_round_plan_validates():
    plan = _scheduler().plan(0, 0.0)
    with pytest.raises(ValueError, match=r"^end_s:"):
        dataclasses.replace(plan, end_s=plan.start_s - 1.0)
    with pytest.raises(ValueError, match=r"^attempts:"):
        dataclasses.replace(plan, attempts=0)
    with pytest.raises(ValueError, match=r"^selected:"):
        dataclasses.replace(plan, selected=len(plan.cohort) - 1)
