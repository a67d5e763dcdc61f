"""engine/models: classifiers and the flat-vector view of their parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from engine.training import MLP, LogisticRegression, assign_flat, flatten, init_parameters

MODELS: list[tuple[str, Callable[[], nn.Module]]] = [
    ("logreg", lambda: LogisticRegression(60, 10)),
    ("mlp", lambda: MLP(60, 10)),
    ("mlp-narrow", lambda: MLP(5, 3, hidden=7)),
]


@pytest.fixture(params=[f for _, f in MODELS], ids=[n for n, _ in MODELS])
def make_model(request) -> Callable[[], nn.Module]:
    return request.param


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- flatten / assign_flat ---------------------------------------------------------------------


def test_flatten_is_a_float32_copy_in_parameter_order(make_model):
    model = make_model()
    flat = flatten(model)
    assert flat.dtype == np.float32
    assert flat.shape == (_count(model),)
    expected = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    np.testing.assert_array_equal(flat, expected)
    flat[:] = 7.0  # a copy: writing it does not reach the model
    assert not any(torch.any(p == 7.0) for p in model.parameters())


def test_assign_flat_then_flatten_round_trips(make_model):
    model = make_model()
    vector = np.random.default_rng(0).standard_normal(_count(model)).astype(np.float32)
    assign_flat(model, torch.from_numpy(vector))
    np.testing.assert_array_equal(flatten(model), vector)
    # Pieces land in the right tensors, in `parameters()` order.
    offset = 0
    for param in model.parameters():
        chunk = vector[offset : offset + param.numel()].reshape(tuple(param.shape))
        np.testing.assert_array_equal(param.detach().numpy(), chunk)
        offset += param.numel()


def test_assign_flat_does_not_alias_the_source(make_model):
    model = make_model()
    vector = torch.from_numpy(np.arange(_count(model), dtype=np.float32) / 1000)
    before = vector.clone()
    assign_flat(model, vector)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(-3.0).add_(1.0)
    torch.testing.assert_close(vector, before, rtol=0, atol=0)
    # And the other way round: changing the source leaves the model as assigned.
    vector.zero_()
    np.testing.assert_array_equal(flatten(model), (before.numpy() * -3.0 + 1.0))


def test_assign_flat_keeps_the_parameters_as_leaves(make_model):
    model = make_model()
    params = list(model.parameters())
    assign_flat(model, torch.zeros(_count(model)))
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert all(p.requires_grad and p.is_leaf for p in model.parameters())


# -- init_parameters ---------------------------------------------------------------------------


def test_init_parameters_is_deterministic_per_seed(make_model):
    a, b, c = make_model(), make_model(), make_model()
    init_parameters(a, 17)
    init_parameters(b, 17)
    init_parameters(c, 18)
    np.testing.assert_array_equal(flatten(a), flatten(b))
    assert not np.array_equal(flatten(a), flatten(c))


def test_init_parameters_does_not_touch_the_global_rng(make_model):
    model = make_model()  # construction itself may use the global RNG
    state = torch.get_rng_state()
    init_parameters(model, 3)
    assert torch.equal(torch.get_rng_state(), state)


def test_init_parameters_ignores_previous_values(make_model):
    a, b = make_model(), make_model()
    assign_flat(b, torch.full((_count(b),), 100.0))
    init_parameters(a, 5)
    init_parameters(b, 5)
    np.testing.assert_array_equal(flatten(a), flatten(b))


def test_init_parameters_bounds_follow_fan_in():
    model = MLP(60, 10, hidden=64)
    init_parameters(model, 0)
    bounds = {
        "hidden.weight": 1 / math.sqrt(60),
        "hidden.bias": 1 / math.sqrt(60),
        "out.weight": 1 / math.sqrt(64),
        "out.bias": 1 / math.sqrt(64),
    }
    named = dict(model.named_parameters())
    assert set(named) == set(bounds)
    for name, bound in bounds.items():
        values = named[name].detach().numpy()
        assert np.abs(values).max() <= bound
        if values.size >= 100:  # filled out to the bound, and centred
            assert np.abs(values).max() > 0.9 * bound
            assert abs(values.mean()) < 0.1 * bound
            # U(-a, a) has variance a^2 / 3.
            assert abs(values.var() - bound**2 / 3) < 0.15 * bound**2 / 3

    logreg = LogisticRegression(60, 10)
    init_parameters(logreg, 0)
    for param in logreg.parameters():
        assert np.abs(param.detach().numpy()).max() <= 1 / math.sqrt(60)


# -- classifiers -------------------------------------------------------------------------------


def test_logistic_regression_shape_and_size():
    model = LogisticRegression(60, 10)
    assert _count(model) == 610
    assert model(torch.zeros(7, 60)).shape == (7, 10)
    # Inputs are flattened: [n, 6, 10] is the same as [n, 60].
    x = torch.randn(3, 6, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), model(x.reshape(3, 60)))


def test_logistic_regression_is_affine():
    model = LogisticRegression(4, 3)
    init_parameters(model, 1)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    weight = model.linear.weight.detach().numpy().astype(np.float64)
    bias = model.linear.bias.detach().numpy().astype(np.float64)
    expected = x.astype(np.float64) @ weight.T + bias
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5)


def test_mlp_shape_and_size():
    model = MLP(60, 10)
    assert _count(model) == 60 * 64 + 64 + 64 * 10 + 10
    assert model(torch.zeros(5, 60)).shape == (5, 10)
    narrow = MLP(5, 3, hidden=7)
    assert _count(narrow) == 5 * 7 + 7 + 7 * 3 + 3
    assert narrow(torch.zeros(2, 5)).shape == (2, 3)


def test_mlp_matches_a_numpy_forward_pass():
    model = MLP(5, 3, hidden=7)
    init_parameters(model, 2)
    p = {k: v.detach().numpy().astype(np.float64) for k, v in model.named_parameters()}
    x = np.random.default_rng(1).standard_normal((4, 5))
    hidden = np.maximum(x @ p["hidden.weight"].T + p["hidden.bias"], 0.0)
    expected = hidden @ p["out.weight"].T + p["out.bias"]
    out = model(torch.from_numpy(x.astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
