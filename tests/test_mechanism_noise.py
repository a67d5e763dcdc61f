"""Noise mechanisms: the contract every one keeps, and the statistics of the noise it adds.

Every entry of MECHANISMS is checked against its own `matrices`: the noise it streams must have
covariance sigma^2 C_inv C_inv^T, and its prefix sums the error that A C_inv predicts. Streams
go through an explicit `NoiseState`, as the server holds them.
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from common.rng import Stream, torch_generator
from mechanisms import Mechanism, NoiseState, NoNoise
from mechanisms.banded import BandedMechanism
from mechanisms.blt import BltMechanism
from mechanisms.gaussian import GaussianMechanism
from mechanisms.tree import TreeMechanism, honaker_variances

SIGMA = 0.7
ROUNDS = 12  # rounds of the statistics tests; mechanisms that optimise for n get this n
DIM = 100_000  # coordinates: the samples of the statistics tests
RESTART = 5


def _popcount(x: int) -> int:
    return bin(x).count("1")


def _honaker_prefix(t: int) -> float:
    count = t + 1
    return sum(2**lv / (2 ** (lv + 1) - 1) for lv in range(count.bit_length()) if count >> lv & 1)


@dataclass(frozen=True)
class Case:
    """A mechanism under test: a factory of seeded instances, and optionally the closed form
    of its prefix-sum error variance at round t, in units of sigma^2."""

    name: str
    make: Callable[[int], Mechanism]
    prefix_variance: Callable[[int], float] | None = None


# Every Mechanism, built small. Add new ones here, one line each.
MECHANISMS: list[Case] = [
    Case("none", lambda seed: NoNoise()),
    Case("gaussian", lambda seed: GaussianMechanism(SIGMA, seed), lambda t: t + 1),
    Case("tree", lambda seed: TreeMechanism(SIGMA, seed), lambda t: _popcount(t + 1)),
    Case(
        "tree_restarts",
        lambda seed: TreeMechanism(SIGMA, seed, restart_every=RESTART),
        lambda t: t // RESTART * _popcount(RESTART) + _popcount(t % RESTART + 1),
    ),
    Case(
        "tree_efficient", lambda seed: TreeMechanism(SIGMA, seed, efficient=True), _honaker_prefix
    ),
    Case("banded", lambda seed: BandedMechanism(SIGMA, seed).prepare(ROUNDS, 2, 3)),
    Case("banded_wide", lambda seed: BandedMechanism(SIGMA, seed, bands=6).prepare(ROUNDS, 2, 3)),
    Case("blt", lambda seed: BltMechanism(SIGMA, seed).prepare(ROUNDS, 2, 3)),
    Case("blt_5", lambda seed: BltMechanism(SIGMA, seed, buffers=5).prepare(ROUNDS, 3, 2)),
]


@pytest.fixture(params=MECHANISMS, ids=[case.name for case in MECHANISMS])
def case(request) -> Case:
    return request.param


def _noisy(mechanism: Mechanism) -> bool:
    return mechanism.noise_multiplier > 0


def _stream(
    mechanism: Mechanism, totals: list[torch.Tensor], state: NoiseState | None = None
) -> tuple[list[torch.Tensor], NoiseState]:
    """The releases of `totals` from `state` (a new stream when None), and the state after."""
    if state is None:
        state = mechanism.init_state(totals[0].numel())
    released = []
    for total in totals:
        out, state = mechanism.privatize(total, state.round, state)
        released.append(out)
    return released, state


def _run(mechanism: Mechanism, totals: list[torch.Tensor]) -> list[torch.Tensor]:
    return _stream(mechanism, totals)[0]


def _totals(rounds: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch_generator(seed, Stream.CLIENT_DATA)
    return [torch.randn(dim, generator=g) for _ in range(rounds)]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# -- contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (257,), (3, 4)])
def test_privatize_keeps_shape_and_dtype_and_leaves_the_input(case, shape, dtype):
    mechanism = case.make(0)
    totals = [torch.randn(shape, dtype=dtype) for _ in range(7)]
    before = [t.clone() for t in totals]
    for total, released in zip(totals, _run(mechanism, totals), strict=True):
        assert released.shape == total.shape
        assert released.dtype == dtype
        assert torch.all(torch.isfinite(released))
    _assert_same(totals, before)


def test_released_tensors_are_the_callers_to_overwrite(case):
    totals = _totals(ROUNDS, 40)
    expected = [t.clone() for t in _run(case.make(0), totals)]
    mechanism = case.make(0)
    state = mechanism.init_state(40)
    for round_idx, total in enumerate(totals):
        released, state = mechanism.privatize(total, round_idx, state)
        torch.testing.assert_close(released, expected[round_idx], rtol=0, atol=0)
        released.fill_(float("nan"))  # e.g. an in-place step on the update


def test_privatize_is_deterministic_for_a_seed(case):
    totals = _totals(9, 50)
    _assert_same(_run(case.make(3), totals), _run(case.make(3), totals))


def test_different_seeds_give_different_noise(case):
    if not _noisy(case.make(0)):
        pytest.skip("no noise")
    totals = _totals(9, 50)
    for a, b in zip(_run(case.make(0), totals), _run(case.make(1), totals), strict=True):
        assert not torch.equal(a, b)


def test_rounds_out_of_order_raise_and_change_nothing(case):
    if not _noisy(case.make(0)):
        pytest.skip("stateless: any round is accepted")
    totals = _totals(4, 20)
    expected = _run(case.make(0), totals)
    mechanism = case.make(0)
    state = mechanism.init_state(20)
    with pytest.raises(ValueError, match="order"):
        mechanism.privatize(totals[1], 1, state)
    first, state = mechanism.privatize(totals[0], 0, state)
    for wrong in (0, 2, 5):
        with pytest.raises(ValueError, match="order"):
            mechanism.privatize(totals[1], wrong, state)
    with pytest.raises(ValueError, match="coordinates"):
        mechanism.privatize(torch.zeros(21), 1, state)
    with pytest.raises(ValueError, match="floating"):
        mechanism.privatize(torch.zeros(20, dtype=torch.int64), 1, state)
    _assert_same([first, *_stream(mechanism, totals[1:], state)[0]], expected)


@pytest.mark.parametrize("save_at", [0, 1, 2, 3, 4, 5, 7, 8, 11])
def test_a_checkpointed_state_lets_a_fresh_mechanism_continue_the_sequence(case, save_at):
    totals = _totals(ROUNDS, 30)
    expected = _run(case.make(2), totals)
    mechanism = case.make(2)
    _, state = _stream(mechanism, totals[:save_at], mechanism.init_state(30))
    buffer = io.BytesIO()
    torch.save(state.as_dict(), buffer)  # a checkpoint, read back by the safe loader
    buffer.seek(0)
    restored = NoiseState.from_dict(torch.load(buffer, weights_only=True))
    continued, _ = _stream(case.make(2), totals[save_at:], restored)
    _assert_same(continued, expected[save_at:])
    # The original goes on unaffected by the save.
    _assert_same(_stream(mechanism, totals[save_at:], state)[0], expected[save_at:])


def test_a_copied_state_forks_the_stream(case):
    totals = _totals(6, 12)
    mechanism = case.make(1)
    _, state = _stream(mechanism, totals[:3])
    fork = state.copy()
    a, _ = _stream(mechanism, totals[3:], state)  # consumes `state`, not its copy
    b, _ = _stream(mechanism, totals[3:], fork)
    _assert_same(a, b)


def test_a_state_of_one_seed_is_refused_by_another(case):
    mechanism = case.make(0)
    if not _noisy(mechanism):
        pytest.skip("no noise")
    _, state = _stream(mechanism, _totals(3, 10))
    with pytest.raises(ValueError, match="seed"):
        case.make(1).privatize(torch.zeros(10), 3, copy.deepcopy(state))


def test_the_state_holds_ints_a_str_and_host_tensors_and_no_seed_in_its_repr(case):
    mechanism = case.make(0)
    _, state = _stream(mechanism, _totals(5, 8))
    saved = state.as_dict()
    assert {key: type(value) for key, value in saved.items() if key != "buffers"} == {
        "round": int,
        "dim": int,
        "seed": int,
        "factorisation": str,
    }
    assert saved["round"] == (5 if _noisy(mechanism) else 0) and saved["dim"] == 8
    for buffer in saved["buffers"].values():
        assert buffer.dtype == torch.float32 and buffer.device.type == "cpu"
    assert "seed" not in repr(state)
    with pytest.raises(ValueError, match="not a noise state"):
        NoiseState.from_dict({"round": 0, "seed": 0})


def test_the_interface_has_at_most_five_public_methods():
    methods = [n for n, v in vars(Mechanism).items() if not n.startswith("_") and callable(v)]
    assert sorted(methods) == [
        "init_state",
        "matrices",
        "prepare",
        "privatize",
        "sensitivity_squared",
    ]


@pytest.mark.parametrize("rounds", [1, 2, 7, ROUNDS, 16])
def test_matrices_decode_the_encoder(case, rounds):
    encoder, decoder = case.make(0).matrices(rounds)
    assert encoder.shape[1] == rounds and encoder.shape[0] >= rounds
    assert decoder.shape == (rounds, encoder.shape[0])
    np.testing.assert_allclose(decoder @ encoder, np.eye(rounds), atol=1e-12)


def _brute_force_sensitivity_squared(encoder: np.ndarray, k: int, b: int) -> float:
    rounds = encoder.shape[1]
    best = 0.0
    for size in range(1, k + 1):
        for pattern in itertools.combinations(range(rounds), size):
            if all(j - i >= b for i, j in itertools.pairwise(pattern)):
                best = max(best, float(np.sum(encoder[:, list(pattern)].sum(axis=1) ** 2)))
    return best


@pytest.mark.parametrize(
    ("rounds", "k", "b"), [(1, 1, 1), (6, 6, 1), (9, 1, 1), (10, 3, 1), (10, 2, 3), (8, 4, 2)]
)
def test_sensitivity_squared_is_the_brute_force_maximum_over_patterns(case, rounds, k, b):
    mechanism = case.make(0)
    encoder, _ = mechanism.matrices(rounds)
    expected = _brute_force_sensitivity_squared(encoder, k, b)
    assert mechanism.sensitivity_squared(rounds, k, b) == pytest.approx(expected, rel=1e-9)


# -- statistics --------------------------------------------------------------------------------


def _noise(mechanism: Mechanism, rounds: int, dim: int) -> np.ndarray:
    """[rounds, dim]: the noise added to a zero total, in float64."""
    released, _ = _stream(mechanism, [torch.zeros(dim)] * rounds)
    return np.stack([r.double().numpy() for r in released])


def test_stream_is_the_decoder_applied_to_fresh_rows(case):
    """Exactly sigma C_inv z, with z the rows drawn from the NOISE stream by their keys."""
    mechanism = case.make(4)
    row_keys = getattr(mechanism, "row_keys", None)
    if row_keys is None:
        pytest.skip("no row keys")
    _, decoder = mechanism.matrices(ROUNDS)
    rows = [
        torch.randn(64, generator=torch_generator(4, Stream.NOISE, *key))
        for key in row_keys(ROUNDS)
    ]
    expected = mechanism.noise_multiplier * decoder @ torch.stack(rows).double().numpy()
    np.testing.assert_allclose(_noise(mechanism, ROUNDS, 64), expected, rtol=0, atol=1e-5)


def test_noise_covariance_is_sigma2_decoder_gram(case):
    mechanism = case.make(5)
    _, decoder = mechanism.matrices(ROUNDS)
    expected = mechanism.noise_multiplier**2 * decoder @ decoder.T
    noise = _noise(mechanism, ROUNDS, DIM)
    empirical = noise @ noise.T / DIM
    # Each entry is a mean of DIM products: standard deviation sqrt((S_ss S_tt + S_st^2) / DIM).
    diag = np.diag(expected)
    std = np.sqrt((np.outer(diag, diag) + expected**2) / DIM)
    assert np.all(np.abs(empirical - expected) <= 5 * std)


def test_prefix_error_variance_matches_the_matrices_and_the_closed_form(case):
    mechanism = case.make(6)
    sigma2 = mechanism.noise_multiplier**2
    _, decoder = mechanism.matrices(ROUNDS)
    prefix = np.tril(np.ones((ROUNDS, ROUNDS))) @ decoder
    expected = sigma2 * np.sum(prefix**2, axis=1)
    if case.prefix_variance is not None:
        closed = [sigma2 * case.prefix_variance(t) for t in range(ROUNDS)]
        np.testing.assert_allclose(expected, closed, rtol=1e-12)
    errors = np.cumsum(_noise(mechanism, ROUNDS, DIM), axis=0)
    empirical = np.mean(errors**2, axis=1)
    # A mean of DIM squared N(0, v): standard deviation v sqrt(2 / DIM).
    assert np.all(np.abs(empirical - expected) <= 5 * expected * np.sqrt(2 / DIM))


# -- tree --------------------------------------------------------------------------------------


def test_honaker_node_variances_have_the_closed_form():
    levels = np.arange(20)
    np.testing.assert_allclose(honaker_variances(20), 2.0**levels / (2.0 ** (levels + 1) - 1))


def _prefix_variances(mechanism: Mechanism, rounds: int) -> np.ndarray:
    """sigma^2-free ||(A C_inv)_t||^2: the variance of each prefix sum's noise."""
    _, decoder = mechanism.matrices(rounds)
    return np.sum(np.cumsum(decoder, axis=0) ** 2, axis=1)


@pytest.mark.parametrize("rounds", [2, 12, 100, 300])
def test_honaker_lowers_every_prefix_error_above_the_first_round(rounds):
    naive = _prefix_variances(TreeMechanism(), rounds)
    efficient = _prefix_variances(TreeMechanism(efficient=True), rounds)
    np.testing.assert_allclose(naive, [_popcount(t + 1) for t in range(rounds)])
    np.testing.assert_allclose(efficient, [_honaker_prefix(t) for t in range(rounds)])
    assert efficient[0] == pytest.approx(naive[0])  # a leaf is estimated alike
    assert np.all(efficient[1:] < naive[1:])


@pytest.mark.parametrize(
    ("levels", "ratio"), [(1, 1.0), (2, 5 / 6), (3, 47 / 63), (6, 0.6326), (10, 0.5803)]
)
def test_honaker_mean_prefix_error_over_a_full_tree(levels, ratio):
    """Over n = 2^L - 1 rounds each level l is in half the prefixes: the mean prefix variance is
    2^(L-1) / n times sum_l 1 (naive) or sum_l v_l (Honaker), a ratio of mean(v_0..v_{L-1})."""
    rounds = 2**levels - 1
    naive = _prefix_variances(TreeMechanism(), rounds).mean()
    efficient = _prefix_variances(TreeMechanism(efficient=True), rounds).mean()
    half = 2 ** (levels - 1) / rounds
    assert naive == pytest.approx(half * levels)
    assert efficient == pytest.approx(half * sum(honaker_variances(levels)))
    assert efficient / naive == pytest.approx(ratio, abs=1e-4)


def test_naive_and_efficient_trees_draw_the_same_node_noise():
    naive, efficient = TreeMechanism(seed=9), TreeMechanism(seed=9, efficient=True)
    assert naive.row_keys(ROUNDS) == efficient.row_keys(ROUNDS)
    zero = [torch.zeros(10)]
    torch.testing.assert_close(_run(naive, zero)[0], _run(efficient, zero)[0])


def test_tree_memory_is_the_decomposition():
    mechanism = TreeMechanism()
    state = mechanism.init_state(5)
    for t in range(40):
        _, state = mechanism.privatize(torch.zeros(5), t, state)
        assert len(state.buffers) == _popcount(t + 1)
    restarted = TreeMechanism(restart_every=6)
    state = restarted.init_state(5)
    for t in range(40):
        _, state = restarted.privatize(torch.zeros(5), t, state)
        held = len(state.buffers)
        assert held == (0 if (t + 1) % 6 == 0 else _popcount(t % 6 + 1))


def test_a_tree_state_must_hold_the_rounds_decomposition():
    mechanism = TreeMechanism()
    _, state = _stream(mechanism, [torch.zeros(5)] * 3)  # round 3: levels 0 and 1
    with pytest.raises(ValueError, match="levels"):
        mechanism.privatize(torch.zeros(5), 3, replace(state, buffers={"1": torch.zeros(5)}))
    mechanism.privatize(torch.zeros(5), 3, state)


def test_tree_rejects_bad_configuration():
    with pytest.raises(ConfigError, match="noise_multiplier"):
        TreeMechanism(noise_multiplier=0.0)
    with pytest.raises(ConfigError, match="restart_every"):
        TreeMechanism(restart_every=0)
    with pytest.raises(ConfigError, match="seed"):
        GaussianMechanism(seed=-1)


# -- NoNoise -----------------------------------------------------------------------------------


def test_no_noise_is_the_identity_and_stateless():
    mechanism = NoNoise()
    total = torch.arange(100, dtype=torch.float32)
    state = mechanism.init_state(100)
    for round_idx in (0, 1, 50):
        released, after = mechanism.privatize(total, round_idx, state)
        torch.testing.assert_close(released, total, rtol=0, atol=0)
        assert after is state and not state.buffers
    assert mechanism.prepare(10, 2, 3) is mechanism == NoNoise()
    assert mechanism.noise_multiplier == 0.0


def test_a_tree_state_is_refused_by_another_tree():
    _, state = _stream(TreeMechanism(), [torch.zeros(4)] * 3)
    for other in (TreeMechanism(efficient=True), TreeMechanism(restart_every=8)):
        with pytest.raises(ValueError, match="factorisation"):
            other.privatize(torch.zeros(4), 3, state)
