"""Banded and BLT mechanisms, optimised Toeplitz factorisations, and their disk cache."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from common.errors import ConfigError
from mechanisms import NoiseState, banded, blt
from mechanisms.banded import BandedFactorisation, BandedMechanism
from mechanisms.base import standard_normal
from mechanisms.blt import BltFactorisation, BltMechanism, blt_loss
from mechanisms.factorisation_cache import CACHE_ENV, cache_path, cached_factorisation
from mechanisms.sensitivity import brute_force_sensitivity_squared, toeplitz_sensitivity_squared
from mechanisms.toeplitz import pattern_sensitivity, prefix_error, sqrt_coefficients

CONF = Path(__file__).resolve().parents[1] / "conf" / "mechanism"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "factorisations"))


def _mean_error(c_inv: np.ndarray) -> float:
    """Mean over rounds of the squared prefix-sum error of A C^-1 (unit sigma)."""
    prefix = np.cumsum(c_inv, axis=0)
    return float((prefix**2).sum() / len(c_inv))


def _finite_difference(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return np.array([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(len(x))])


# -- the Toeplitz objectives ---------------------------------------------------------------------


def test_square_root_factorisation_known_values():
    c = sqrt_coefficients(8)
    np.testing.assert_allclose(c[:4], [1, 0.5, 0.375, 0.3125])
    # C = A^(1/2) gives A C^-1 = C: the error is ||C||_F^2, and k = 1 sens^2 is ||c||^2.
    error, _ = prefix_error(c, 8)
    assert error == pytest.approx(float(np.arange(8, 0, -1) @ c**2))
    assert pattern_sensitivity(c, 8, 1, 1)[0] == pytest.approx(1.718379, abs=1e-6)
    assert toeplitz_sensitivity_squared(c, 8, 1, 1) == pytest.approx(1.718379, abs=1e-6)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    coeffs = sqrt_coefficients(6) + 0.05 * rng.standard_normal(6)
    grad = prefix_error(coeffs, 20)[1]
    np.testing.assert_allclose(
        grad, _finite_difference(lambda c: prefix_error(c, 20)[0], coeffs), rtol=1e-5
    )
    for buffers, n, k, b in [(3, 40, 3, 7), (1, 5, 2, 2), (2, 2, 1, 1)]:
        x = rng.standard_normal(2 * buffers)
        loss = lambda v, m=buffers, n=n, k=k, b=b: blt_loss(v, m, n, k, b)[0]  # noqa: E731
        np.testing.assert_allclose(
            blt_loss(x, buffers, n, k, b)[1], _finite_difference(loss, x), atol=1e-7
        )


# -- optimised factorisations -----------------------------------------------------------------


@pytest.mark.parametrize(("n", "bands"), [(16, 4), (64, 8), (64, 64), (5, 1)])
def test_banded_beats_identity_with_unit_columns(n, bands):
    mechanism = BandedMechanism(bands=bands).prepare(n, 2, bands)
    c, c_inv = mechanism.matrices(n)
    np.testing.assert_allclose(c_inv @ c, np.eye(n), atol=1e-9)
    assert np.all(np.tril(c, -bands) == 0) and np.all(np.triu(c, 1) == 0)
    norms = np.linalg.norm(c, axis=0)
    assert norms.max() == pytest.approx(1.0) and np.all(norms <= 1 + 1e-12)
    # Equal sensitivity (columns of norm <= 1, bands <= b): sens^2 = k, as for C = I.
    assert mechanism.sensitivity_squared(n, 2, bands) == pytest.approx(min(2, -(-n // bands)))
    error = _mean_error(c_inv)
    if bands > 1:
        assert error < 0.5 * _mean_error(np.eye(n))
        start = sqrt_coefficients(bands) / np.linalg.norm(sqrt_coefficients(bands))
        assert error <= prefix_error(start, n)[0] / n + 1e-9


@pytest.mark.parametrize(
    ("n", "k", "b", "buffers"), [(16, 1, 1, 2), (64, 4, 8, 3), (30, 3, 7, 6), (12, 2, 3, 4)]
)
def test_blt_beats_identity_and_square_root(n, k, b, buffers):
    mechanism = BltMechanism(buffers=buffers).prepare(n, k, b)
    assert mechanism.factorisation is not None
    coeffs = mechanism.factorisation.coefficients(n)
    assert coeffs[0] == 1 and np.all(coeffs >= 0) and np.all(np.diff(coeffs) <= 0)
    c, c_inv = mechanism.matrices(n)
    np.testing.assert_allclose(c_inv @ c, np.eye(n), atol=1e-9)
    loss = _mean_error(c_inv) * mechanism.sensitivity_squared(n, k, b)
    identity = (n + 1) / 2 * min(k, -(-n // b))
    root = sqrt_coefficients(n)
    root_loss = prefix_error(root, n)[0] / n * pattern_sensitivity(root, n, k, b)[0]
    assert loss < 0.6 * identity
    assert loss < root_loss


@pytest.mark.parametrize("n", [6, 10])
@pytest.mark.parametrize(("k", "b"), [(1, 1), (2, 2), (3, 2), (2, 5), (4, 3)])
def test_sensitivity_matches_brute_force(n, k, b):
    for mechanism in (
        BltMechanism(buffers=2).prepare(n, k, b),
        BandedMechanism().prepare(n, k, b),
    ):
        encoder, _ = mechanism.matrices(n)
        exact = brute_force_sensitivity_squared(encoder, k, b)
        assert mechanism.sensitivity_squared(n, k, b) == pytest.approx(exact, rel=1e-9)
    # More bands than the separation: the optimised coefficients decrease, so it is exact ...
    wide = BandedMechanism(bands=min(b + 2, n)).prepare(n, k, b)
    exact = brute_force_sensitivity_squared(wide.matrices(n)[0], k, b)
    assert wide.sensitivity_squared(n, k, b) == pytest.approx(exact, rel=1e-9)
    # ... and for other coefficients it is a bound from C^T C, never below.
    wide = dataclasses.replace(wide, factorisation=BandedFactorisation((0.8, -0.5, 0.33)))
    exact = brute_force_sensitivity_squared(wide.matrices(n)[0], k, b)
    assert wide.sensitivity_squared(n, k, b) >= exact - 1e-9


# -- streaming -----------------------------------------------------------------------------------


def _mechanisms(seed: int = 3) -> list[BandedMechanism | BltMechanism]:
    return [
        BandedMechanism(noise_multiplier=2.0, seed=seed).prepare(12, 2, 4),
        BandedMechanism(noise_multiplier=2.0, seed=seed, bands=1).prepare(12, 2, 4),
        BltMechanism(noise_multiplier=2.0, seed=seed, buffers=3).prepare(12, 2, 4),
    ]


def _stream(mechanism, totals, state: NoiseState) -> tuple[list[torch.Tensor], NoiseState]:
    released = []
    for total in totals:
        out, state = mechanism.privatize(total, state.round, state)
        released.append(out)
    return released, state


@pytest.mark.parametrize("index", range(3))
def test_streamed_noise_equals_dense_decoder(index):
    mechanism = _mechanisms()[index]
    n, dim = 12, 7
    zeros = [torch.zeros(dim, dtype=torch.float64)] * n
    released, _ = _stream(mechanism, zeros, mechanism.init_state(dim))
    streamed = np.stack([r.numpy() for r in released])
    z = np.stack([standard_normal(dim, 3, *key).double().numpy() for key in mechanism.row_keys(n)])
    _, c_inv = mechanism.matrices(n)
    np.testing.assert_allclose(streamed, 2.0 * c_inv @ z, atol=1e-5)


@pytest.mark.parametrize("index", range(3))
def test_a_saved_state_resumes_the_same_sequence(index):
    mechanism = _mechanisms()[index]
    totals = [torch.full((2, 3), float(t)) for t in range(8)]
    _, state = _stream(mechanism, totals[:3], mechanism.init_state(6))
    saved = state.as_dict()  # copies: the stream may go on
    expected, _ = _stream(mechanism, totals[3:], state)
    restored = _mechanisms()[index]
    resumed, _ = _stream(restored, totals[3:], NoiseState.from_dict(copy.deepcopy(saved)))
    for a, b in zip(resumed, expected, strict=True):
        torch.testing.assert_close(a, b)
    other = _mechanisms(seed=4)[index]
    with pytest.raises(ValueError, match="seed"):
        other.privatize(totals[3], 3, NoiseState.from_dict(saved))


def test_a_state_is_refused_by_another_factorisation():
    mechanism = BandedMechanism(bands=3).prepare(12, 2, 3)
    _, state = _stream(mechanism, [torch.zeros(4)] * 2, mechanism.init_state(4))
    other = BandedMechanism(bands=3).prepare(16, 2, 3)  # another n: other coefficients
    assert other.factorisation != mechanism.factorisation
    with pytest.raises(ValueError, match="factorisation"):
        other.privatize(torch.zeros(4), 2, state)
    blt_state = BltMechanism().prepare(12, 2, 3).init_state(4)
    with pytest.raises(ValueError, match="factorisation"):
        BltMechanism().prepare(12, 3, 3).privatize(torch.zeros(4), 0, blt_state)


def test_rounds_in_order_and_fixed_dimension():
    for mechanism in _mechanisms():
        state = mechanism.init_state(4)
        with pytest.raises(ValueError, match="in order"):
            mechanism.privatize(torch.zeros(4), 1, state)
        released, state = mechanism.privatize(torch.zeros(4, dtype=torch.float16), 0, state)
        assert released.dtype == torch.float16
        with pytest.raises(ValueError, match="coordinates"):
            mechanism.privatize(torch.zeros(5), 1, state)


def test_an_unprepared_mechanism_has_no_noise_and_no_sensitivity():
    for mechanism in (BandedMechanism(), BltMechanism()):
        assert mechanism.factorisation is None
        for call in (
            lambda m=mechanism: m.init_state(4),
            lambda m=mechanism: m.matrices(4),
            lambda m=mechanism: m.sensitivity_squared(4, 1, 1),
        ):
            with pytest.raises(ValueError, match="prepare"):
                call()


def test_invalid_configuration():
    with pytest.raises(ConfigError, match="buffers"):
        BltMechanism(buffers=9)
    with pytest.raises(ConfigError, match="buffers"):
        BltMechanism(buffers=0)
    with pytest.raises(ConfigError, match="bands"):
        BandedMechanism(bands=0)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        BandedMechanism(noise_multiplier=0.0)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        BltMechanism(noise_multiplier=float("nan"))
    with pytest.raises(ConfigError, match="rounds"):
        BltMechanism().prepare(0, 1, 1)
    with pytest.raises(ConfigError, match="min_separation"):
        BandedMechanism().prepare(10, 1, 0)
    with pytest.raises(ValueError, match="c_0 > 0"):
        BandedFactorisation((-1.0, 0.5))
    with pytest.raises(ValueError, match="invalid BLT"):
        BltFactorisation((0.5, 1.5), (0.1, 0.1))
    assert len(BandedMechanism().prepare(10, 1, 30).coefficients) == 10


# -- the disk cache ------------------------------------------------------------------------------


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_cache_hit_returns_identical_parameters(monkeypatch, tmp_path):
    calls = _count_calls(monkeypatch, blt, "optimise_blt")
    first = BltMechanism(buffers=3).prepare(40, 3, 9).factorisation
    again = BltMechanism(buffers=3, seed=7).prepare(40, 3, 9).factorisation
    assert len(calls) == 1
    assert first == again  # the very same floats
    other = BltMechanism(buffers=2).prepare(40, 3, 9).factorisation  # another key
    assert other is not None and len(other.theta) == 2
    assert len(calls) == 2
    banded_calls = _count_calls(monkeypatch, banded, "optimise_banded")
    coeffs = BandedMechanism().prepare(40, 3, 9).coefficients
    np.testing.assert_array_equal(BandedMechanism(seed=1).prepare(40, 3, 9).coefficients, coeffs)
    assert len(banded_calls) == 1
    assert len(list((tmp_path / "factorisations").glob("*.json"))) == 3


def test_cache_recomputes_corrupt_files(monkeypatch, tmp_path):
    key: dict[str, int | str] = {"kind": "test", "n": 3}
    calls: list[int] = []

    def compute() -> dict[str, object]:
        calls.append(1)
        return {"x": np.array([0.1, 1 / 3, 2.0])}

    assert cached_factorisation(key, compute) == {"x": [0.1, 1 / 3, 2.0]}
    path = cache_path(key)
    assert path.parent == tmp_path / "factorisations" and json.loads(path.read_text())["key"] == key
    for corrupt in ("{not json", '{"key": {"kind": "test", "n": 4}, "params": {"x": [1]}}', "[]"):
        path.write_text(corrupt)
        assert cached_factorisation(key, compute) == {"x": [0.1, 1 / 3, 2.0]}
    assert len(calls) == 4
    assert cached_factorisation(key, compute) == {"x": [0.1, 1 / 3, 2.0]} and len(calls) == 4
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_path(key).parent == tmp_path / "elsewhere"


def test_unwritable_cache_still_computes(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "sub"))
    with pytest.warns(UserWarning, match="not written"):
        assert cached_factorisation({"kind": "t"}, lambda: {"x": [1.0]}) == {"x": [1.0]}


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), [("banded_mf", BandedMechanism), ("blt", BltMechanism)])
def test_yaml_targets_the_class(name, cls):
    conf = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert isinstance(conf, dict)
    assert conf["_target_"] == f"{cls.__module__}.{cls.__qualname__}"
    assert conf["defaults"] == [
        f"/schema/mechanism/{name}@_here_",
        {"override /clipping@_global_.clipping": "fixed"},  # DP needs clipping
    ]
    assert not {"rounds", "max_participations", "min_separation", "factorisation"} & set(conf)
