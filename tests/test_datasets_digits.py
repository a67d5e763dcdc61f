"""engine/population/datasets/digits.py: scikit-learn's digits, Dirichlet-partitioned."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from common.errors import ConfigError
from engine.population import DigitsDirichlet

NUM_IMAGES = 1797


def _pooled(pop: DigitsDirichlet, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = [pop.client_data(int(i)) for i in ids]
    return np.concatenate([d.x for d in data]), np.concatenate([d.y for d in data])


def test_shapes_ranges_and_sizes():
    pop = DigitsDirichlet(num_clients=50, seed=1, num_held_out_clients=10)
    assert (pop.num_clients, pop.num_features, pop.num_classes) == (50, 64, 10)
    counts = pop.num_examples(np.arange(50))
    held = pop.held_out_ids(100)
    np.testing.assert_array_equal(held, np.arange(50, 60))
    held_counts = pop.num_examples(held)
    assert counts.min() >= 1
    assert held_counts.min() >= 1
    assert counts.sum() == NUM_IMAGES - round(0.2 * NUM_IMAGES)
    assert held_counts.sum() == round(0.2 * NUM_IMAGES)
    x, y = _pooled(pop, np.arange(50))
    assert x.dtype == np.float32
    assert x.min() >= 0.0
    assert x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_deterministic_and_seeded():
    a = DigitsDirichlet(num_clients=30, seed=4)
    b = pickle.loads(pickle.dumps(DigitsDirichlet(num_clients=30, seed=4)))
    for client in (0, 17, 29, 30, 49):
        np.testing.assert_array_equal(a.client_data(client).x, b.client_data(client).x)
        np.testing.assert_array_equal(a.client_data(client).y, b.client_data(client).y)
    c = DigitsDirichlet(num_clients=30, seed=5)
    assert not np.array_equal(a.num_examples(np.arange(30)), c.num_examples(np.arange(30)))


def test_held_out_clients_hold_exactly_the_test_images():
    pop = DigitsDirichlet(num_clients=40, seed=2, num_held_out_clients=15)
    train, held = pop.arrays.train.indices, pop.arrays.held_out.indices
    assert len(np.intersect1d(train, held)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(NUM_IMAGES))
    ids = pop.held_out_ids(15)
    assert len(np.intersect1d(ids, np.arange(pop.num_clients))) == 0
    # The split depends on the seed and test_fraction only, not on the partition's settings.
    other = DigitsDirichlet(num_clients=7, alpha=3.0, seed=2, num_held_out_clients=4)
    np.testing.assert_array_equal(np.sort(other.arrays.held_out.indices), np.sort(held))


def _max_label_share(pop: DigitsDirichlet) -> float:
    shares = [
        np.bincount(pop.client_data(c).y).max() / pop.num_examples(np.array([c]))[0]
        for c in range(pop.num_clients)
    ]
    return float(np.mean(shares))


def test_alpha_controls_label_skew():
    skewed = DigitsDirichlet(num_clients=30, alpha=0.05, seed=0)
    iid = DigitsDirichlet(num_clients=30, alpha=1000.0, seed=0)
    assert _max_label_share(skewed) > 0.6
    assert _max_label_share(iid) < 0.3


def _softmax_step(w: np.ndarray, x: np.ndarray, y: np.ndarray, lr: float) -> np.ndarray:
    xb = np.hstack([x, np.ones((len(x), 1), np.float32)])
    logits = xb @ w
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return w - lr * xb.T @ p / len(y)


def test_learnable_by_logistic_regression_with_fedavg():
    # FedAvg, all clients each round, a few local full-batch steps, example-weighted average:
    # a linear softmax model beats the majority class (about 10%) by far on held-out clients.
    pop = DigitsDirichlet(num_clients=20, alpha=0.5, seed=0, num_held_out_clients=10)
    clients = [pop.client_data(c) for c in range(pop.num_clients)]
    weights = np.array([len(c) for c in clients], dtype=np.float64)
    w = np.zeros((65, 10))
    for _ in range(30):
        updates = []
        for data in clients:
            local = w
            for _ in range(5):
                local = _softmax_step(local, data.x, data.y, lr=1.0)
            updates.append(local)
        w = np.tensordot(weights / weights.sum(), np.stack(updates), axes=1)
    x, y = _pooled(pop, pop.held_out_ids(10))
    accuracy = np.mean(np.argmax(np.hstack([x, np.ones((len(x), 1))]) @ w, axis=1) == y)
    majority = np.bincount(y).max() / len(y)
    assert accuracy > 0.85
    assert accuracy > majority + 0.5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_clients", 0),
        ("num_clients", 1439),  # more than the 1438 training images
        ("alpha", 0.0),
        ("seed", -1),
        ("test_fraction", 0.0),
        ("test_fraction", 1.0),
        ("num_held_out_clients", 0),
        ("num_held_out_clients", 360),  # more than the 359 test images
    ],
)
def test_invalid_field_raises_config_error_naming_it(key, value):
    with pytest.raises(ConfigError) as info:
        DigitsDirichlet(**{key: value})
    assert info.value.key == key


def test_largest_valid_sizes():
    pop = DigitsDirichlet(num_clients=1438, num_held_out_clients=359, alpha=0.1)
    np.testing.assert_array_equal(pop.num_examples(np.arange(1438)), np.ones(1438))
    assert len(pop.held_out_ids(1000)) == 359
