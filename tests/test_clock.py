"""engine/scheduling/clock.py: who of a round's selection reports before the deadline, and when."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from engine.scheduling import AttemptOutcome, RoundClock

# A hand-built attempt (deadline 600 s):
#   id        10   11   12       13   14   15
#   seconds   50  700   20       30  600   10
#   dropped    .    .   yes       .    .    .
# 12 drops out, 11 straggles (600 is on time: the deadline is inclusive); on time by duration:
# 15 (10 s), 13 (30 s), 10 (50 s), 14 (600 s).
SELECTED = np.array([10, 11, 12, 13, 14, 15], dtype=np.int64)
DURATIONS = np.array([50.0, 700.0, 20.0, 30.0, 600.0, 10.0])
DROPPED = np.array([False, False, True, False, False, False])


def _outcome(clock: RoundClock, cohort_size: int) -> AttemptOutcome:
    return clock.outcome(SELECTED, DURATIONS, DROPPED, cohort_size)


def test_full_cohort_closes_at_the_last_kept_report():
    outcome = _outcome(RoundClock(deadline_s=600.0, checkin_s=5.0), cohort_size=3)
    assert outcome.reported.tolist() == [10, 13, 15]  # the three fastest on-time reports
    assert outcome.reported.dtype == np.int64
    assert outcome.dropped == 1
    assert outcome.stragglers == 1
    assert outcome.late == 1  # 14 reported in time, after the cohort was full
    assert outcome.duration_s == 5.0 + 50.0
    assert outcome.counts  # 3 >= ceil(0.8 * 3)


def test_short_cohort_closes_at_the_deadline():
    outcome = _outcome(RoundClock(deadline_s=600.0, checkin_s=5.0), cohort_size=5)
    assert outcome.reported.tolist() == [10, 13, 14, 15]
    assert outcome.late == 0
    assert outcome.duration_s == 5.0 + 600.0
    assert outcome.counts  # 4 >= ceil(0.8 * 5) = 4


def test_cohort_exactly_full_closes_at_its_slowest_report():
    outcome = _outcome(RoundClock(deadline_s=600.0), cohort_size=4)
    assert outcome.reported.tolist() == [10, 13, 14, 15]
    assert outcome.late == 0
    assert outcome.duration_s == 600.0


@pytest.mark.parametrize(
    ("fraction", "cohort_size", "counts"),
    [(1.0, 5, False), (0.8, 5, True), (0.81, 5, False), (0.8, 6, False), (0.01, 6, True)],
)
def test_counts_follows_min_report_fraction(fraction, cohort_size, counts):
    # 4 clients report in time.
    outcome = _outcome(RoundClock(min_report_fraction=fraction), cohort_size)
    assert len(outcome.reported) == 4
    assert outcome.counts is counts


def test_dropped_stragglers_count_as_dropped():
    outcome = RoundClock(deadline_s=10.0).outcome(
        np.array([1, 2, 3]), np.array([20.0, 20.0, 5.0]), np.array([True, False, False]), 3
    )
    assert outcome.reported.tolist() == [3]
    assert (outcome.dropped, outcome.stragglers, outcome.late) == (1, 1, 0)
    assert not outcome.counts


def test_nobody_selected():
    clock = RoundClock(deadline_s=100.0, checkin_s=2.0)
    outcome = clock.outcome(np.empty(0, dtype=np.int64), np.empty(0), np.empty(0, dtype=bool), 4)
    assert outcome.reported.shape == (0,)
    assert (outcome.dropped, outcome.stragglers, outcome.late) == (0, 0, 0)
    assert outcome.duration_s == 102.0
    assert not outcome.counts


def test_outcome_does_not_modify_its_inputs():
    before = SELECTED.copy(), DURATIONS.copy(), DROPPED.copy()
    _outcome(RoundClock(), cohort_size=2)
    for now, then in zip((SELECTED, DURATIONS, DROPPED), before, strict=True):
        np.testing.assert_array_equal(now, then)


@st.composite
def attempts(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n = draw(st.integers(0, 60))
    selected = np.sort(
        np.random.default_rng(draw(st.integers(0, 2**32 - 1))).choice(10_000, n, replace=False)
    ).astype(np.int64)
    durations = np.array(draw(st.lists(st.floats(0.0, 1000.0), min_size=n, max_size=n)))
    dropped = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return selected, durations, dropped, draw(st.integers(1, 70))


@given(
    attempt=attempts(),
    deadline=st.floats(1.0, 900.0),
    checkin=st.floats(0.0, 100.0),
    fraction=st.floats(0.01, 1.0),
)
@settings(max_examples=300, deadline=None)
def test_outcome_properties(attempt, deadline, checkin, fraction):
    selected, durations, dropped, cohort_size = attempt
    clock = RoundClock(deadline_s=deadline, checkin_s=checkin, min_report_fraction=fraction)
    outcome = clock.outcome(selected, durations, dropped, cohort_size)
    reported = outcome.reported
    assert np.all(np.diff(reported) > 0)
    kept = np.isin(selected, reported)
    on_time = ~dropped & (durations <= deadline)
    # Dropped clients and stragglers never report; the cohort is never over-full.
    assert not np.any(kept & dropped)
    assert not np.any(kept & (durations > deadline))
    assert len(reported) == min(cohort_size, int(on_time.sum()))
    # The kept reports are the fastest on-time ones.
    if len(reported) and np.any(on_time & ~kept):
        assert durations[kept].max() <= durations[on_time & ~kept].min()
    # Every selected client is accounted for exactly once.
    assert outcome.dropped == int(dropped.sum())
    assert outcome.stragglers == int((~dropped & (durations > deadline)).sum())
    assert len(reported) + outcome.dropped + outcome.stragglers + outcome.late == len(selected)
    # The attempt closes at the last kept report when full, else at the deadline.
    full = len(reported) == cohort_size
    expected = checkin + (durations[kept].max() if full else deadline)
    assert outcome.duration_s == pytest.approx(expected, rel=0, abs=1e-9)
    assert outcome.duration_s <= checkin + deadline
    assert outcome.counts == (len(reported) >= clock.min_reports(cohort_size))


# -- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over_selection", "cohort_size", "expected"),
    [
        (1.0, 10, 10),
        (1.3, 10, 13),
        (1.1, 100, 110),  # 1.1 * 100 = 110.00000000000001 in floats: still 110, not 111
        (1.15, 100, 115),  # 114.99999999999999 in floats
        (1.1, 10, 11),
        (1.3, 100, 130),
        (1.25, 10, 13),  # 12.5 rounds up
        (2.0, 7, 14),
        (1.5, 1, 2),
        (1.01, 1000, 1010),
        (1.0, 1, 1),
    ],
)
def test_selection_size(over_selection, cohort_size, expected):
    assert RoundClock(over_selection=over_selection).selection_size(cohort_size) == expected


@pytest.mark.parametrize(
    ("fraction", "cohort_size", "expected"),
    [
        (0.8, 10, 8),
        (0.7, 10, 7),
        (0.3, 10, 3),
        (0.55, 100, 55),  # 55.00000000000001 in floats: still 55, not 56
        (0.85, 10, 9),
        (1.0, 10, 10),
        (0.01, 10, 1),
        (0.1, 3, 1),
        (0.5, 1, 1),
        (0.6, 100, 60),
    ],
)
def test_min_reports(fraction, cohort_size, expected):
    assert RoundClock(min_report_fraction=fraction).min_reports(cohort_size) == expected


def test_defaults():
    clock = RoundClock()
    assert clock.selection_size(100) == 100
    assert clock.min_reports(100) == 80
    assert clock.deadline_s == 600.0
    assert clock.dropout_prob == 0.0


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"deadline_s": 0.0}, "deadline_s"),
        ({"deadline_s": -1.0}, "deadline_s"),
        ({"over_selection": 0.99}, "over_selection"),
        ({"dropout_prob": 1.0}, "dropout_prob"),
        ({"dropout_prob": -0.1}, "dropout_prob"),
        ({"min_report_fraction": 0.0}, "min_report_fraction"),
        ({"min_report_fraction": 1.01}, "min_report_fraction"),
        ({"checkin_s": -1.0}, "checkin_s"),
        ({"retry_after_s": -1.0}, "retry_after_s"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"start_h": -1.0}, "start_h"),
    ],
)
def test_validation_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        RoundClock(**kwargs)
    assert info.value.key == key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"over_selection": 1.0},
        {"dropout_prob": 0.0},
        {"dropout_prob": 0.999},
        {"min_report_fraction": 1.0},
        {"checkin_s": 0.0},
        {"retry_after_s": 0.0},
        {"max_attempts": 1},
        {"start_h": 0.0},
    ],
)
def test_validation_accepts_the_edges(kwargs):
    RoundClock(**kwargs)


def test_secure_aggregation_costs_enter_the_clock():
    selected = np.arange(4, dtype=np.int64)
    durations = np.array([10.0, 20.0, 95.0, 30.0])
    dropped = np.zeros(4, dtype=bool)
    plain = RoundClock(deadline_s=100.0, min_report_fraction=0.5)
    secagg = RoundClock(
        deadline_s=100.0, min_report_fraction=0.5, secagg_client_s=8.0, secagg_interaction_s=50.0
    )
    before = plain.outcome(selected, durations, dropped, 4)
    after = secagg.outcome(selected, durations, dropped, 4)
    assert before.stragglers == 0 and after.stragglers == 1  # 95 + 8 s misses the deadline
    assert list(after.reported) == [0, 1, 3]
    assert after.counts and after.duration_s == pytest.approx(100.0 + 50.0)  # deadline + unmask
    lone = secagg.outcome(selected[:1], durations[:1], dropped[:1], 4)
    assert not lone.counts and lone.duration_s == pytest.approx(100.0)  # no unmasking round
