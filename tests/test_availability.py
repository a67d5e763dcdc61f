"""engine/availability.py: who is reachable at simulated time t."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.availability import AlwaysAvailable, Availability
from engine.errors import ConfigError

# Every Availability implementation, built small. Add new ones here.
AVAILABILITIES: list[tuple[str, Callable[[int], Availability]]] = [
    ("always", lambda n: AlwaysAvailable(num_clients=n)),
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
