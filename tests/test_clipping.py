"""mechanisms/clipping.py and the server's private average: clip, count, release, adapt."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from engine.aggregation import DenseAggregator, Partial
from engine.runtime import ParameterServer
from engine.training import ClientUpdate
from mechanisms.clipping import AdaptiveClipping, Clipping, FixedClipping, NoClipping, clip_update
from mechanisms.noiseless import NoNoise
from strategies.fedavg import FedAvg

CLIPPINGS: list[Clipping] = [NoClipping(), FixedClipping(0.5), AdaptiveClipping(0.3)]


@given(
    values=st.lists(st.floats(-100, 100), min_size=1, max_size=50),
    clip=st.floats(1e-3, 50),
)
@settings(max_examples=200, deadline=None)
def test_clip_update_bounds_the_norm_and_reports_the_bit(values, clip):
    delta = np.array(values, dtype=np.float32)
    clipped, bit = clip_update(delta, clip)
    norm = float(np.linalg.norm(delta.astype(np.float64)))
    assert float(np.linalg.norm(clipped.astype(np.float64))) <= clip * (1 + 1e-5)
    assert bit == (0.5 if norm <= clip else -0.5)
    if norm <= clip:
        np.testing.assert_array_equal(clipped, delta)
    else:  # same direction
        np.testing.assert_allclose(clipped * norm / clip, delta, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("clipping", CLIPPINGS, ids=lambda c: type(c).__name__)
def test_contract(clipping):
    norm = clipping.initial_norm
    assert norm is None or norm > 0
    assert clipping.value_noise_multiplier(1.0) >= 1.0
    if norm is not None:
        assert clipping.next_norm(norm, 0.5) > 0


def test_adaptive_noise_split_keeps_the_configured_multiplier():
    # 1/z^2 = 1/z_delta^2 + 1/(2 sigma_b)^2 (Andrew et al. 2019).
    clipping = AdaptiveClipping(count_noise_std=5.0)
    z = 1.3
    z_delta = clipping.value_noise_multiplier(z)
    assert 1 / z**2 == pytest.approx(1 / z_delta**2 + 1 / 10.0**2)
    assert FixedClipping().value_noise_multiplier(z) == z


def test_adaptive_noise_split_refuses_too_little_count_noise():
    with pytest.raises(ConfigError) as info:
        AdaptiveClipping(count_noise_std=0.5).value_noise_multiplier(1.0)
    assert info.value.key == "count_noise_std"


def test_adaptive_clip_norm_tracks_the_quantile_without_noise():
    # Update norms are |N(0, 1)| * 3: the median is 3 * 0.6745.
    norms = np.abs(np.random.default_rng(0).standard_normal(20_000)) * 3.0
    clipping = AdaptiveClipping(initial_clip_norm=0.01, target_quantile=0.5, learning_rate=0.2)
    clip = clipping.initial_clip_norm
    for _ in range(300):
        clip = clipping.next_norm(clip, float(np.mean(norms <= clip)))
    assert clip == pytest.approx(3.0 * 0.6745, rel=0.02)


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (FixedClipping, "clip_norm", 0.0),
        (AdaptiveClipping, "initial_clip_norm", -1.0),
        (AdaptiveClipping, "target_quantile", 1.0),
        (AdaptiveClipping, "learning_rate", 0.0),
        (AdaptiveClipping, "count_noise_std", 0.0),
    ],
)
def test_validation_names_the_key(cls, field, value):
    with pytest.raises(ConfigError) as info:
        cls(**{field: value})
    assert info.value.key == field


def _partial(updates: list[np.ndarray], clip: float | None) -> Partial:
    partial = DenseAggregator("uniform").zeros(len(updates[0]))
    partial.clip_norm = clip
    for delta in updates:
        update = ClientUpdate(delta=delta, num_examples=5, loss_sum=1.0, examples_seen=5)
        if clip is None:
            partial.add(update, 1.0)
        else:
            clipped, bit = clip_update(delta, clip)
            partial.add(ClientUpdate(clipped, 5, 1.0, 5), 1.0, bit)
    return partial


def _server(clipping: Clipping, cohort_size: int, dim: int = 3) -> ParameterServer:
    params = np.zeros(dim, dtype=np.float32)
    return ParameterServer(
        params, FedAvg(), NoNoise(), DenseAggregator("uniform"), clipping, cohort_size
    )


def test_private_average_divides_the_clipped_sum_by_the_public_cohort_size():
    updates = [np.array([3.0, 4.0, 0.0], np.float32), np.array([0.0, 0.1, 0.0], np.float32)]
    server = _server(FixedClipping(1.0), cohort_size=4)
    weights, metrics = server.apply(0, [_partial(updates, 1.0)])
    # (0.6, 0.8, 0) + (0, 0.1, 0), divided by the cohort size 4, not by the 2 that reported.
    np.testing.assert_allclose(weights, [0.15, 0.225, 0.0], atol=1e-6)
    assert metrics["privacy/clip_norm"] == 1.0
    assert metrics["privacy/next_clip_norm"] == 1.0


def test_adaptive_release_moves_the_clip_norm_by_the_unclipped_fraction():
    updates = [np.full(3, v, np.float32) for v in (0.01, 0.02, 5.0, 6.0)]  # 2 of 4 within 0.1
    clipping = AdaptiveClipping(initial_clip_norm=0.1, target_quantile=0.25, learning_rate=0.5)
    server = _server(clipping, cohort_size=4)
    _, metrics = server.apply(0, [_partial(updates, 0.1)])
    assert metrics["privacy/unclipped_fraction"] == pytest.approx(0.5)
    assert metrics["privacy/next_clip_norm"] == pytest.approx(0.1 * math.exp(-0.5 * 0.25))
    assert server.clip_norm == metrics["privacy/next_clip_norm"]


def test_non_private_server_keeps_the_weighted_average():
    server = _server(NoClipping(), cohort_size=10)
    updates = [np.array([1.0, 2.0, 3.0], np.float32), np.array([3.0, 2.0, 1.0], np.float32)]
    weights, metrics = server.apply(0, [_partial(updates, None)])
    np.testing.assert_allclose(weights, [2.0, 2.0, 2.0])
    assert "privacy/clip_norm" not in metrics


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_update_is_dropped_to_zero(bad):
    delta = np.array([1.0, bad, 2.0], dtype=np.float32)
    clipped, bit = clip_update(delta, 1.0)
    np.testing.assert_array_equal(clipped, np.zeros(3, np.float32))
    assert bit == -0.5


def test_the_server_refuses_updates_clipped_to_another_norm():
    server = _server(FixedClipping(1.0), cohort_size=4)
    with pytest.raises(RuntimeError, match="another clip norm"):
        server.apply(0, [_partial([np.ones(3, np.float32)], 2.0)])
