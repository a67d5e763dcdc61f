"""engine/population/base.py: synthetic non-IID population, client data and the registry."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.optimize import minimize

import engine.population.base as population_module
from common.errors import ConfigError
from engine.population import (
    ClientData,
    ClientRegistry,
    DigitsDirichlet,
    Population,
    RatingsPopulation,
    SyntheticPopulation,
    ZipfTextPopulation,
)

# Every Population implementation, built small. Add new ones here.
POPULATIONS: list[tuple[str, Callable[[], Population]]] = [
    (
        "zipf-text",
        lambda: ZipfTextPopulation(
            num_clients=40, seed=3, vocab_size=500, seq_len=6, topic_vocab=50
        ),
    ),
    ("ratings", lambda: RatingsPopulation(num_clients=30, num_items=100, seed=2)),
    ("synthetic", lambda: SyntheticPopulation(num_clients=40, seed=3)),
    (
        "synthetic-small",
        lambda: SyntheticPopulation(
            num_clients=7, seed=11, num_features=5, num_classes=3, min_examples=1, max_examples=9
        ),
    ),
    ("digits", lambda: DigitsDirichlet(num_clients=30, seed=3, num_held_out_clients=25)),
    (
        "digits-skewed",
        lambda: DigitsDirichlet(num_clients=200, alpha=0.05, seed=8, num_held_out_clients=40),
    ),
]


@pytest.fixture(params=[factory for _, factory in POPULATIONS], ids=[n for n, _ in POPULATIONS])
def make_population(request) -> Callable[[], Population]:
    return request.param


# -- contract, every Population ----------------------------------------------------------------


def test_contract_num_examples(make_population):
    pop = make_population()
    ids = np.arange(pop.num_clients)
    counts = pop.num_examples(ids)
    assert counts.dtype == np.int64
    assert counts.shape == ids.shape
    assert np.all(counts >= 1)
    np.testing.assert_array_equal(counts, make_population().num_examples(ids))
    # Vectorised: a client's count does not depend on the batch it is asked in.
    for client in (0, pop.num_clients - 1, pop.num_clients // 2):
        assert pop.num_examples(np.array([client]))[0] == counts[client]


def test_contract_client_data(make_population):
    pop = make_population()
    for client in range(min(pop.num_clients, 10)):
        data = pop.client_data(client)
        assert isinstance(data, ClientData)
        assert data.y.dtype == np.int64
        if data.x.dtype == np.int64 and data.x.ndim == 2:  # tokens [n, seq]; y: next tokens
            assert data.y.shape == data.x.shape
        else:
            assert data.x.dtype in (np.float32, np.int64)
            assert data.y.ndim == 1
        assert data.x.shape[0] == len(data) == len(data.y)
        assert len(data) == pop.num_examples(np.array([client]))[0]
        assert np.all(np.isfinite(data.x))
        assert np.all((data.y >= 0) & (data.y < pop.num_classes))
        again = make_population().client_data(client)
        np.testing.assert_array_equal(data.x, again.x)
        np.testing.assert_array_equal(data.y, again.y)


def test_contract_held_out_ids(make_population):
    pop = make_population()
    held = pop.held_out_ids(25)
    assert held.dtype == np.int64
    assert held.shape == (25,)
    assert len(np.unique(held)) == 25
    assert np.all((held < 0) | (held >= pop.num_clients))
    np.testing.assert_array_equal(held, make_population().held_out_ids(25))
    # Held-out clients have data like anyone else.
    data = pop.client_data(int(held[0]))
    assert len(data) == pop.num_examples(held[:1])[0]


def test_contract_registry(make_population):
    pop = make_population()
    registry = pop.registry()
    assert isinstance(registry, ClientRegistry)
    assert registry.num_clients == pop.num_clients
    np.testing.assert_array_equal(
        registry.num_examples, pop.num_examples(np.arange(pop.num_clients))
    )
    assert registry.nbytes == registry.num_examples.nbytes


# -- SyntheticPopulation -----------------------------------------------------------------------


def test_client_data_does_not_depend_on_what_was_built_before():
    fresh = SyntheticPopulation(num_clients=100, seed=5).client_data(42)
    busy = SyntheticPopulation(num_clients=100, seed=5)
    for client in (0, 41, 43, 99, 7):
        busy.client_data(client)
    busy.num_examples(np.arange(100))
    busy.registry()
    after = busy.client_data(42)
    np.testing.assert_array_equal(fresh.x, after.x)
    np.testing.assert_array_equal(fresh.y, after.y)


def test_client_data_does_not_depend_on_population_size():
    # Data is a function of (seed, client id) only, not of N.
    a = SyntheticPopulation(num_clients=10, seed=2).client_data(4)
    b = SyntheticPopulation(num_clients=10_000, seed=2).client_data(4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)


@given(seed=st.integers(0, 2**31), client=st.integers(0, 10**6))
@settings(max_examples=25, deadline=None)
def test_client_data_shapes_and_ranges(seed, client):
    pop = SyntheticPopulation(num_clients=10**6 + 1, seed=seed, num_features=8, num_classes=4)
    data = pop.client_data(client)
    n = int(pop.num_examples(np.array([client]))[0])
    assert data.x.shape == (n, 8)
    assert data.y.shape == (n,)
    assert data.x.dtype == np.float32
    assert data.y.dtype == np.int64
    assert pop.min_examples <= n <= pop.max_examples
    assert data.y.min() >= 0
    assert data.y.max() < 4


def test_different_clients_and_seeds_differ():
    pop = SyntheticPopulation(num_clients=50, seed=0, median_examples=30, sigma_examples=0.0)
    first = pop.client_data(0)
    for client in range(1, 10):
        other = pop.client_data(client)
        assert other.x.shape == first.x.shape
        assert not np.array_equal(first.x, other.x)
    reseeded = SyntheticPopulation(
        num_clients=50, seed=1, median_examples=30, sigma_examples=0.0
    ).client_data(0)
    assert not np.array_equal(first.x, reseeded.x)


def test_sigma_zero_gives_the_rounded_median():
    pop = SyntheticPopulation(num_clients=30, median_examples=12.4, sigma_examples=0.0)
    np.testing.assert_array_equal(pop.num_examples(np.arange(30)), np.full(30, 12))


def test_example_counts_are_heavy_tailed_around_the_median():
    pop = SyntheticPopulation(num_clients=50_000, median_examples=20.0, sigma_examples=1.0)
    counts = pop.registry().num_examples
    assert counts.min() >= pop.min_examples
    assert counts.max() <= pop.max_examples
    assert abs(np.median(counts) - 20) <= 1
    assert counts.mean() > 1.3 * np.median(counts)


def test_registry_matches_num_examples():
    pop = SyntheticPopulation(num_clients=1000, seed=9)
    registry = pop.registry()
    assert registry.num_clients == 1000
    np.testing.assert_array_equal(registry.num_examples, pop.num_examples(np.arange(1000)))


@pytest.mark.parametrize("block", [1, 7, 64, 1000, 5000])
def test_registry_block_loop_covers_every_client(monkeypatch, block):
    monkeypatch.setattr(population_module, "_REGISTRY_BLOCK", block)
    pop = SyntheticPopulation(num_clients=1000, seed=4)
    expected = np.array([pop.num_examples(np.array([i]))[0] for i in range(1000)])
    registry = pop.registry()
    assert registry.num_examples.shape == (1000,)
    np.testing.assert_array_equal(registry.num_examples, expected)


def test_held_out_ids_are_outside_the_population():
    pop = SyntheticPopulation(num_clients=100)
    held = pop.held_out_ids(10)
    assert np.all(held >= 100)
    assert pop.held_out_ids(0).shape == (0,)


def test_alpha_zero_labels_are_linearly_separable():
    # With alpha = 0 every client labels its features with the same global linear model, so
    # the clients' pooled examples are linearly separable by one argmax classifier.
    pop = SyntheticPopulation(
        num_clients=10, seed=1, num_features=3, num_classes=3, alpha=0.0, median_examples=200
    )
    xs = np.concatenate([pop.client_data(c).x for c in range(4)]).astype(np.float64)
    ys = np.concatenate([pop.client_data(c).y for c in range(4)])
    # Fit a multinomial logistic regression with scipy, independent of the code under test.
    d, k = 3, 3

    def nll(theta: np.ndarray) -> float:
        w, b = theta[: d * k].reshape(d, k), theta[d * k :]
        logits = xs @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(ys)), ys].mean())

    theta = minimize(nll, np.zeros(d * k + k), method="L-BFGS-B").x
    w, b = theta[: d * k].reshape(d, k), theta[d * k :]
    accuracy = np.mean(np.argmax(xs @ w + b, axis=1) == ys)
    assert accuracy > 0.97


def test_non_iid_label_histograms_differ():
    pop = SyntheticPopulation(num_clients=100, seed=0, median_examples=300, sigma_examples=0.0)
    for a, b in [(0, 1), (2, 3), (4, 5)]:
        ha = np.bincount(pop.client_data(a).y, minlength=pop.num_classes)
        hb = np.bincount(pop.client_data(b).y, minlength=pop.num_classes)
        table = np.vstack([ha, hb])
        table = table[:, table.sum(axis=0) > 0]
        # Homogeneity of the two label distributions is overwhelmingly rejected.
        assert stats.chi2_contingency(table).pvalue < 1e-6


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_clients", 0),
        ("seed", -1),
        ("num_features", 0),
        ("num_classes", 1),
        ("alpha", -0.1),
        ("beta", -0.1),
        ("median_examples", 0.0),
        ("sigma_examples", -1.0),
        ("min_examples", 0),
        ("max_examples", 1),  # below min_examples (2)
    ],
)
def test_invalid_field_raises_config_error_naming_it(key, value):
    with pytest.raises(ConfigError) as info:
        SyntheticPopulation(**{key: value})
    assert info.value.key == key


def test_valid_edge_values_are_accepted():
    SyntheticPopulation(
        num_clients=1,
        seed=0,
        num_features=1,
        num_classes=2,
        alpha=0.0,
        beta=0.0,
        sigma_examples=0.0,
        min_examples=1,
        max_examples=1,
    )
