"""mechanisms/: noise mechanisms applied to the summed update on the server."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch

from mechanisms import Mechanism, NoNoise

# Every Mechanism implementation, built small. Add new ones here.
MECHANISMS: list[tuple[str, Callable[[], Mechanism]]] = [
    ("none", lambda: NoNoise()),
]


@pytest.fixture(params=[f for _, f in MECHANISMS], ids=[n for n, _ in MECHANISMS])
def make_mechanism(request) -> Callable[[], Mechanism]:
    return request.param


def _total(dim: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(dim).astype(np.float32))


# -- contract, every Mechanism -----------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 610])
def test_contract_privatize_keeps_shape_and_dtype(make_mechanism, dim):
    mechanism = make_mechanism()
    total = _total(dim)
    before = total.clone()
    for round_idx in range(3):
        released = mechanism.privatize(total, round_idx)
        assert released.shape == total.shape
        assert released.dtype == total.dtype
        assert torch.all(torch.isfinite(released))
    torch.testing.assert_close(total, before, rtol=0, atol=0)


def test_contract_state_dict_round_trip(make_mechanism):
    mechanism = make_mechanism()
    total = _total(20)
    for round_idx in range(2):
        mechanism.privatize(total, round_idx)
    state = copy.deepcopy(mechanism.state_dict())
    assert isinstance(state, dict)
    restored = make_mechanism()
    restored.load_state_dict(copy.deepcopy(state))
    _assert_same_state(restored.state_dict(), state)


def test_contract_privatize_is_reproducible_after_load_state_dict(make_mechanism):
    mechanism = make_mechanism()
    totals = [_total(30, seed) for seed in range(5)]
    mechanism.privatize(totals[0], 0)
    state = copy.deepcopy(mechanism.state_dict())
    expected = [mechanism.privatize(t, r).clone() for r, t in enumerate(totals[1:], start=1)]

    # A fresh mechanism restored from the state continues the same sequence ...
    restored = make_mechanism()
    restored.load_state_dict(copy.deepcopy(state))
    again = [restored.privatize(t, r) for r, t in enumerate(totals[1:], start=1)]
    # ... and so does the original, rewound.
    mechanism.load_state_dict(copy.deepcopy(state))
    rewound = [mechanism.privatize(t, r) for r, t in enumerate(totals[1:], start=1)]
    for a, b, c in zip(expected, again, rewound, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def _assert_same_state(a: object, b: object) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


# -- NoNoise -----------------------------------------------------------------------------------


def test_no_noise_is_the_identity():
    mechanism = NoNoise()
    total = _total(100, seed=3)
    expected = total.clone()
    for round_idx in (0, 1, 50):
        torch.testing.assert_close(mechanism.privatize(total, round_idx), expected, rtol=0, atol=0)


def test_no_noise_is_stateless():
    mechanism = NoNoise()
    assert mechanism.state_dict() == {}
    mechanism.load_state_dict({})
    assert mechanism == NoNoise()
