"""strategies/: server update rules."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError
from strategies import FedAvg, Strategy

# Every Strategy implementation. Add new ones here.
STRATEGIES: list[tuple[str, Callable[[], Strategy]]] = [
    ("fedavg", lambda: FedAvg()),
    ("fedavg-lr", lambda: FedAvg(server_lr=0.3)),
]


@pytest.fixture(params=[f for _, f in STRATEGIES], ids=[n for n, _ in STRATEGIES])
def make_strategy(request) -> Callable[[], Strategy]:
    return request.param


def _vectors(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    params = torch.from_numpy(rng.standard_normal(dim).astype(np.float32))
    update = torch.from_numpy(0.1 * rng.standard_normal(dim).astype(np.float32))
    return params, update


def _clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


# -- contract, every Strategy ------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 610])
def test_contract_step_shape_dtype_and_purity(make_strategy, dim):
    strategy = make_strategy()
    params, update = _vectors(dim, seed=dim)
    state = strategy.init_state(params)
    assert isinstance(state, dict)
    for round_idx in range(3):
        params_before, update_before = params.clone(), update.clone()
        state_before = _clone_state(state)
        new_params, new_state = strategy.step(params, update, state)
        assert new_params.shape == params.shape
        assert new_params.dtype == params.dtype
        assert torch.all(torch.isfinite(new_params))
        assert isinstance(new_state, dict)
        # Inputs are not modified in place.
        torch.testing.assert_close(params, params_before, rtol=0, atol=0)
        torch.testing.assert_close(update, update_before, rtol=0, atol=0)
        assert state.keys() == state_before.keys()
        for key, value in state.items():
            torch.testing.assert_close(value, state_before[key], rtol=0, atol=0)
        assert new_params is not params
        params, state = new_params, new_state
        update = update * (round_idx + 2)


def test_contract_step_is_deterministic(make_strategy):
    params, update = _vectors(50, seed=0)
    runs = []
    for _ in range(2):
        strategy = make_strategy()
        p, state = params.clone(), strategy.init_state(params)
        for _ in range(3):
            p, state = strategy.step(p, update, state)
        runs.append(p)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_contract_zero_update_from_init_leaves_params_unchanged(make_strategy):
    strategy = make_strategy()
    params, _ = _vectors(100, seed=1)
    state = strategy.init_state(params)
    for _ in range(3):
        new_params, state = strategy.step(params, torch.zeros_like(params), state)
        torch.testing.assert_close(new_params, params, rtol=0, atol=0)


def test_contract_moves_along_the_update(make_strategy):
    # A first step moves the parameters in the direction of the averaged client delta.
    strategy = make_strategy()
    params, update = _vectors(100, seed=2)
    new_params, _ = strategy.step(params, update, strategy.init_state(params))
    assert float(torch.dot(new_params - params, update)) > 0


# -- FedAvg ------------------------------------------------------------------------------------


@given(
    server_lr=st.floats(1e-3, 10.0),
    dim=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=50, deadline=None)
def test_fedavg_is_params_plus_lr_times_update(server_lr, dim, seed):
    params, update = _vectors(dim, seed)
    strategy = FedAvg(server_lr=server_lr)
    new_params, state = strategy.step(params, update, strategy.init_state(params))
    expected = params.numpy().astype(np.float64) + server_lr * update.numpy().astype(np.float64)
    np.testing.assert_allclose(new_params.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert state == {}


def test_fedavg_with_unit_lr_averages_client_models():
    # With server_lr = 1, params + mean(delta) is the mean of the client models.
    params = torch.tensor([1.0, -2.0, 0.5])
    clients = torch.tensor([[2.0, 0.0, 0.5], [0.0, -4.0, 1.5]])
    update = (clients - params).mean(dim=0)
    new_params, _ = FedAvg().step(params, update, {})
    torch.testing.assert_close(new_params, torch.tensor([1.0, -2.0, 1.0]))


@pytest.mark.parametrize("server_lr", [0.0, -1.0])
def test_fedavg_validation(server_lr):
    with pytest.raises(ConfigError) as info:
        FedAvg(server_lr=server_lr)
    assert info.value.key == "server_lr"
