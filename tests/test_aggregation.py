"""engine/aggregation.py: weighted partial sums of client updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from engine.aggregation import Aggregator, DenseAggregator, MoEAggregator, Partial, SparseAggregator
from engine.runtime import ParameterServer
from engine.training import ClientUpdate, ParameterLayout
from mechanisms.clipping import NoClipping
from mechanisms.noiseless import NoNoise
from strategies import FedAvg


def _update(rng: np.random.Generator, dim: int, n: int | None = None) -> ClientUpdate:
    n = int(rng.integers(1, 100)) if n is None else n
    return ClientUpdate(
        delta=rng.standard_normal(dim).astype(np.float32),
        num_examples=n,
        loss_sum=float(rng.uniform(0, 10)),
        examples_seen=2 * n,
    )


def test_partial_add_accumulates_weighted_sums():
    partial = Partial(update_sum=np.zeros(3, dtype=np.float32))
    a = ClientUpdate(np.array([1.0, 2.0, 3.0], np.float32), 4, loss_sum=1.5, examples_seen=8)
    b = ClientUpdate(np.array([-1.0, 0.5, 0.0], np.float32), 2, loss_sum=0.25, examples_seen=6)
    partial.add(a, 4.0)
    partial.add(b, 0.5)
    np.testing.assert_allclose(partial.update_sum, [3.5, 8.25, 12.0])
    assert partial.update_sum.dtype == np.float32
    assert partial.weight_sum == 4.5
    assert partial.num_clients == 2
    assert partial.loss_sum == 1.75
    assert partial.examples_seen == 14
    # The client's delta is not modified.
    np.testing.assert_array_equal(a.delta, [1.0, 2.0, 3.0])


def test_partial_merge_adds_every_field():
    left = Partial(np.array([1.0, 2.0], np.float32), 3.0, 2, 1.0, 10)
    right = Partial(np.array([0.5, -4.0], np.float32), 1.5, 1, 0.5, 4)
    left.merge(right)
    np.testing.assert_array_equal(left.update_sum, [1.5, -2.0])
    assert (left.weight_sum, left.num_clients, left.loss_sum, left.examples_seen) == (
        4.5,
        3,
        1.5,
        14,
    )
    # `other` is left as it was.
    np.testing.assert_array_equal(right.update_sum, [0.5, -4.0])
    assert right.num_clients == 1


def test_weighting_examples_and_uniform():
    update = ClientUpdate(np.zeros(2, np.float32), 37, 0.0, 37)
    assert DenseAggregator(weighting="examples").client_weight(update) == 37.0
    assert DenseAggregator(weighting="uniform").client_weight(update) == 1.0
    assert DenseAggregator().weighting == "examples"


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_weighted_sum_matches_numpy(weighting):
    rng = np.random.default_rng(0)
    aggregator = DenseAggregator(weighting=weighting)
    updates = [_update(rng, 17) for _ in range(12)]
    partial = aggregator.zeros(17)
    for update in updates:
        partial.add(update, aggregator.client_weight(update))
    weights = np.array(
        [u.num_examples if weighting == "examples" else 1 for u in updates], dtype=np.float64
    )
    deltas = np.stack([u.delta for u in updates]).astype(np.float64)
    np.testing.assert_allclose(partial.update_sum, weights @ deltas, rtol=1e-5, atol=1e-4)
    assert partial.weight_sum == weights.sum()
    assert partial.num_clients == 12
    assert partial.examples_seen == sum(u.examples_seen for u in updates)
    np.testing.assert_allclose(partial.loss_sum, sum(u.loss_sum for u in updates))


def test_zeros_is_an_empty_float32_partial():
    partial = DenseAggregator().zeros(5)
    assert partial.update_sum.dtype == np.float32
    np.testing.assert_array_equal(partial.update_sum, np.zeros(5))
    assert (partial.weight_sum, partial.num_clients, partial.loss_sum, partial.examples_seen) == (
        0.0,
        0,
        0.0,
        0,
    )
    # Two empty partials do not share a buffer.
    other = DenseAggregator().zeros(5)
    partial.update_sum += 1
    np.testing.assert_array_equal(other.update_sum, np.zeros(5))


@given(
    chunk_sizes=st.lists(st.integers(0, 6), min_size=0, max_size=8),
    dim=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_reduce_equals_the_numpy_sum(chunk_sizes, dim, seed):
    rng = np.random.default_rng(seed)
    aggregator = DenseAggregator()
    partials = []
    all_updates = []
    for size in chunk_sizes:
        partial = aggregator.zeros(dim)
        for _ in range(size):
            update = _update(rng, dim)
            all_updates.append(update)
            partial.add(update, aggregator.client_weight(update))
        partials.append(partial)
    snapshot = [p.update_sum.copy() for p in partials]
    total = aggregator.reduce(partials, dim)
    if all_updates:
        weights = np.array([u.num_examples for u in all_updates], dtype=np.float64)
        expected = weights @ np.stack([u.delta for u in all_updates]).astype(np.float64)
    else:
        expected = np.zeros(dim)
    np.testing.assert_allclose(total.update_sum, expected, rtol=1e-4, atol=1e-3)
    assert total.update_sum.dtype == np.float32
    assert total.num_clients == len(all_updates)
    assert total.weight_sum == sum(u.num_examples for u in all_updates)
    assert total.examples_seen == sum(u.examples_seen for u in all_updates)
    # The partials themselves are not modified by the reduction.
    for partial, before in zip(partials, snapshot, strict=True):
        np.testing.assert_array_equal(partial.update_sum, before)


def test_reduce_is_deterministic_in_the_given_order():
    rng = np.random.default_rng(1)
    aggregator = DenseAggregator()
    partials = []
    for _ in range(5):
        partial = aggregator.zeros(100)
        for _ in range(4):
            update = _update(rng, 100)
            partial.add(update, aggregator.client_weight(update))
        partials.append(partial)
    first = aggregator.reduce(partials, 100).update_sum
    second = aggregator.reduce(partials, 100).update_sum
    np.testing.assert_array_equal(first, second)
    # Summing in order is a left fold in float32.
    expected = np.zeros(100, dtype=np.float32)
    for partial in partials:
        expected = expected + partial.update_sum
    np.testing.assert_array_equal(first, expected)


@pytest.mark.parametrize("weighting", ["", "example", "Uniform", "count"])
def test_invalid_weighting_raises_config_error(weighting):
    with pytest.raises(ConfigError) as info:
        DenseAggregator(weighting=weighting)
    assert info.value.key == "weighting"


def test_dense_partial_is_its_own_dense_sum_and_travels_whole():
    partial = DenseAggregator().zeros(6, ParameterLayout.dense(6))
    partial.add(ClientUpdate(np.arange(6, dtype=np.float32), 2, 0.0, 2), 2.0)
    assert partial.dense_sum() is partial.update_sum
    assert partial.nbytes == 6 * 4
    assert partial.metrics() == {}
    update = torch.ones(6)
    assert partial.rescale(update, 3.0) is update
    np.testing.assert_array_equal(update.numpy(), np.ones(6))
    with pytest.raises(ValueError, match="layout"):
        DenseAggregator().zeros(5, ParameterLayout.dense(6))


@pytest.mark.parametrize(
    "aggregator", [DenseAggregator(), SparseAggregator(), MoEAggregator()], ids=type
)
def test_every_aggregator_reduces_nothing_to_an_empty_total(aggregator):
    total = aggregator.reduce([], 4)
    np.testing.assert_array_equal(total.dense_sum(), np.zeros(4, np.float32))
    assert (total.num_clients, total.weight_sum) == (0, 0.0)
    assert isinstance(aggregator, Aggregator)


def test_server_reports_the_bytes_clients_uploaded_and_partials_carried():
    server = ParameterServer(
        np.zeros(3, np.float32), FedAvg(), NoNoise(), DenseAggregator(), NoClipping(), 4
    )
    chunks = [DenseAggregator().zeros(3) for _ in range(3)]
    for clients, chunk in zip([1, 2, 1], chunks, strict=True):
        for _ in range(clients):
            chunk.add(ClientUpdate(np.ones(3, np.float32), 2, 1.0, 2), 2.0)
    _, metrics = server.apply(0, chunks[:1], chunks[1:])
    assert metrics["system/upload_bytes"] == 4 * 3 * 4  # four clients' float32 vectors
    assert metrics["system/transport_bytes"] == 3 * 3 * 4  # three chunk partials
    assert metrics["participation/clients_aggregated"] == 4
