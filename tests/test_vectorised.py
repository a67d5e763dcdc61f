"""Vectorised local training equals the per-client loop, client by client, to float rounding."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from engine.aggregation import DenseAggregator
from engine.population import ClientData, FemnistLikePopulation
from engine.runtime import ClientWorker
from engine.training import (
    CNN,
    MLP,
    LocalTraining,
    LogisticRegression,
    NextWordLM,
    flatten,
    init_parameters,
    prefers_vectorised,
    supports_vectorised,
    train_client,
    train_clients,
)
from engine.training.client import client_batches
from engine.training.vectorised import batch_plan, batched_steps, max_group_size
from tests.conftest import smoke_experiment


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread, as `engine.runtime.workers.ClientWorker` sets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TRAININGS = [
    LocalTraining(epochs=2, batch_size=8, lr=0.1),
    LocalTraining(epochs=1, batch_size=5, lr=0.05, momentum=0.9, vectorise_steps=3),
    LocalTraining(epochs=1, batch_size=4, lr=0.05, momentum=0.5, vectorise_steps=0),
]


def _model(name: str) -> torch.nn.Module:
    model = {"logreg": LogisticRegression(784, 62), "mlp": MLP(784, 62), "cnn": CNN(784, 62)}[name]
    init_parameters(model, 3)
    return model


def _clients(sizes: list[int]) -> list[ClientData]:
    population = FemnistLikePopulation(num_clients=100, min_examples=1)
    out = []
    for i, n in enumerate(sizes):
        data = population.client_data(i)
        reps = -(-n // len(data))
        out.append(ClientData(np.tile(data.x, (reps, 1))[:n], np.tile(data.y, reps)[:n]))
    return out


def _rngs(count: int) -> list[np.random.Generator]:
    return [np.random.default_rng([7, i]) for i in range(count)]


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize("training", TRAININGS, ids=["sgd", "momentum-tail", "all-looped"])
@pytest.mark.parametrize("sizes", [[12, 12, 12], [1, 23, 0, 7, 16, 40]], ids=["equal", "unequal"])
def test_vectorised_updates_equal_the_loops(name, training, sizes):
    model = _model(name)
    params = torch.from_numpy(flatten(model))
    datas = _clients(sizes)
    loop = [
        train_client(model, params, d, training, r)
        for d, r in zip(datas, _rngs(len(sizes)), strict=True)
    ]
    vectorised = train_clients(model, params, datas, training, _rngs(len(sizes)))
    for mine, theirs in zip(vectorised, loop, strict=True):
        np.testing.assert_allclose(mine.delta, theirs.delta, rtol=1e-4, atol=2e-6)
        assert mine.loss_sum == pytest.approx(theirs.loss_sum, rel=1e-5)
        assert (mine.num_examples, mine.examples_seen) == (
            theirs.num_examples,
            theirs.examples_seen,
        )
        assert np.abs(mine.delta).max() > 0 or mine.num_examples == 0


def test_padding_never_changes_an_update():
    model = _model("mlp")
    params = torch.from_numpy(flatten(model))
    small, large = _clients([3, 60])
    training = TRAININGS[1]
    (alone,) = train_clients(model, params, [small], training, _rngs(1))
    together = train_clients(model, params, [small, large], training, _rngs(1) + _rngs(2)[1:])
    np.testing.assert_allclose(together[0].delta, alone.delta, rtol=1e-6, atol=1e-7)


def test_a_memory_budget_splits_the_chunk_without_changing_updates():
    model = _model("logreg")
    params = torch.from_numpy(flatten(model))
    datas = _clients([5, 9, 2, 30, 11, 4])
    tiny = dataclasses.replace(TRAININGS[0], vectorise_memory_mb=0.5)
    assert max_group_size(len(params), 784, tiny, 8) < 6
    with one_thread():
        whole = train_clients(model, params, datas, TRAININGS[0], _rngs(6))
        split = train_clients(model, params, datas, tiny, _rngs(6))
    for a, b in zip(whole, split, strict=True):
        assert np.array_equal(a.delta, b.delta) and a.loss_sum == b.loss_sum


@given(
    sizes=st.lists(st.integers(0, 60), min_size=2, max_size=9),
    cut=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["logreg", "mlp"]),
)
@settings(max_examples=15, deadline=None)
def test_a_clients_update_is_bit_identical_however_clients_are_grouped(sizes, cut, seed, name):
    """The same client, trained with any others in any order, gets the same update, bit for bit
    (linear-layer models on one CPU thread, as a worker runs: the batched kernels compute each
    client alone)."""
    model = _model(name)
    params = torch.from_numpy(flatten(model))
    datas = _clients(sizes)
    training = LocalTraining(epochs=1, batch_size=6, lr=0.1, momentum=0.5, vectorise_steps=4)
    rngs = [np.random.default_rng([seed, i]) for i in range(len(sizes))]
    with one_thread():
        together = train_clients(model, params, datas, training, rngs)
        apart = _trained_in_two_parts(model, params, datas, training, seed, cut)
    for i, update in enumerate(together):
        assert np.array_equal(update.delta, apart[i].delta) and update.loss_sum == apart[i].loss_sum


def _trained_in_two_parts(model, params, datas, training, seed, cut):
    """The clients trained in two groups (a shuffled split): their updates by position."""
    order = np.random.default_rng(seed).permutation(len(datas))
    cut = min(cut, len(datas) - 1)
    apart = {}
    for part in (order[:cut], order[cut:]):
        fresh = [np.random.default_rng([seed, int(i)]) for i in part]
        for i, update in zip(
            part,
            train_clients(model, params, [datas[i] for i in part], training, fresh),
            strict=True,
        ):
            apart[int(i)] = update
    return apart


@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    epochs=st.integers(1, 3),
    batch_size=st.integers(1, 12),
    steps=st.integers(0, 5),
)
@settings(max_examples=50, deadline=None)
def test_batch_plan_takes_the_loops_batches(sizes, epochs, batch_size, steps):
    training = LocalTraining(epochs=epochs, batch_size=batch_size)
    plans = [client_batches(n, training, r) for n, r in zip(sizes, _rngs(len(sizes)), strict=True)]
    index, mask = batch_plan(plans, steps, batch_size)
    assert index.shape == mask.shape == (len(sizes), steps, batch_size)
    for c, (n, rng) in enumerate(zip(sizes, _rngs(len(sizes)), strict=True)):
        splits = (torch.from_numpy(rng.permutation(n)).split(batch_size) for _ in range(epochs))
        expected = [b.numpy() for split in splits for b in split if len(b)]  # no empty batch
        assert len(plans[c]) == len(expected)
        assert all(np.array_equal(a, b) for a, b in zip(plans[c], expected, strict=True))
        taken = [index[c, s][mask[c, s]] for s in range(steps) if mask[c, s].any()]
        assert all(np.array_equal(a, b) for a, b in zip(taken, expected[:steps], strict=True))
        assert len(taken) == min(steps, len(expected))


def _worker(vectorise: str) -> ClientWorker:
    exp = smoke_experiment("model=mlp")
    training = LocalTraining(epochs=1, batch_size=10, lr=0.1, vectorise=vectorise)
    return ClientWorker(exp.population, exp.model_factory, training, DenseAggregator("uniform"), 0)


@pytest.mark.parametrize("clip_norm", [None, 0.05])
def test_worker_partials_are_the_same_either_way(clip_norm):
    exp = smoke_experiment("model=mlp")
    model = exp.model_factory()
    init_parameters(model, 0)
    weights = flatten(model)
    chunks = [np.arange(0, 13), np.arange(13, 20)]
    on = _worker("on").train(weights, 2, chunks, clip_norm)
    off = _worker("off").train(weights, 2, chunks, clip_norm)
    for a, b in zip(on, off, strict=True):
        np.testing.assert_allclose(a.update_sum, b.update_sum, rtol=1e-4, atol=1e-6)
        assert (a.num_clients, a.weight_sum, a.examples_seen) == (
            b.num_clients,
            b.weight_sum,
            b.examples_seen,
        )
        assert a.bit_sum == b.bit_sum and a.loss_sum == pytest.approx(b.loss_sum, rel=1e-5)


def test_batched_steps_default_to_a_few_on_a_cpu_and_all_on_a_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert (
        batched_steps(LocalTraining(), cpu, 50) == 8 and batched_steps(LocalTraining(), cpu, 5) == 5
    )
    assert batched_steps(LocalTraining(), gpu, 50) == 50
    assert batched_steps(LocalTraining(vectorise_steps=3), gpu, 50) == 3
    with pytest.raises(ConfigError, match=r"^vectorise_steps: must be >= 0 or null"):
        LocalTraining(vectorise_steps=-1)


def test_auto_vectorises_where_it_is_faster():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert prefers_vectorised(_model("logreg"), cpu) and prefers_vectorised(_model("mlp"), cpu)
    assert not prefers_vectorised(_model("cnn"), cpu) and prefers_vectorised(_model("cnn"), gpu)
    assert not prefers_vectorised(NextWordLM(5, 50), gpu)


def test_models_with_per_client_hooks_stay_on_the_loop():
    assert supports_vectorised(_model("cnn")) and supports_vectorised(_model("logreg"))
    assert not supports_vectorised(NextWordLM(5, 50))
    with pytest.raises(ConfigError, match=r"training\.vectorise: 'on' needs a model without"):
        smoke_experiment("population=zipf_text", "model=lm", "training.vectorise=on")
    with pytest.raises(ConfigError, match=r"^vectorise: must be one of"):
        LocalTraining(vectorise="yes")


# -- the FEMNIST-like population and the CNN ----------------------------------------------------


def test_femnist_like_writers_are_deterministic_and_skewed():
    population = FemnistLikePopulation(num_clients=50)
    a, b = population.client_data(4), population.client_data(4)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert a.x.shape == (len(a), 784) and a.x.dtype == np.float32 and a.y.dtype == np.int64
    assert population.num_features == 784 and population.num_classes == 62
    mixes = [np.bincount(population.client_data(i).y, minlength=62) for i in range(20)]
    top = [m.argmax() for m in mixes]
    assert len(set(top)) > 5  # writers favour different characters
    assert max(m.max() / m.sum() for m in mixes) > 0.2  # and some strongly
    assert not np.array_equal(population.client_data(5).x[:1], a.x[:1])


def test_cnn_is_femnist_sized_and_takes_flat_or_image_inputs():
    model = _model("cnn")
    assert sum(p.numel() for p in model.parameters()) == 104_646
    x = torch.zeros(3, 784)
    assert model(x).shape == (3, 62)
    assert torch.equal(model(x), model(x.reshape(3, 28, 28)))
    with pytest.raises(ConfigError, match="num_features: must be 784"):
        CNN(60, 10)
