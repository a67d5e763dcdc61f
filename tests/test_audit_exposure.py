"""Secret Sharer exposure: mechanisms/audit/exposure.py, engine/population/secrets.py and
engine/training/exposure.py."""

from __future__ import annotations

import math
import pickle
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata
from torch import nn
from torch.nn import functional as F  # noqa: N812

from common.errors import ConfigError
from engine.population.base import SyntheticPopulation
from engine.population.datasets.text import ZipfTextPopulation
from engine.population.secrets import WithSecrets
from engine.training.client import LocalTraining, train_client
from engine.training.exposure import log_perplexities, secret_exposures
from engine.training.models import MoETransformerLM, NextWordLM, flatten, init_parameters
from mechanisms.audit.exposure import (
    SecretPlan,
    candidate_sequences,
    exposure,
    exposures_by_repetition,
    secret_carriers,
    secret_sequences,
)

VOCAB, SEQ = 50, 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- exposure -------------------------------------------------------------------------------


def test_exposure_hand_computed_ranks():
    candidates = np.array([1.0, 2.0, 3.0, 4.0])  # |R| = 4: log2|R| = 2
    assert exposure(0.5, candidates) == 2.0  # rank 1
    assert exposure(2.5, candidates) == pytest.approx(2 - math.log2(3))  # two below: rank 3
    assert exposure(9.0, candidates) == pytest.approx(2 - math.log2(5))  # worst: rank |R| + 1
    # Ties count half: one below and two equal give rank 1 + 1 + 2 / 2 = 3.
    assert exposure(2.0, np.array([1.0, 2.0, 2.0, 4.0])) == pytest.approx(2 - math.log2(3))
    assert exposure(1.0, np.ones(4)) == pytest.approx(2 - math.log2(3))  # all tied: 1 + 4 / 2
    assert exposure(-np.inf, np.full(1024, np.inf)) == 10.0
    assert exposure(5.0, np.arange(1024.0)) == pytest.approx(10 - math.log2(6.5))


def test_exposure_rejects_nan_and_no_candidates():
    with pytest.raises(ValueError, match="NaN"):
        exposure(float("nan"), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        exposure(1.0, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="candidate"):
        exposure(1.0, np.zeros(0))


scores = st.integers(-5, 5).map(float)  # small integers: plenty of ties


@settings(max_examples=200, deadline=None)
@given(secret=scores, candidates=st.lists(scores, min_size=1, max_size=30))
def test_exposure_is_log2_size_minus_log2_average_rank(secret, candidates):
    # Golden: scipy's average rank of the secret among secret + candidates ("ties count half").
    rank = rankdata([secret, *candidates], method="average")[0]
    size = len(candidates)
    value = exposure(secret, np.array(candidates))
    assert value == pytest.approx(math.log2(size) - math.log2(rank))
    assert math.log2(size) - math.log2(size + 1) - 1e-12 <= value <= math.log2(size)


def test_exposures_by_repetition_averages_each_group():
    plan = SecretPlan(repetitions=(1, 4), secrets_per_repetition=2, num_candidates=8)
    candidates = np.arange(8.0)  # log2|R| = 3
    got = exposures_by_repetition(plan, np.array([-1.0, 10.0, -1.0, 3.0]), candidates)
    assert list(got) == [1, 4]
    assert got[1] == pytest.approx((3 + 3 - math.log2(9)) / 2)
    assert got[4] == pytest.approx((3 + 3 - math.log2(4.5)) / 2)  # 3 below, one tie
    with pytest.raises(ValueError, match="secret scores"):
        exposures_by_repetition(plan, np.zeros(3), candidates)
    with pytest.raises(ValueError, match="candidate scores"):
        exposures_by_repetition(plan, np.zeros(4), candidates[:7])


# --- the plan and the streams ---------------------------------------------------------------


def test_secret_plan_counts_and_validation():
    plan = SecretPlan(repetitions=(1, 4, 16), secrets_per_repetition=3)
    assert plan.num_secrets == 9 and plan.num_candidates == 4096
    np.testing.assert_array_equal(plan.counts(), [1, 1, 1, 4, 4, 4, 16, 16, 16])
    assert plan.counts().dtype == np.int64
    for kwargs, key in [
        ({"repetitions": ()}, "audit.secrets"),
        ({"repetitions": (1, 0)}, "audit.secrets"),
        ({"repetitions": (2, 2)}, "audit.secrets"),
        ({"repetitions": (1,), "secrets_per_repetition": 0}, "audit.secrets_per_repetition"),
        ({"repetitions": (1,), "num_candidates": 0}, "audit.num_candidates"),
    ]:
        with pytest.raises(ConfigError) as info:
            SecretPlan(**kwargs)  # type: ignore[arg-type]
        assert info.value.key == key


def test_streams_are_deterministic_independent_and_in_range():
    secrets = secret_sequences(7, 5, SEQ + 1, VOCAB)
    candidates = candidate_sequences(7, 5, SEQ + 1, VOCAB)
    assert secrets.shape == candidates.shape == (5, SEQ + 1)
    assert secrets.dtype == candidates.dtype == np.int64
    np.testing.assert_array_equal(secrets, secret_sequences(7, 5, SEQ + 1, VOCAB))
    np.testing.assert_array_equal(candidates, candidate_sequences(7, 5, SEQ + 1, VOCAB))
    assert not np.array_equal(secrets, candidates)
    assert not np.array_equal(secrets, secret_sequences(8, 5, SEQ + 1, VOCAB))
    np.testing.assert_array_equal(candidates[:3], candidate_sequences(7, 3, SEQ + 1, VOCAB))
    many = candidate_sequences(0, 20_000, 4, 3)
    assert many.min() == 0 and many.max() == 2
    # Uniform tokens: each of 3 values about a third of the time (sd of a share ~0.002).
    np.testing.assert_allclose(np.bincount(many.ravel()) / many.size, 1 / 3, atol=0.01)
    carriers = secret_carriers(7, 6, 10)
    np.testing.assert_array_equal(carriers, secret_carriers(7, 6, 10))
    assert len(set(carriers.tolist())) == 6 and carriers.min() >= 0 and carriers.max() < 10
    np.testing.assert_array_equal(np.sort(secret_carriers(1, 10, 10)), np.arange(10))
    with pytest.raises(ConfigError) as info:
        secret_carriers(0, 11, 10)
    assert info.value.key == "audit.secrets"


def test_carriers_at_ten_million_clients_need_no_population_sized_array():
    tracemalloc.start()
    start = time.perf_counter()
    carriers = secret_carriers(3, 1000, 10**7)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 4 << 20  # arange(10**7) alone would be 80 MB
    assert len(np.unique(carriers)) == 1000
    assert carriers.min() >= 0 and carriers.max() < 10**7


# --- WithSecrets ----------------------------------------------------------------------------


def _text(num_clients: int = 20) -> ZipfTextPopulation:
    return ZipfTextPopulation(
        num_clients=num_clients, seed=3, vocab_size=VOCAB, seq_len=SEQ, topic_vocab=10
    )


def _planted() -> WithSecrets:
    secrets = secret_sequences(3, 4, SEQ + 1, VOCAB)
    return WithSecrets(
        population=_text(),
        secrets=secrets,
        carriers=np.array([2, 5, 11, 5]),
        repetitions=np.array([1, 3, 2, 2]),
    )


def test_carriers_hold_their_secrets_repeated_after_their_own_data():
    pop, base = _planted(), _text()
    assert (pop.num_clients, pop.num_classes, pop.num_features) == (20, VOCAB, SEQ)
    assert type(pop).inputs == type(base).inputs
    for client, secrets in [(2, [(0, 1)]), (11, [(2, 2)]), (5, [(1, 3), (3, 2)])]:
        own, data = base.client_data(client), pop.client_data(client)
        n = len(own)
        np.testing.assert_array_equal(data.x[:n], own.x)
        np.testing.assert_array_equal(data.y[:n], own.y)
        planted = np.concatenate([np.tile(pop.secrets[i], (r, 1)) for i, r in secrets])
        assert len(data) == n + len(planted) and data.x.dtype == data.y.dtype == np.int64
        np.testing.assert_array_equal(data.x[n:], planted[:, :-1])
        np.testing.assert_array_equal(data.y[n:], planted[:, 1:])
    for client in [0, 3, 19, *pop.held_out_ids(3).tolist()]:
        own, data = base.client_data(client), pop.client_data(client)
        np.testing.assert_array_equal(data.x, own.x)
        np.testing.assert_array_equal(data.y, own.y)
    np.testing.assert_array_equal(pop.held_out_ids(3), base.held_out_ids(3))


def test_num_examples_and_registry_match_client_data():
    pop, base = _planted(), _text()
    ids = np.concatenate([np.arange(20), pop.held_out_ids(3)])
    counts = pop.num_examples(ids)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [len(pop.client_data(int(c))) for c in ids])
    extra = np.zeros(20, np.int64)
    extra[[2, 5, 11]] = [1, 5, 2]
    np.testing.assert_array_equal(pop.registry().num_examples, base.registry().num_examples + extra)


def test_pickles_and_keeps_its_arrays_read_only():
    pop = _planted()
    with pytest.raises(ValueError):
        pop.secrets[0, 0] = 1
    back = pickle.loads(pickle.dumps(pop))
    np.testing.assert_array_equal(back.client_data(5).x, pop.client_data(5).x)
    np.testing.assert_array_equal(back.num_examples(np.arange(20)), pop.num_examples(np.arange(20)))


def test_refuses_what_does_not_fit():
    secrets = secret_sequences(3, 1, SEQ + 1, VOCAB)
    cases = [
        (SyntheticPopulation(num_clients=10), secrets, [0], [1]),
        (_text(), secrets[:, :-1], [0], [1]),  # seq_len tokens: one short
        (_text(), secrets + VOCAB, [0], [1]),  # out of the vocabulary
        (_text(), secrets, [20], [1]),  # a held-out client
        (_text(), secrets, [0], [0]),
        (_text(), secrets, [0, 1], [1, 1]),
    ]
    for base, s, carriers, reps in cases:
        with pytest.raises(ConfigError) as info:
            WithSecrets(base, s, np.array(carriers), np.array(reps))
        assert info.value.key == "audit.secrets"
    with pytest.raises(ConfigError, match="text population"):
        WithSecrets(SyntheticPopulation(num_clients=10), secrets, np.array([0]), np.array([1]))


# --- scoring and end to end -----------------------------------------------------------------


def _model(kind: str) -> tuple[nn.Module, torch.Tensor]:
    model: nn.Module
    if kind == "lm":
        model = NextWordLM(num_features=SEQ, num_classes=VOCAB, embedding_dim=16, hidden=32)
    else:
        model = MoETransformerLM(
            num_features=SEQ, num_classes=VOCAB, d_model=16, num_heads=2, num_layers=1, dense=True
        )
    init_parameters(model, 5)
    return model, torch.from_numpy(flatten(model))


@pytest.mark.parametrize("kind", ["lm", "moe_lm"])
def test_log_perplexities_equal_a_direct_cross_entropy(kind):
    model, params = _model(kind)
    sequences = candidate_sequences(1, 37, SEQ + 1, VOCAB)
    x, y = torch.from_numpy(sequences[:, :-1]), torch.from_numpy(sequences[:, 1:])
    with torch.no_grad():
        logits = model(x).to(torch.float64)
    direct = -F.log_softmax(logits, dim=-1).gather(-1, y[..., None])[..., 0].mean(dim=1)
    init_parameters(model, 6)  # other weights in the module: `params` must be assigned
    model.train()
    got = log_perplexities(model, params, sequences, batch=10)
    assert got.dtype == np.float64 and got.shape == (37,)
    np.testing.assert_allclose(got, direct.numpy(), rtol=1e-5)
    assert model.training
    np.testing.assert_allclose(log_perplexities(model, params, sequences, batch=1), got, rtol=1e-5)
    assert log_perplexities(model, params, sequences[:0]).shape == (0,)


def test_a_memorised_secret_is_exposed_and_an_unseen_one_is_not():
    plan = SecretPlan(repetitions=(200,), secrets_per_repetition=1, num_candidates=1024)
    secrets = secret_sequences(0, 2, SEQ + 1, VOCAB)  # secret 1 is never inserted
    pop = WithSecrets(_text(), secrets[:1], np.array([4]), plan.counts())
    data = pop.client_data(4)
    assert 200 / len(data) > 0.8  # mostly the secret
    model, params = _model("lm")
    training = LocalTraining(epochs=12, batch_size=10, lr=0.5)
    update = train_client(model, params, data, training, np.random.default_rng(0))
    trained = params + torch.from_numpy(update.delta)
    candidates = candidate_sequences(0, plan.num_candidates, SEQ + 1, VOCAB)
    got = secret_exposures(model, trained, plan, secrets[:1], candidates)
    assert got[200] > 9.5  # log2|R| = 10
    unseen = log_perplexities(model, trained, secrets[1:])[0]
    assert exposure(unseen, log_perplexities(model, trained, candidates)) < 5
    assert secret_exposures(model, params, plan, secrets[:1], candidates)[200] < 5  # untrained
