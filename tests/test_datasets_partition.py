"""population/datasets/partition.py and arrays.py: partitioners and in-memory federated arrays."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.rng import Stream, generator
from engine.population import ClientData, FederatedArrays, Partition
from engine.population.datasets.partition import dirichlet_partition, iid_partition, split_clients


def _rng(seed: int) -> np.random.Generator:
    return generator(seed, Stream.PARTITION, 0)


def _assert_partition(indices, offsets, n, num_clients, min_examples):
    assert indices.dtype == np.int64
    assert offsets.dtype == np.int64
    assert offsets.shape == (num_clients + 1,)
    assert offsets[0] == 0
    assert offsets[-1] == n
    # Every example exactly once.
    np.testing.assert_array_equal(np.sort(indices), np.arange(n))
    assert np.all(np.diff(offsets) >= min_examples)
    for k in range(num_clients):
        members = indices[offsets[k] : offsets[k + 1]]
        assert np.all(np.diff(members) > 0)  # increasing within a client


# -- dirichlet_partition -------------------------------------------------------------------------


@st.composite
def _problems(draw):
    n = draw(st.integers(1, 300))
    classes = draw(st.integers(1, 10))
    labels = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    min_examples = draw(st.integers(0, 3))
    num_clients = draw(st.integers(1, max(1, n // max(min_examples, 1))))
    if num_clients * min_examples > n:
        min_examples = 0
    alpha = draw(st.floats(0.005, 100.0))
    seed = draw(st.integers(0, 2**32 - 1))
    return labels, num_clients, alpha, seed, min_examples


@given(_problems())
@settings(max_examples=60, deadline=None)
def test_dirichlet_partition_invariants(problem):
    labels, num_clients, alpha, seed, min_examples = problem
    indices, offsets = dirichlet_partition(labels, num_clients, alpha, _rng(seed), min_examples)
    _assert_partition(indices, offsets, len(labels), num_clients, min_examples)
    again = dirichlet_partition(labels, num_clients, alpha, _rng(seed), min_examples)
    np.testing.assert_array_equal(indices, again[0])
    np.testing.assert_array_equal(offsets, again[1])


def test_dirichlet_default_gives_every_client_an_example_even_when_very_skewed():
    labels = np.repeat(np.arange(10), 50)
    indices, offsets = dirichlet_partition(labels, 400, 0.001, _rng(1))
    _assert_partition(indices, offsets, 500, 400, 1)


@pytest.mark.parametrize("min_examples", [5, 25, 50])
def test_dirichlet_top_up_reaches_large_minimums_exactly_when_tight(min_examples):
    labels = np.repeat(np.arange(10), 100)
    num_clients = 1000 // min_examples
    indices, offsets = dirichlet_partition(labels, num_clients, 0.01, _rng(2), min_examples)
    _assert_partition(indices, offsets, 1000, num_clients, min_examples)
    if min_examples == 50:  # no slack: every client ends with exactly the minimum
        assert np.all(np.diff(offsets) == 50)


def test_dirichlet_seeds_differ():
    labels = np.repeat(np.arange(5), 40)
    a = dirichlet_partition(labels, 10, 0.5, _rng(0))
    b = dirichlet_partition(labels, 10, 0.5, _rng(1))
    assert not np.array_equal(a[1], b[1]) or not np.array_equal(a[0], b[0])


def _mean_max_label_share(labels, num_clients, alpha, seed):
    indices, offsets = dirichlet_partition(labels, num_clients, alpha, _rng(seed))
    shares = []
    for k in range(num_clients):
        client_labels = labels[indices[offsets[k] : offsets[k + 1]]]
        shares.append(np.bincount(client_labels).max() / len(client_labels))
    return float(np.mean(shares))


def test_smaller_alpha_gives_more_label_skew():
    labels = np.repeat(np.arange(10), 100)
    skew = {
        alpha: np.mean([_mean_max_label_share(labels, 20, alpha, seed) for seed in range(5)])
        for alpha in (0.05, 0.5, 5.0, 500.0)
    }
    assert skew[0.05] > skew[0.5] > skew[5.0] > skew[500.0]
    assert skew[0.05] > 0.7  # mostly one class per client
    assert skew[500.0] < 0.25  # close to the IID share, 0.1 plus sampling noise


@pytest.mark.parametrize(
    ("num_clients", "alpha", "min_examples"), [(0, 1.0, 1), (5, 0.0, 1), (5, -1.0, 1), (11, 1.0, 1)]
)
def test_dirichlet_rejects_bad_arguments(num_clients, alpha, min_examples):
    with pytest.raises(ValueError):
        dirichlet_partition(np.zeros(10, dtype=np.int64), num_clients, alpha, _rng(0), min_examples)


def test_dirichlet_rejects_infeasible_minimum():
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_partition(np.zeros(10, dtype=np.int64), 4, 1.0, _rng(0), min_examples=3)


# -- iid_partition, split_clients ----------------------------------------------------------------


@given(st.integers(1, 500), st.data())
@settings(max_examples=30, deadline=None)
def test_iid_partition_is_balanced(n, data):
    num_clients = data.draw(st.integers(1, n))
    indices, offsets = iid_partition(n, num_clients, _rng(n))
    _assert_partition(indices, offsets, n, num_clients, 1)
    sizes = np.diff(offsets)
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize(
    ("num_clients", "fraction", "expected"),
    [(10, 0.2, 2), (10, 0.0, 0), (10, 0.01, 1), (1, 0.5, 0), (2, 0.9, 1), (100, 0.999, 99)],
)
def test_split_clients_counts(num_clients, fraction, expected):
    train, held = split_clients(num_clients, fraction, _rng(0))
    assert len(held) == expected
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(num_clients))
    assert np.all(np.diff(train) > 0)
    assert np.all(np.diff(held) > 0)
    again = split_clients(num_clients, fraction, _rng(0))
    np.testing.assert_array_equal(held, again[1])


def test_split_clients_rejects_fraction_one():
    with pytest.raises(ValueError):
        split_clients(10, 1.0, _rng(0))


# -- Partition, FederatedArrays ------------------------------------------------------------------


def _client(n: int, d: int = 3, label: int = 0) -> ClientData:
    x = np.arange(n * d, dtype=np.float32).reshape(n, d) + label
    return ClientData(x=x, y=np.full(n, label, dtype=np.int64))


def test_partition_select_keeps_the_chosen_clients_in_order():
    part = Partition(np.array([5, 1, 0, 4, 2, 3], dtype=np.int64), np.array([0, 2, 2, 5, 6]))
    picked = part.select(np.array([3, 0]))
    np.testing.assert_array_equal(picked.offsets, [0, 2, 3])
    np.testing.assert_array_equal(picked.members(0), [5, 1])
    np.testing.assert_array_equal(picked.members(1), [3])
    assert part.select(np.array([], dtype=np.int64)).num_clients == 0


def test_partition_rejects_bad_offsets():
    with pytest.raises(ValueError):
        Partition(np.arange(3), np.array([0, 2, 1, 3]))
    with pytest.raises(ValueError):
        Partition(np.arange(3), np.array([0, 2]))
    with pytest.raises(ValueError):
        Partition(np.arange(3, dtype=np.int32), np.array([0, 3]))


def test_from_clients_pools_and_drops_empty_clients():
    train = [_client(2, label=0), _client(0), _client(3, label=1)]
    held = [_client(0), _client(1, label=2)]
    arrays = FederatedArrays.from_clients(train, held, num_classes=3)
    assert arrays.num_clients == 2
    assert arrays.num_features == 3
    np.testing.assert_array_equal(arrays.num_examples(np.array([0, 1, 2])), [2, 3, 1])
    np.testing.assert_array_equal(arrays.held_out_ids(5), [2])
    np.testing.assert_array_equal(arrays.client_data(1).x, train[2].x)
    np.testing.assert_array_equal(arrays.client_data(2).y, [2])
    assert arrays.held_out_ids(0).shape == (0,)
    assert arrays.held_out_ids(0).dtype == np.int64


def test_federated_arrays_reject_unknown_ids_and_bad_data():
    arrays = FederatedArrays.from_clients([_client(2)], [_client(1)], num_classes=2)
    for bad in (-1, 2, 10):
        with pytest.raises(IndexError):
            arrays.client_data(bad)
    with pytest.raises(IndexError):
        arrays.num_examples(np.array([0, -1]))
    with pytest.raises(ValueError):
        arrays.held_out_ids(-1)
    with pytest.raises(ValueError, match="labels"):
        FederatedArrays.from_clients([_client(2, label=4)], [], num_classes=2)
    with pytest.raises(ValueError, match="training client"):
        FederatedArrays.from_clients([], [_client(1)], num_classes=2)
    with pytest.raises(ValueError, match="features"):
        FederatedArrays.from_clients([_client(1, d=2), _client(1, d=3)], [], num_classes=2)


def test_client_data_is_a_copy_and_pickles():
    arrays = FederatedArrays.from_clients([_client(2), _client(3)], [], num_classes=2)
    data = arrays.client_data(0)
    data.x[:] = -1
    assert arrays.client_data(0).x.min() >= 0
    clone = pickle.loads(pickle.dumps(arrays))
    np.testing.assert_array_equal(clone.client_data(1).x, arrays.client_data(1).x)
