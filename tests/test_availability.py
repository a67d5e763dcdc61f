"""engine/population/availability.py: who is reachable at simulated time t."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from engine.population import (
    AlwaysAvailable,
    Availability,
    DiurnalAvailability,
    FedScaleAvailability,
    IntervalTraceAvailability,
    MarkovAvailability,
)

# Every Availability implementation, built small. Add new ones here.
AVAILABILITIES: list[tuple[str, Callable[[int], Availability]]] = [
    ("always", lambda n: AlwaysAvailable(num_clients=n)),
    ("diurnal", lambda n: DiurnalAvailability(num_clients=n, seed=4)),
    ("markov", lambda n: MarkovAvailability(num_clients=n, seed=5, mean_on_h=1.0, slot_s=900.0)),
    (
        "trace",
        lambda n: IntervalTraceAvailability(
            num_clients=n, path="fedray:diurnal_intervals.csv", period_s=86_400.0
        ),
    ),
    (
        "fedscale",
        lambda n: FedScaleAvailability(num_clients=n, path="fedray:fedscale_behaviour.json"),
    ),
]


@pytest.fixture(params=[f for _, f in AVAILABILITIES], ids=[n for n, _ in AVAILABILITIES])
def make_availability(request) -> Callable[[int], Availability]:
    return request.param


@pytest.mark.parametrize("num_clients", [1, 2, 1000])
@pytest.mark.parametrize("t", [0.0, 1.5, 3600.0, 86_400.0 * 7 + 0.25])
def test_contract_mask_is_bool_over_the_population(make_availability, num_clients, t):
    availability = make_availability(num_clients)
    assert availability.num_clients == num_clients
    mask = availability.available(t)
    assert isinstance(mask, np.ndarray)
    assert mask.dtype == np.bool_
    assert mask.shape == (num_clients,)
    # A pure function of t.
    np.testing.assert_array_equal(mask, make_availability(num_clients).available(t))
    np.testing.assert_array_equal(mask, availability.available(t))


def test_contract_mask_is_not_shared_state(make_availability):
    availability = make_availability(10)
    mask = availability.available(0.0)
    expected = mask.copy()
    mask[:] = ~mask  # a caller scribbling on its mask must not change the next one
    np.testing.assert_array_equal(availability.available(0.0), expected)


@given(num_clients=st.integers(1, 5000), t=st.floats(0, 1e9, allow_nan=False))
@settings(max_examples=50, deadline=None)
def test_always_available_is_all_true(num_clients, t):
    mask = AlwaysAvailable(num_clients=num_clients).available(t)
    assert mask.dtype == np.bool_
    assert mask.shape == (num_clients,)
    assert mask.all()


@pytest.mark.parametrize("num_clients", [0, -1, -100])
def test_always_available_rejects_empty_population(num_clients):
    with pytest.raises(ConfigError) as info:
        AlwaysAvailable(num_clients=num_clients)
    assert info.value.key == "num_clients"


# -- diurnal -----------------------------------------------------------------------------------


def test_diurnal_fraction_over_a_day_matches_the_window_at_1m_clients():
    # Acceptance: at N = 1M, the available fraction averaged over 24 h is the configured window
    # (8 of 24 hours) within 2 percentage points. Jitter of the length is symmetric, so the
    # expected fraction is window_hours / 24 exactly.
    availability = DiurnalAvailability(num_clients=1_000_000, seed=0, window_hours=8.0)
    fractions = [availability.available(t).mean() for t in np.arange(0.0, 86_400.0, 900.0)]
    assert abs(np.mean(fractions) - 8.0 / 24.0) < 0.02
    assert max(fractions) - min(fractions) > 0.3  # and it cycles


def test_diurnal_window_in_local_time():
    # No spread, no jitter: everyone is online from 22:00 to 06:00 UTC+2, i.e. 20:00 to 04:00 UTC.
    availability = DiurnalAvailability(
        num_clients=50,
        window_start_h=22.0,
        window_hours=8.0,
        jitter_h=0.0,
        utc_offset_h=2.0,
        timezone_spread_h=0.0,
    )
    for hour, online in [(19.9, False), (20.01, True), (23.0, True), (27.9, True), (28.01, False)]:
        assert availability.available(hour * 3600.0 + 86_400.0 * 3).all() == online, hour
        assert availability.available(hour * 3600.0).any() == online, hour


def test_diurnal_client_window_does_not_depend_on_population_size():
    small = DiurnalAvailability(num_clients=100, seed=9)
    large = DiurnalAvailability(num_clients=5000, seed=9)
    for t in np.arange(0.0, 86_400.0, 3600.0):
        np.testing.assert_array_equal(small.available(t), large.available(t)[:100])


@pytest.mark.parametrize(
    ("field", "value"),
    [("window_hours", 25.0), ("window_hours", -1.0), ("jitter_h", -0.5), ("timezone_spread_h", 13)],
)
def test_diurnal_validation_names_the_key(field, value):
    with pytest.raises(ConfigError) as info:
        DiurnalAvailability(num_clients=10, **{field: value})
    assert info.value.key == field


# -- Markov ------------------------------------------------------------------------------------


def test_markov_is_stationary_and_mixes():
    chain = MarkovAvailability(num_clients=200_000, seed=1, mean_on_h=2.0, mean_off_h=6.0)
    slots = np.arange(0.0, 86_400.0, chain.slot_s)
    masks = [chain.available(t) for t in slots]
    fractions = np.array([m.mean() for m in masks])
    assert np.all(np.abs(fractions - 0.25) < 0.01)
    # Mean online spell: an online client stays online with probability 1 - slot / mean_on.
    stays = np.mean([(a & b).sum() / a.sum() for a, b in itertools.pairwise(masks)])
    assert abs(stays - (1.0 - 600.0 / 7200.0)) < 0.005


def test_markov_replays_when_asked_for_an_earlier_time():
    chain = MarkovAvailability(num_clients=1000, seed=2)
    later = chain.available(36_000.0)
    earlier = chain.available(1_200.0)
    np.testing.assert_array_equal(
        earlier, MarkovAvailability(num_clients=1000, seed=2).available(1_200.0)
    )
    np.testing.assert_array_equal(later, chain.available(36_000.0))
    # Within one slot the state does not change.
    np.testing.assert_array_equal(chain.available(36_000.0), chain.available(36_000.0 + 599.0))


@pytest.mark.parametrize(
    ("field", "value"), [("slot_s", 0.0), ("mean_on_h", 0.1), ("mean_off_h", 0.0)]
)
def test_markov_validation_names_the_key(field, value):
    with pytest.raises(ConfigError) as info:
        MarkovAvailability(num_clients=10, **{field: value})
    assert info.value.key == field
