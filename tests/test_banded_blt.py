"""Banded and BLT mechanisms, optimised Toeplitz strategies, and their disk cache."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from engine.errors import ConfigError
from mechanisms import banded, blt
from mechanisms.banded import BandedMechanism, prefix_error, sqrt_coefficients
from mechanisms.blt import BltMechanism, blt_loss, pattern_sensitivity
from mechanisms.gaussian import standard_normal
from mechanisms.sensitivity import brute_force_sensitivity_squared, toeplitz_sensitivity_squared
from mechanisms.strategy_cache import CACHE_ENV, cache_path, cached_strategy

CONF = Path(__file__).resolve().parents[1] / "conf" / "mechanism"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "strategies"))


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


# -- optimised strategies -----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "bands"), [(16, 4), (64, 8), (64, 64), (5, 1)])
def test_banded_beats_identity_with_unit_columns(n, bands):
    mechanism = BandedMechanism(n, 2, bands, bands=bands)
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
    mechanism = BltMechanism(n, k, b, buffers=buffers)
    coeffs = mechanism.coefficients(n)
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
    for mechanism in (BltMechanism(n, k, b, buffers=2), BandedMechanism(n, k, b)):
        encoder, _ = mechanism.matrices(n)
        exact = brute_force_sensitivity_squared(encoder, k, b)
        assert mechanism.sensitivity_squared(n, k, b) == pytest.approx(exact, rel=1e-9)
    # More bands than the separation: the optimised coefficients decrease, so it is exact ...
    wide = BandedMechanism(n, k, b, bands=min(b + 2, n))
    exact = brute_force_sensitivity_squared(wide.matrices(n)[0], k, b)
    assert wide.sensitivity_squared(n, k, b) == pytest.approx(exact, rel=1e-9)
    # ... and for other coefficients it is a bound from C^T C, never below.
    wide.__dict__["coefficients"] = np.array([0.8, -0.5, 0.33])
    exact = brute_force_sensitivity_squared(wide.matrices(n)[0], k, b)
    assert wide.sensitivity_squared(n, k, b) >= exact - 1e-9


# -- streaming -----------------------------------------------------------------------------------


def _mechanisms(seed: int = 3) -> list[BandedMechanism | BltMechanism]:
    return [
        BandedMechanism(12, 2, 4, noise_multiplier=2.0, seed=seed),
        BandedMechanism(12, 2, 4, noise_multiplier=2.0, seed=seed, bands=1),
        BltMechanism(12, 2, 4, noise_multiplier=2.0, seed=seed, buffers=3),
    ]


@pytest.mark.parametrize("index", range(3))
def test_streamed_noise_equals_dense_decoder(index):
    mechanism = _mechanisms()[index]
    n, dim = 12, 7
    zeros = torch.zeros(dim, dtype=torch.float64)
    streamed = np.stack([mechanism.privatize(zeros, t).numpy() for t in range(n)])
    z = np.stack([standard_normal(dim, 3, *key).double().numpy() for key in mechanism.row_keys(n)])
    _, c_inv = mechanism.matrices(n)
    np.testing.assert_allclose(streamed, 2.0 * c_inv @ z, atol=1e-5)


@pytest.mark.parametrize("index", range(3))
def test_state_dict_resumes_the_same_sequence(index):
    mechanism = _mechanisms()[index]
    totals = [torch.full((2, 3), float(t)) for t in range(8)]
    for t in range(3):
        mechanism.privatize(totals[t], t)
    state = mechanism.state_dict()
    expected = [mechanism.privatize(totals[t], t).clone() for t in range(3, 8)]
    restored = _mechanisms()[index]
    restored.load_state_dict(copy.deepcopy(state))
    mechanism.load_state_dict(state)  # shared, not copied: the writes must not reach it
    for t in range(3, 8):
        torch.testing.assert_close(restored.privatize(totals[t], t), expected[t - 3])
        torch.testing.assert_close(mechanism.privatize(totals[t], t), expected[t - 3])
    other = _mechanisms(seed=4)[index]
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_rounds_in_order_and_fixed_dimension():
    for mechanism in _mechanisms():
        with pytest.raises(ValueError, match="in order"):
            mechanism.privatize(torch.zeros(4), 1)
        released = mechanism.privatize(torch.zeros(4, dtype=torch.float16), 0)
        assert released.dtype == torch.float16
        with pytest.raises(ValueError, match="coordinates"):
            mechanism.privatize(torch.zeros(5), 1)


def test_invalid_configuration():
    with pytest.raises(ConfigError, match="buffers"):
        BltMechanism(10, 1, 1, buffers=9)
    with pytest.raises(ConfigError, match="buffers"):
        BltMechanism(10, 1, 1, buffers=0)
    with pytest.raises(ConfigError, match="bands"):
        BandedMechanism(10, 1, 1, bands=0)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        BandedMechanism(10, 1, 1, noise_multiplier=0.0)
    with pytest.raises(ConfigError, match="rounds"):
        BltMechanism(0, 1, 1)
    assert BandedMechanism(10, 1, 30).num_bands == 10


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
    first = BltMechanism(40, 3, 9, buffers=3).parameters
    again = BltMechanism(40, 3, 9, buffers=3, seed=7).parameters
    assert len(calls) == 1
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert BltMechanism(40, 3, 9, buffers=2).parameters[0].shape == (2,)  # another key
    assert len(calls) == 2
    banded_calls = _count_calls(monkeypatch, banded, "optimise_banded")
    coeffs = BandedMechanism(40, 3, 9).coefficients
    np.testing.assert_array_equal(BandedMechanism(40, 3, 9, seed=1).coefficients, coeffs)
    assert len(banded_calls) == 1
    assert len(list((tmp_path / "strategies").glob("*.json"))) == 3


def test_cache_recomputes_corrupt_files(monkeypatch, tmp_path):
    key: dict[str, int | str] = {"kind": "test", "n": 3}
    calls: list[int] = []

    def compute() -> dict[str, object]:
        calls.append(1)
        return {"x": np.array([0.1, 1 / 3, 2.0])}

    assert cached_strategy(key, compute) == {"x": [0.1, 1 / 3, 2.0]}
    path = cache_path(key)
    assert path.parent == tmp_path / "strategies" and json.loads(path.read_text())["key"] == key
    for corrupt in ("{not json", '{"key": {"kind": "test", "n": 4}, "params": {"x": [1]}}', "[]"):
        path.write_text(corrupt)
        assert cached_strategy(key, compute) == {"x": [0.1, 1 / 3, 2.0]}
    assert len(calls) == 4
    assert cached_strategy(key, compute) == {"x": [0.1, 1 / 3, 2.0]} and len(calls) == 4
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_path(key).parent == tmp_path / "elsewhere"


def test_unwritable_cache_still_computes(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "sub"))
    with pytest.warns(UserWarning, match="not written"):
        assert cached_strategy({"kind": "t"}, lambda: {"x": [1.0]}) == {"x": [1.0]}


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
    assert not {"rounds", "max_participations", "min_separation"} & set(conf)
