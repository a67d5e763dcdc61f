"""population/datasets/ratings.py, training/models/recommender.py: Federated Reconstruction MF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from common.errors import ConfigError
from engine.aggregation import DenseAggregator, SparseAggregator, SparsePartial
from engine.app.config import COMPONENTS
from engine.population import ClientData, RatingsPopulation
from engine.population.datasets.ratings import STAR_CDF
from engine.runtime import ClientWorker
from engine.training import (
    LocalTraining,
    ReconstructionMF,
    assign_flat,
    flatten,
    init_parameters,
    train_client,
)

SMALL = {"num_clients": 2000, "num_items": 100, "rank": 4}


def _model(population: RatingsPopulation, **kwargs) -> ReconstructionMF:
    return ReconstructionMF(population.num_features, population.num_classes, **kwargs)


def _query_metrics(
    model: ReconstructionMF, params: torch.Tensor, clients: list[ClientData], cold: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the clients' query splits, as FedRecon evaluates."""
    assign_flat(model, params)
    loss, correct, count = 0.0, 0, 0
    for data in clients:
        model.begin_client(data.x, data.y)
        if cold:
            model.user = torch.zeros_like(model.user)
        x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
        with torch.no_grad():
            query = model.query_mask(x)
            logits = model(x[query])
            loss += float(F.cross_entropy(logits, y[query], reduction="sum"))
            correct += int((logits.argmax(dim=1) == y[query]).sum())
            count += int(query.sum())
    return loss / count, correct / count


# -- population --------------------------------------------------------------------------------


def test_client_data_is_item_ids_and_rating_levels_from_seed_and_id():
    population = RatingsPopulation(**SMALL)
    assert (population.num_features, population.num_classes) == (100, 5)
    data = population.client_data(7)
    assert data.x.dtype == np.int64 and data.y.dtype == np.int64
    assert len(data) == population.num_examples(np.array([7]))[0]
    assert len(np.unique(data.x)) == len(data)  # a user rates an item at most once
    assert data.x.min() >= 0 and data.x.max() < 100
    assert data.y.min() >= 0 and data.y.max() < 5
    again = RatingsPopulation(**{**SMALL, "num_clients": 10}).client_data(7)
    np.testing.assert_array_equal(again.x, data.x)  # independent of the population size
    np.testing.assert_array_equal(again.y, data.y)
    other = RatingsPopulation(**{**SMALL, "seed": 1}).client_data(7)
    assert not np.array_equal(other.x[: len(data)], data.x[: len(other)])


def test_counts_are_heavy_tailed_and_capped_at_the_item_count():
    counts = RatingsPopulation(num_items=50).num_examples(np.arange(20_000))
    assert np.median(counts) == 20
    assert counts.max() == 50 and counts.min() >= 4


def test_held_out_users_follow_the_population():
    population = RatingsPopulation(**SMALL)
    np.testing.assert_array_equal(population.held_out_ids(3), [2000, 2001, 2002])
    assert len(population.client_data(2001)) >= population.min_ratings


def test_rating_shares_match_movielens_and_the_planted_model_predicts_them():
    population = RatingsPopulation()
    clients = [(c, population.client_data(c)) for c in range(1000)]
    labels = np.concatenate([data.y for _, data in clients])
    shares = np.bincount(labels, minlength=5) / len(labels)
    np.testing.assert_allclose(shares, np.diff([0.0, *STAR_CDF, 1.0]), atol=0.02)
    noise_free = np.concatenate(
        [np.searchsorted(population.thresholds, population.scores(c, d.x)) for c, d in clients]
    )
    assert (noise_free == labels).mean() > shares.max() + 0.25


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_clients", 0), ("num_items", 1), ("rank", 0), ("seed", -1), ("median_ratings", 0.0),
     ("min_ratings", 0), ("max_ratings", 2), ("noise_std", -1.0), ("popularity_exponent", -1.0)],
)  # fmt: skip
def test_population_rejects_bad_fields(key, value):
    with pytest.raises(ConfigError) as error:
        RatingsPopulation(**{key: value})
    assert error.value.key == key


# -- model -------------------------------------------------------------------------------------


def test_flat_vector_holds_exactly_the_global_parameters():
    population = RatingsPopulation(num_items=2000)
    model = _model(population, rank=8)
    data = population.client_data(0)
    model.begin_client(data.x, data.y)
    names = [name for name, _ in model.named_parameters()]
    assert names == ["item_embedding", "item_bias", "level_weight", "level_bias"]
    assert len(flatten(model)) == 2000 * 8 + 2000 + 5 + 5 == 18_010
    assert set(model.state_dict()) == set(names)  # no user, no buffer
    assert not any(p is model.user for p in model.parameters())
    assert model.user.shape == (9,) and model.user.abs().sum() > 0


def test_worker_partials_and_deltas_carry_no_user_embedding():
    population = RatingsPopulation(**SMALL)
    count = 100 * 4 + 100 + 5 + 5

    def factory() -> ReconstructionMF:
        return _model(population, rank=4)

    training = LocalTraining(batch_size=5, lr=0.5)
    weights = flatten(factory())
    ids = [np.arange(3), np.arange(3, 5)]
    dense = ClientWorker(population, factory, training, DenseAggregator(), seed=0)
    partials = dense.train(weights, 0, ids)
    assert [p.update_sum.shape for p in partials] == [(count,), (count,)]
    assert [p.num_clients for p in partials] == [3, 2]
    rng = np.random.default_rng(0)
    update = train_client(
        factory(), torch.from_numpy(weights), population.client_data(0), training, rng
    )
    assert update.delta.shape == (count,)
    # Row-sparse: a client's item rows are exactly its query items; support rows stay put.
    model = factory()
    sparse = ClientWorker(population, factory, training, SparseAggregator(), seed=0)
    for client in range(3):
        (partial,) = sparse.train(weights, 0, [np.array([client])])
        assert isinstance(partial, SparsePartial)
        data = population.client_data(client)
        support = model.support_size(len(data))
        assert set(partial.rows[0].tolist()) <= set(data.x[support:].tolist())
        assert not set(partial.rows[0].tolist()) & set(data.x[:support].tolist())
        np.testing.assert_array_equal(partial.rows[0], partial.rows[1])
        assert partial.update_sum.shape == (10,)  # the dense rest: the level head


def test_split_is_positional_with_one_rating_on_each_side():
    model = ReconstructionMF(10, 5, support_fraction=0.5)
    assert [model.support_size(n) for n in (1, 2, 3, 4, 9, 100)] == [0, 1, 1, 2, 4, 50]
    assert ReconstructionMF(10, 5, support_fraction=0.9).support_size(3) == 2
    x, y = np.array([4, 1, 7, 2], dtype=np.int64), np.array([0, 1, 2, 3])
    model.begin_client(x, y)
    assert model.query_mask(torch.tensor([4, 1, 7, 2, 9])).tolist() == [0, 0, 1, 1, 1]
    support_only = model.loss(torch.tensor([4, 1]), torch.tensor([0, 1]))
    assert float(support_only.detach()) == 0.0
    grads = torch.autograd.grad(support_only, list(model.parameters()))
    assert all(float(g.abs().sum()) == 0 for g in grads)
    # One rating: no support, a cold user scored on it.
    model.begin_client(np.array([3]), np.array([4]))
    assert float(model.user.abs().sum()) == 0 and model.query_mask(torch.tensor([3])).all()


def test_reconstruction_is_deterministic_from_scratch_and_fits_the_support():
    population = RatingsPopulation(**SMALL)
    model = _model(population, rank=4, reconstruction_l2=0.0)
    init_parameters(model, seed=3)
    a, b = population.client_data(1), population.client_data(2)
    model.begin_client(a.x, a.y)
    first = model.user.clone()
    model.begin_client(b.x, b.y)
    model.begin_client(a.x, a.y)  # no state carried over from client b
    torch.testing.assert_close(model.user, first, rtol=0, atol=0)
    other = _model(population, rank=4, reconstruction_l2=0.0)
    init_parameters(other, seed=3)
    other.begin_client(torch.from_numpy(a.x), torch.from_numpy(a.y))
    torch.testing.assert_close(other.user, first, rtol=0, atol=0)
    support = model.support_size(len(a))
    sx, sy = torch.from_numpy(a.x[:support]), torch.from_numpy(a.y[:support])
    with torch.no_grad():
        fitted = F.cross_entropy(model(sx), sy)
        model.user = torch.zeros_like(model.user)
        cold = F.cross_entropy(model(sx), sy)
    assert fitted < cold - 0.05


def test_a_few_federated_rounds_improve_held_out_users():
    population = RatingsPopulation(**SMALL)

    def factory() -> ReconstructionMF:
        return _model(population, rank=4)

    model = factory()
    init_parameters(model, seed=0)
    weights = torch.from_numpy(flatten(model))
    held_out = [population.client_data(c) for c in population.held_out_ids(100)]
    initial = _query_metrics(model, weights, held_out)
    worker = ClientWorker(
        population, factory, LocalTraining(batch_size=10, lr=0.5), DenseAggregator(), seed=0
    )
    rng = np.random.default_rng(0)
    for round_idx in range(20):
        cohort = rng.choice(population.num_clients, 40, replace=False)
        partials = worker.train(weights.numpy(), round_idx, np.array_split(cohort, 2))
        total = sum(p.update_sum for p in partials) / sum(p.weight_sum for p in partials)
        weights = weights + 3.0 * torch.from_numpy(total)  # FedAvg, server learning rate 3
    trained = _query_metrics(model, weights, held_out)
    cold = _query_metrics(model, weights, held_out, cold=True)
    assert trained[0] < initial[0] - 0.1 and trained[1] > initial[1] + 0.1
    # Seen: (1.63, 22%) initially, (1.33, 41%) trained, (1.45, 33%) trained but cold users.
    assert trained[0] < cold[0] - 0.05 and trained[1] > cold[1] + 0.03  # personalised


@pytest.mark.skipif(
    not any(option == "mf_recon" for _, option, _ in COMPONENTS),
    reason="mf_recon and ratings are not registered in engine.app.config yet",
)
def test_fedrecon_experiment_builds():
    from engine.app.build import build_experiment
    from tests.conftest import compose_config

    experiment, _ = build_experiment(compose_config("experiment=fedrecon"))
    assert isinstance(experiment.population, RatingsPopulation)
    model = experiment.model_factory()
    assert isinstance(model, ReconstructionMF)
    assert model.item_embedding.shape == (500, 8)
