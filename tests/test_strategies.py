"""strategies/: server update rules."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import strategies
from common.errors import ConfigError
from strategies import DPFTRLM, AdaptiveFedOpt, FedAdam, FedAvg, FedAvgM, FedYogi, Strategy

# Every Strategy implementation. Add new ones here.
STRATEGIES: list[tuple[str, Callable[[], Strategy]]] = [
    ("fedavg", lambda: FedAvg()),
    ("fedavg-lr", lambda: FedAvg(server_lr=0.3)),
    ("fedavgm", lambda: FedAvgM()),
    ("fedavgm-nesterov", lambda: FedAvgM(server_lr=0.5, momentum=0.5, nesterov=True)),
    ("fedavgm-no-momentum", lambda: FedAvgM(momentum=0.0)),
    ("fedadam", lambda: FedAdam()),
    ("fedadam-custom", lambda: FedAdam(server_lr=0.3, beta1=0.0, beta2=0.5, tau=0.1)),
    ("fedyogi", lambda: FedYogi()),
    ("fedyogi-custom", lambda: FedYogi(server_lr=0.3, beta1=0.0, beta2=0.5, tau=0.1)),
    ("dpftrlm", lambda: DPFTRLM()),
    ("dpftrlm-no-momentum", lambda: DPFTRLM(server_lr=0.5, momentum=0.0)),
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


def test_contract_state_keeps_its_keys_shapes_and_dtypes(make_strategy):
    # The state is checkpointed and fed back: it must keep the layout init_state gave it.
    strategy = make_strategy()
    params, update = _vectors(30, seed=3)
    params = params.double()
    init = strategy.init_state(params)
    state = init
    for _ in range(3):
        params, state = strategy.step(params, update.double(), state)
        assert state.keys() == init.keys()
        for key, value in state.items():
            assert value.shape == init[key].shape
            assert value.dtype == init[key].dtype


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


# -- shared helpers for the stateful strategies ------------------------------------------------


def _f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _run(strategy: Strategy, params: torch.Tensor, updates: list[torch.Tensor]):
    """Steps through `updates`; returns every (params, state) after each step."""
    state = strategy.init_state(params)
    out = []
    for update in updates:
        params, state = strategy.step(params, update, state)
        out.append((params, state))
    return out


# -- FedAvgM -----------------------------------------------------------------------------------

# Hand computation, lr = 0.5, beta = 0.9, params_0 = [1, -2], Delta_1 = [0.2, -0.4],
# Delta_2 = [0.1, 0.3]:
#   m_1 = Delta_1 = [0.2, -0.4]
#   m_2 = 0.9 m_1 + Delta_2 = [0.18 + 0.1, -0.36 + 0.3] = [0.28, -0.06]
# heavy ball: p_1 = p_0 + 0.5 m_1 = [1.1, -2.2];  p_2 = p_1 + 0.5 m_2 = [1.24, -2.23]
# Nesterov:   p_1 = p_0 + 0.5 (0.9 m_1 + Delta_1) = p_0 + 0.5 [0.38, -0.76] = [1.19, -2.38]
#             p_2 = p_1 + 0.5 (0.9 m_2 + Delta_2) = p_1 + 0.5 [0.352, 0.246] = [1.366, -2.257]
_FEDAVGM_UPDATES = [_f64(0.2, -0.4), _f64(0.1, 0.3)]
_FEDAVGM_MOMENTA = [_f64(0.2, -0.4), _f64(0.28, -0.06)]


@pytest.mark.parametrize(
    ("nesterov", "expected"),
    [
        (False, [_f64(1.1, -2.2), _f64(1.24, -2.23)]),
        (True, [_f64(1.19, -2.38), _f64(1.366, -2.257)]),
    ],
    ids=["heavy-ball", "nesterov"],
)
def test_fedavgm_two_steps_golden(nesterov, expected):
    strategy = FedAvgM(server_lr=0.5, momentum=0.9, nesterov=nesterov)
    steps = _run(strategy, _f64(1.0, -2.0), _FEDAVGM_UPDATES)
    for (params, state), want, momentum in zip(steps, expected, _FEDAVGM_MOMENTA, strict=True):
        torch.testing.assert_close(params, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state["momentum"], momentum, rtol=1e-12, atol=1e-12)


def test_fedavgm_carries_momentum_across_rounds():
    # The same update twice moves lr (1 + beta) Delta the second time, lr Delta from a fresh state.
    strategy = FedAvgM(server_lr=0.5, momentum=0.8)
    params, update = _f64(0.0, 1.0), _f64(1.0, -2.0)
    p1, state = strategy.step(params, update, strategy.init_state(params))
    p2, _ = strategy.step(p1, update, state)
    p2_fresh, _ = strategy.step(p1, update, strategy.init_state(p1))
    torch.testing.assert_close(p2 - p1, 0.5 * 1.8 * update, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p2_fresh - p1, 0.5 * update, rtol=1e-12, atol=1e-12)


def test_fedavgm_without_momentum_is_fedavg():
    params, update = _vectors(64, seed=4)
    fedavgm, fedavg = FedAvgM(server_lr=0.7, momentum=0.0), FedAvg(server_lr=0.7)
    p, q, state = params, params, fedavgm.init_state(params)
    for _ in range(3):
        p, state = fedavgm.step(p, update, state)
        q, _ = fedavg.step(q, update, {})
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# -- FedAdam and FedYogi -----------------------------------------------------------------------

# Hand computation (scalar floats, per coordinate), lr = 0.1, beta1 = 0.9, beta2 = 0.99,
# tau = 1e-3, v_0 = tau^2 = 1e-6, params_0 = [1, -1, 0.5], Delta_1 = [0.1, -0.2, 0],
# Delta_2 = [0.3, 0.1, -0.05].
#   m_1 = 0.1 Delta_1 = [0.01, -0.02, 0];  m_2 = 0.9 m_1 + 0.1 Delta_2 = [0.039, -0.008, -0.005]
#   Adam: v_1 = 0.99e-6 + 0.01 Delta_1^2 = [1.0099e-4, 4.0099e-4, 9.9e-7]
#         v_2 = 0.99 v_1 + 0.01 Delta_2^2 = [9.999801e-4, 4.969801e-4, 2.598010e-5]
#   Yogi: Delta_1^2 > v_0 in the first two coordinates (v grows by 0.01 Delta^2), and equals 0
#         < v_0 in the third (v - 0 = v): v_1 = [1.01e-4, 4.01e-4, 1e-6]
#         Delta_2^2 = [0.09, 0.01, 0.0025] > v_1 everywhere: v_2 = v_1 + 0.01 Delta_2^2
#         = [1.001e-3, 5.01e-4, 2.6e-5]
#   p_t = p_{t-1} + 0.1 m_t / (sqrt(v_t) + 1e-3); e.g. Adam p_1[0] = 1 + 0.1 * 0.01 /
#   (sqrt(1.0099e-4) + 1e-3) = 1 + 0.001 / 0.0110494... = 1.0905028...
_ADAPTIVE_UPDATES = [_f64(0.1, -0.2, 0.0), _f64(0.3, 0.1, -0.05)]
_ADAPTIVE_M = [_f64(0.01, -0.02, 0.0), _f64(0.039, -0.008, -0.005)]
_ADAPTIVE_GOLDEN = {
    "adam": (
        [_f64(1.0099e-4, 4.0099e-4, 9.9e-7), _f64(9.999801e-4, 4.969801e-4, 2.598010e-5)],
        [
            _f64(1.090502831185222, -1.0951260516755887, 0.5),
            _f64(1.210052361369673, -1.1294710594477033, 0.41799336702973927),
        ],
    ),
    "yogi": (
        [_f64(1.01e-4, 4.01e-4, 1e-6), _f64(1.001e-3, 5.01e-4, 2.6e-5)],
        [
            _f64(1.090498756211209, -1.0951249219725039, 0.5),
            _f64(1.2099892339637486, -1.1293377688294628, 0.41801960972814434),
        ],
    ),
}


@pytest.mark.parametrize("cls", [FedAdam, FedYogi], ids=["adam", "yogi"])
def test_adaptive_two_steps_golden(cls):
    strategy = cls(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    second_moments, expected = _ADAPTIVE_GOLDEN["adam" if cls is FedAdam else "yogi"]
    state = strategy.init_state(_f64(1.0, -1.0, 0.5))
    torch.testing.assert_close(state["m"], _f64(0.0, 0.0, 0.0), rtol=0, atol=0)
    torch.testing.assert_close(state["v"], _f64(1e-6, 1e-6, 1e-6), rtol=1e-12, atol=0)
    steps = _run(strategy, _f64(1.0, -1.0, 0.5), _ADAPTIVE_UPDATES)
    for (params, state), m, v, want in zip(
        steps, _ADAPTIVE_M, second_moments, expected, strict=True
    ):
        torch.testing.assert_close(state["m"], m, rtol=1e-10, atol=1e-15)
        torch.testing.assert_close(state["v"], v, rtol=1e-10, atol=1e-15)
        torch.testing.assert_close(params, want, rtol=1e-10, atol=1e-12)


def test_yogi_and_adam_differ_exactly_where_expected():
    # Yogi - Adam = (1 - beta2) (v - D (1 + sign(v - D))) with D = Delta^2: zero where v = D or
    # v = 2 D; (1 - beta2) v > 0 where v < D; (1 - beta2)(v - 2D), negative where D < v < 2D and
    # positive where v > 2D. Powers of two keep every value exact.
    beta2 = 0.75
    adam, yogi = FedAdam(beta2=beta2), FedYogi(beta2=beta2)
    params = torch.zeros(5, dtype=torch.float64)
    update = torch.full((5,), 0.5, dtype=torch.float64)  # D = 0.25 everywhere
    v = _f64(0.25, 0.5, 0.0625, 0.375, 1.0)  # v = D, 2D, < D, in (D, 2D), > 2D
    state = {"m": _f64(0.1, -0.2, 0.3, -0.4, 0.5), "v": v}
    p_adam, s_adam = adam.step(params, update, state)
    p_yogi, s_yogi = yogi.step(params, update, state)
    torch.testing.assert_close(s_adam["m"], s_yogi["m"], rtol=0, atol=0)
    torch.testing.assert_close(s_adam["v"], 0.75 * v + 0.25 * 0.25, rtol=0, atol=0)
    torch.testing.assert_close(
        s_yogi["v"], _f64(0.25, 0.5 - 0.0625, 0.0625 + 0.0625, 0.375 - 0.0625, 1.0 - 0.0625)
    )
    diff = s_yogi["v"] - s_adam["v"]
    torch.testing.assert_close(diff, 0.25 * _f64(0.0, 0.0, 0.0625, -0.125, 0.5), rtol=0, atol=0)
    same = torch.tensor([True, True, False, False, False])
    assert torch.equal(p_adam == p_yogi, same)
    # Larger v means a shorter step.
    step_ratio = (p_yogi - params).abs() / (p_adam - params).abs()
    assert torch.equal(step_ratio < 1, torch.tensor([False, False, True, False, True]))


@pytest.mark.parametrize("cls", [FedAdam, FedYogi], ids=["adam", "yogi"])
def test_adaptive_carries_moments_across_rounds(cls):
    strategy = cls(server_lr=0.1)
    params, update = _vectors(20, seed=5)
    p1, state = strategy.step(params, update, strategy.init_state(params))
    p2, _ = strategy.step(p1, update, state)
    p2_fresh, _ = strategy.step(p1, update, strategy.init_state(p1))
    # With the same update twice, m_2 = (1 + beta1) m_1 and the step is longer than a fresh one.
    assert torch.all((p2 - p1).abs() > (p2_fresh - p1).abs())


def test_yogi_second_moment_stays_positive():
    strategy = FedYogi(beta2=0.5, tau=1e-3)
    params = torch.zeros(200, dtype=torch.float64)
    rng = np.random.default_rng(6)
    state = strategy.init_state(params)
    for scale in [10.0, 1.0, 1e-3, 0.0, 1e-6, 0.0]:  # big deltas, then shrinking ones
        update = torch.from_numpy(scale * rng.standard_normal(200))
        params, state = strategy.step(params, update, state)
        assert torch.all(state["v"] > 0)
        assert torch.all(torch.isfinite(params))


def test_adaptive_base_is_abstract():
    with pytest.raises(TypeError):
        AdaptiveFedOpt()  # type: ignore[abstract]


# -- DP-FTRLM ----------------------------------------------------------------------------------

# Hand computation, lr = 0.5, gamma = 0.9, same numbers as FedAvgM's heavy ball above, in the
# FTRL form: s_1 = [0.2, -0.4], s_2 = [0.3, -0.1]; phi_1 = s_1, phi_2 = 0.9 phi_1 + s_2
# = [0.48, -0.46]; p_1 = p_0 + 0.5 phi_1 = [1.1, -2.2], p_2 = p_0 + 0.5 phi_2 = [1.24, -2.23].


def test_dpftrlm_two_steps_golden():
    steps = _run(DPFTRLM(server_lr=0.5, momentum=0.9), _f64(1.0, -2.0), _FEDAVGM_UPDATES)
    expected = [_f64(1.1, -2.2), _f64(1.24, -2.23)]
    for (params, state), want, momentum in zip(steps, expected, _FEDAVGM_MOMENTA, strict=True):
        torch.testing.assert_close(params, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state["momentum"], momentum, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_dpftrlm_equals_ftrl_with_momentum_on_noisy_prefix_sums(momentum):
    # Kairouz et al. 2021, Alg. 1 with momentum, written independently: noisy prefix sums
    # s_t = sum_{i<=t} x_i + n_t with n_t correlated noise on the prefix sums (as tree
    # aggregation adds), phi_t = gamma phi_{t-1} + s_t, p_{t+1} = p_0 + lr phi_t. The strategy
    # only sees the per-round released values x_hat_t = s_t - s_{t-1}.
    rng = np.random.default_rng(7)
    rounds, dim, lr = 40, 8, 0.3
    p0 = rng.standard_normal(dim)
    x = 0.1 * rng.standard_normal((rounds, dim))
    prefix_noise = np.cumsum(rng.standard_normal((rounds, dim)), axis=0) / 3.0
    s = np.cumsum(x, axis=0) + prefix_noise
    released = np.diff(s, axis=0, prepend=0.0)
    phi = np.zeros(dim)
    strategy = DPFTRLM(server_lr=lr, momentum=momentum)
    params = torch.from_numpy(p0)
    state = strategy.init_state(params)
    for t in range(rounds):
        phi = momentum * phi + s[t]
        params, state = strategy.step(params, torch.from_numpy(released[t]), state)
        np.testing.assert_allclose(params.numpy(), p0 + lr * phi, rtol=1e-9, atol=1e-9)


def test_dpftrlm_is_its_own_class_configured_by_lr_and_momentum_only():
    assert not isinstance(DPFTRLM(), FedAvgM)
    assert list(inspect.signature(DPFTRLM).parameters) == ["server_lr", "momentum"]
    assert DPFTRLM(server_lr=0.5) == DPFTRLM(server_lr=0.5)
    assert DPFTRLM(server_lr=0.5) != DPFTRLM(server_lr=0.4)


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (FedAvgM, {"momentum": 1.5}, "momentum"),
        (FedAvgM, {"momentum": 1.0}, "momentum"),
        (FedAvgM, {"momentum": -0.1}, "momentum"),
        (FedAvgM, {"momentum": math.nan}, "momentum"),
        (FedAvgM, {"server_lr": 0.0}, "server_lr"),
        (FedAvgM, {"server_lr": math.inf}, "server_lr"),
        (FedAvgM, {"nesterov": "yes"}, "nesterov"),
        (FedAdam, {"server_lr": -1.0}, "server_lr"),
        (FedAdam, {"beta1": 1.0}, "beta1"),
        (FedAdam, {"beta1": -0.5}, "beta1"),
        (FedAdam, {"beta2": 1.5}, "beta2"),
        (FedAdam, {"beta2": math.nan}, "beta2"),
        (FedAdam, {"tau": 0.0}, "tau"),
        (FedAdam, {"tau": math.inf}, "tau"),
        (FedYogi, {"server_lr": 0.0}, "server_lr"),
        (FedYogi, {"beta1": 2.0}, "beta1"),
        (FedYogi, {"beta2": 1.0}, "beta2"),
        (FedYogi, {"tau": -1e-3}, "tau"),
        (DPFTRLM, {"momentum": 1.5}, "momentum"),
        (DPFTRLM, {"momentum": -1.0}, "momentum"),
        (DPFTRLM, {"server_lr": 0.0}, "server_lr"),
        (DPFTRLM, {"server_lr": math.nan}, "server_lr"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_new_strategies_validation_names_the_key(cls, kwargs, key):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.key == key


# -- convergence on a quadratic ----------------------------------------------------------------

# f(x) = 1/2 sum_i a_i (x_i - x*_i)^2 with curvatures a_i in [0.5, 2]; each round the strategy
# gets the noiseless pseudo-gradient -grad f(x).
_TOY: list[tuple[str, Strategy]] = [
    ("fedavg", FedAvg(server_lr=0.5)),
    ("fedavgm", FedAvgM(server_lr=0.1, momentum=0.9)),
    ("fedavgm-nesterov", FedAvgM(server_lr=0.1, momentum=0.9, nesterov=True)),
    ("fedadam", FedAdam(server_lr=0.05)),
    ("fedyogi", FedYogi(server_lr=0.05)),
    ("dpftrlm", DPFTRLM(server_lr=0.1, momentum=0.9)),
]


@pytest.mark.parametrize("strategy", [s for _, s in _TOY], ids=[n for n, _ in _TOY])
def test_converges_on_a_quadratic_with_noiseless_gradients(strategy):
    curvature = torch.linspace(0.5, 2.0, 20, dtype=torch.float64)
    optimum = torch.linspace(-1.0, 1.0, 20, dtype=torch.float64)
    params = torch.full((20,), 3.0, dtype=torch.float64)
    state = strategy.init_state(params)
    start = float(torch.linalg.vector_norm(params - optimum))
    for _ in range(500):
        params, state = strategy.step(params, -curvature * (params - optimum), state)
    assert float(torch.linalg.vector_norm(params - optimum)) < 1e-6 * start


# -- exports and configs -----------------------------------------------------------------------

_CONF = Path(__file__).resolve().parents[1] / "conf" / "strategy"


def test_new_strategies_are_exported():
    for name in ["FedAvgM", "FedAdam", "FedYogi", "DPFTRLM"]:
        assert name in strategies.__all__


@pytest.mark.parametrize(
    ("option", "cls"),
    [
        ("fedavg", FedAvg),
        ("fedavgm", FedAvgM),
        ("fedadam", FedAdam),
        ("fedyogi", FedYogi),
        ("dpftrl", DPFTRLM),
    ],
)
def test_strategy_yaml_instantiates_to_the_defaults(option, cls):
    cfg = OmegaConf.to_container(OmegaConf.load(_CONF / f"{option}.yaml"))
    assert isinstance(cfg, dict)
    assert cfg.pop("defaults") == [f"/schema/strategy/{option}@_here_"]
    assert set(cfg) - {"_target_"} == set(inspect.signature(cls).parameters)
    assert instantiate(cfg) == cls()
