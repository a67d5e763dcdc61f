"""engine/scheduling/schedule.py: rounds in simulated time, retries, and commits to the ledger."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest

from engine.population import AlwaysAvailable, Availability, DeviceProfiles, LognormalDevices
from engine.scheduling import (
    ParticipationLedger,
    ParticipationPolicy,
    RoundClock,
    RoundFailedError,
    RoundPlan,
    Scheduler,
    UniformParticipation,
)

HOUR = 3600.0


@dataclass(frozen=True)
class _OnAfter(Availability):
    """Nobody is online before `on_after_s`, everyone after."""

    num_clients: int
    on_after_s: float

    def available(self, t: float) -> np.ndarray:
        return np.full(self.num_clients, t >= self.on_after_s)


@dataclass(frozen=True, eq=False)
class _TableDevices(DeviceProfiles):
    """Per-client speeds and bandwidths from a table."""

    speed: np.ndarray
    bytes_per_s: np.ndarray

    def seconds_per_example(self, ids: np.ndarray) -> np.ndarray:
        return self.speed[ids]

    def bandwidth(self, ids: np.ndarray) -> np.ndarray:
        return self.bytes_per_s[ids]


# With these, every client takes 20 x 2 x 0.05 = 2 s of compute and 2 x 1.25 MB / 1.25 MB/s =
# 2 s of transfer: 4 s in all.
CONSTANT = LognormalDevices(seed=0, sigma_speed=0.0, sigma_bandwidth=0.0)
MODEL_BYTES = 1_250_000
EXAMPLES = 20
EPOCHS = 2


def _scheduler(
    num_clients: int = 100,
    *,
    seed: int = 0,
    availability: Availability | None = None,
    participation: ParticipationPolicy | None = None,
    clock: RoundClock | None = None,
    devices: DeviceProfiles = CONSTANT,
    num_examples: np.ndarray | None = None,
) -> Scheduler:
    return Scheduler(
        seed=seed,
        availability=availability or AlwaysAvailable(num_clients),
        participation=participation or UniformParticipation(cohort_size=10),
        clock=clock or RoundClock(),
        devices=devices,
        num_examples=(
            np.full(num_clients, EXAMPLES, dtype=np.int64) if num_examples is None else num_examples
        ),
        epochs=EPOCHS,
        model_bytes=MODEL_BYTES,
        ledger=ParticipationLedger(num_clients),
    )


def _run(scheduler: Scheduler, rounds: int) -> list[RoundPlan]:
    """Plans and commits `rounds` rounds, each from where the one before ended."""
    plans: list[RoundPlan] = []
    for r in range(rounds):
        plan = scheduler.plan(r, plans[-1].end_s if plans else scheduler.start_s)
        scheduler.commit(plan)
        plans.append(plan)
    return plans


def _same_plan(a: RoundPlan, b: RoundPlan) -> bool:
    return (
        (a.round_idx, a.start_s, a.end_s, a.attempts, a.available, a.selected)
        == (b.round_idx, b.start_s, b.end_s, b.attempts, b.available, b.selected)
        and np.array_equal(a.cohort, b.cohort)
        and (a.outcome.dropped, a.outcome.stragglers, a.outcome.late, a.outcome.duration_s)
        == (b.outcome.dropped, b.outcome.stragglers, b.outcome.late, b.outcome.duration_s)
        and a.outcome.counts == b.outcome.counts
    )


# A busy configuration: heavy-tailed devices (some straggle), dropouts, over-selection.
def _busy(seed: int) -> Scheduler:
    return _scheduler(
        300,
        seed=seed,
        clock=RoundClock(deadline_s=120.0, over_selection=1.3, dropout_prob=0.2, checkin_s=10.0),
        devices=LognormalDevices(seed=seed, sigma_speed=1.0),
        num_examples=np.random.default_rng(seed).integers(1, 60, 300),
        participation=UniformParticipation(cohort_size=20, min_separation=3),
    )


# -- durations ---------------------------------------------------------------------------------


def test_durations_golden():
    scheduler = _scheduler()
    np.testing.assert_array_equal(scheduler.durations(np.array([0, 5, 99])), [4.0, 4.0, 4.0])


def test_durations_are_compute_plus_transfer_down_and_up():
    devices = LognormalDevices(seed=3)
    examples = np.random.default_rng(0).integers(1, 500, 1000)
    scheduler = _scheduler(1000, devices=devices, num_examples=examples)
    ids = np.array([0, 3, 17, 999, 500])
    expected = examples[ids] * EPOCHS * devices.seconds_per_example(
        ids
    ) + 2 * MODEL_BYTES / devices.bandwidth(ids)
    np.testing.assert_allclose(scheduler.durations(ids), expected, rtol=1e-12)


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_same_plans():
    a, b = _run(_busy(7), 15), _run(_busy(7), 15)
    assert all(_same_plan(p, q) for p, q in zip(a, b, strict=True))


def test_other_seed_other_plans():
    a, b = _run(_busy(7), 5), _run(_busy(8), 5)
    assert not all(np.array_equal(p.cohort, q.cohort) for p, q in zip(a, b, strict=True))


def test_plan_changes_nothing_until_commit():
    scheduler = _busy(1)
    now = _run(scheduler, 3)[-1].end_s
    counts = scheduler.ledger.count.copy()
    first = scheduler.plan(3, now)
    assert first.attempts == 1
    assert first.start_s == now
    np.testing.assert_array_equal(scheduler.ledger.count, counts)
    assert _same_plan(first, scheduler.plan(3, now))


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start_h", "attempts", "start_s"),
    [
        # Each failed attempt costs checkin + deadline + retry = 30 + 600 + 600 = 1230 s; the
        # clients come online at 3 h = 10,800 s.
        (0.0, 10, 9 * 1230.0),  # 8 x 1230 = 9840 < 10,800 <= 11,070
        (0.5, 9, 1800.0 + 8 * 1230.0),  # 1800 + 7 x 1230 = 10,410 < 10,800 <= 11,640
        (3.0, 1, 10_800.0),
    ],
)
def test_retries_until_enough_report(start_h, attempts, start_s):
    clock = RoundClock(deadline_s=600.0, checkin_s=30.0, retry_after_s=600.0, start_h=start_h)
    scheduler = _scheduler(availability=_OnAfter(100, 3 * HOUR), clock=clock)
    assert scheduler.start_s == start_h * HOUR
    plan = scheduler.plan(0, scheduler.start_s)
    assert plan.attempts == attempts
    assert plan.start_s == start_s
    assert plan.end_s == start_s + 30.0 + 4.0  # the cohort is full at its (every) 4 s report
    assert plan.available == 100
    assert len(plan.cohort) == 10


def test_failed_attempts_advance_the_clock_by_checkin_deadline_and_retry():
    # Half the clients drop out and all 10 must report: most attempts fail.
    clock = RoundClock(
        deadline_s=300.0,
        checkin_s=20.0,
        retry_after_s=100.0,
        dropout_prob=0.5,
        min_report_fraction=1.0,
        over_selection=1.5,
    )
    scheduler = _scheduler(clock=clock)
    previous_end = 0.0
    retried = 0
    for plan in _run(scheduler, 10):
        assert plan.start_s == previous_end + (plan.attempts - 1) * (20.0 + 300.0 + 100.0)
        assert plan.end_s == plan.start_s + 20.0 + 4.0
        assert len(plan.cohort) == 10
        previous_end = plan.end_s
        retried += plan.attempts > 1
    assert retried >= 3


def test_round_failed_error_after_max_attempts():
    clock = RoundClock(deadline_s=600.0, checkin_s=30.0, retry_after_s=600.0, max_attempts=3)
    scheduler = _scheduler(availability=_OnAfter(100, math.inf), clock=clock)
    with pytest.raises(RoundFailedError) as info:
        scheduler.plan(0, 0.0)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("round 0:")
    assert "3 attempts" in message
    assert "8 of 10" in message  # min_reports of the cohort
    assert (info.value.round_idx, info.value.now_s) == (0, 3 * 1230.0)
    assert scheduler.ledger.rounds_recorded == 0


def test_round_failed_error_names_the_round():
    # Everyone may join once: the fourth round of 10 out of 30 finds nobody.
    policy = UniformParticipation(cohort_size=10, max_participations=1)
    scheduler = _scheduler(30, participation=policy, clock=RoundClock(max_attempts=2))
    now = _run(scheduler, 3)[-1].end_s
    with pytest.raises(RoundFailedError, match=r"^round 3: .* 2 attempts"):
        scheduler.plan(3, now)
    assert scheduler.ledger.rounds_recorded == 3


# -- who reports, and commit -------------------------------------------------------------------


def _slow_quarter(num_clients: int) -> _TableDevices:
    """Clients with id % 4 == 0 take 20 x 2 x 100 s: they always straggle."""
    speed = np.where(np.arange(num_clients) % 4 == 0, 100.0, 0.05)
    return _TableDevices(speed=speed, bytes_per_s=np.full(num_clients, 1.25e6))


def test_commit_records_only_reported_clients():
    num_clients = 40
    clock = RoundClock(deadline_s=600.0, over_selection=1.5, checkin_s=3.0, min_report_fraction=0.5)
    scheduler = _scheduler(num_clients, clock=clock, devices=_slow_quarter(num_clients))
    plan = scheduler.plan(0, scheduler.start_s)
    assert plan.selected == 15
    cohort = plan.cohort
    assert 5 <= len(cohort) <= 10
    assert not np.any(cohort % 4 == 0)  # stragglers never report
    assert plan.outcome.stragglers > 0
    scheduler.commit(plan)
    assert scheduler.ledger.rounds_recorded == 1
    expected = np.zeros(num_clients, dtype=np.int32)
    expected[cohort] = 1
    np.testing.assert_array_equal(scheduler.ledger.count, expected)
    np.testing.assert_array_equal(scheduler.ledger.last_start_s(cohort), plan.start_s)
    # The next round starts where this one ended.
    assert scheduler.plan(1, plan.end_s).start_s == plan.end_s


def test_dropouts_and_stragglers_are_excluded_over_many_rounds():
    num_clients = 400
    clock = RoundClock(
        deadline_s=600.0, over_selection=1.4, dropout_prob=0.25, min_report_fraction=0.5
    )
    scheduler = _scheduler(
        num_clients,
        clock=clock,
        devices=_slow_quarter(num_clients),
        participation=UniformParticipation(cohort_size=30),
    )
    selected = dropped = stragglers = 0
    history = []
    for plan in _run(scheduler, 60):
        outcome = plan.outcome
        assert np.all(scheduler.durations(plan.cohort) <= clock.deadline_s)
        assert not np.any(plan.cohort % 4 == 0)
        assert len(plan.cohort) + outcome.dropped + outcome.stragglers + outcome.late == (
            plan.selected
        )
        selected += plan.selected
        dropped += outcome.dropped
        stragglers += outcome.stragglers
        history.append(plan.cohort)
    assert dropped / selected == pytest.approx(0.25, abs=0.03)
    # A quarter of the clients are slow, and a slow one that drops out counts as dropped.
    assert stragglers / selected == pytest.approx(0.75 * 0.25, abs=0.03)
    # The ledger holds exactly the committed cohorts.
    np.testing.assert_array_equal(
        scheduler.ledger.count, np.bincount(np.concatenate(history), minlength=num_clients)
    )


def test_over_selection_sizes_the_selection():
    clock = RoundClock(over_selection=1.3)
    plan = _scheduler(clock=clock).plan(0, 0.0)
    assert plan.selected == 13
    assert len(plan.cohort) == 10
    assert plan.outcome.late == 3


def test_hourly_limit_waits_through_retries():
    # 10 of 30 clients per round, each at most once per 24 h: every fourth round waits out the
    # rest of the day in retries, and no client ever rejoins within 24 h of simulated time.
    policy = UniformParticipation(cohort_size=10, min_hours=24.0)
    clock = RoundClock(deadline_s=600.0, retry_after_s=1200.0, min_report_fraction=1.0)
    scheduler = _scheduler(30, participation=policy, clock=clock)
    plans = _run(scheduler, 12)
    assert max(p.attempts for p in plans) > 1
    last_start = np.full(30, -np.inf)
    for plan in plans:
        assert np.all(plan.start_s - last_start[plan.cohort] >= 24 * HOUR)
        last_start[plan.cohort] = plan.start_s
    assert scheduler.ledger.check(policy.bound.max_participations, policy.bound.min_separation)


# -- metrics -----------------------------------------------------------------------------------


def test_metrics():
    clock = RoundClock(deadline_s=600.0, checkin_s=30.0, retry_after_s=600.0, start_h=1.0)
    scheduler = _scheduler(availability=_OnAfter(100, 3 * HOUR), clock=clock)
    plan = scheduler.plan(0, scheduler.start_s)
    metrics = plan.metrics()
    assert set(metrics) == {
        "participation/available",
        "participation/selected",
        "participation/reported",
        "participation/dropped",
        "participation/stragglers",
        "participation/late",
        "participation/attempts",
        "system/sim_time_h",
        "system/sim_round_s",
    }
    assert all(isinstance(v, float) for v in metrics.values())
    # 3600 + 6 x 1230 = 10,980 >= 10,800: the seventh attempt counts.
    assert metrics["participation/attempts"] == 7.0
    assert metrics["system/sim_time_h"] == pytest.approx((3600.0 + 6 * 1230.0) / HOUR)
    assert metrics["system/sim_round_s"] == 34.0
    assert metrics["participation/available"] == 100.0
    assert metrics["participation/selected"] == 10.0
    assert metrics["participation/reported"] == 10.0
    assert metrics["participation/dropped"] == 0.0
    assert metrics["participation/stragglers"] == 0.0
    assert metrics["participation/late"] == 0.0


def test_metrics_of_a_busy_round_add_up():
    scheduler = _busy(3)
    for plan in _run(scheduler, 5):
        metrics = plan.metrics()
        assert metrics["participation/reported"] == len(plan.cohort)
        assert metrics["participation/selected"] == plan.selected == 26  # ceil(1.3 x 20)
        assert metrics["system/sim_round_s"] == plan.end_s - plan.start_s <= 10.0 + 120.0
        later = replace(plan, start_s=7200.0, end_s=7200.0 + metrics["system/sim_round_s"])
        assert later.metrics()["system/sim_time_h"] == 2.0
