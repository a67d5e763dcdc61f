"""engine/training/models/moe.py: top-k routing with capacity, load balancing, the dense twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from common.errors import ConfigError
from engine.population import ZipfTextPopulation
from engine.training import (
    LocalTraining,
    MoETransformerLM,
    evaluate,
    flatten,
    init_parameters,
    train_client,
)
from engine.training.models.moe import MixtureOfExperts, expert_capacity, load_balancing_loss, route

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    init_parameters(model, seed)
    return torch.from_numpy(flatten(model))


def _tokens(vocab: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, vocab, shape))


def _small(**kwargs) -> MoETransformerLM:
    args = {"d_model": 16, "num_heads": 2, "num_layers": 2, "num_experts": 4, "expert_hidden": 8}
    return MoETransformerLM(8, 50, **{**args, **kwargs})


# -- routing -----------------------------------------------------------------------------------


def test_expert_capacity_is_the_gshard_formula():
    assert expert_capacity(80, 8, 2, 1.25) == 25
    assert expert_capacity(10, 4, 1, 1.0) == 3  # ceil(2.5)
    assert expert_capacity(7, 7, 1, 1.0) == 1


def test_route_picks_the_top_k_experts_with_their_probabilities():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    routing = route(probs, top_k=2, capacity=10)
    # First choices of both tokens, then second choices.
    assert routing.expert.tolist() == [1, 0, 2, 2]
    assert routing.token.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(routing.gate, torch.tensor([0.6, 0.5, 0.3, 0.3]))
    assert routing.keep.all()


def test_normalized_gates_are_the_top_k_probabilities_over_their_sum():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    routing = route(probs, top_k=2, capacity=10, normalize=True)
    assert routing.expert.tolist() == [1, 0, 2, 2]
    torch.testing.assert_close(
        routing.gate, torch.tensor([0.6 / 0.9, 0.5 / 0.8, 0.3 / 0.9, 0.3 / 0.8])
    )
    # Top-1 normalised is a gate of 1 for every token.
    torch.testing.assert_close(route(probs, 1, 10, normalize=True).gate, torch.ones(2))


def test_route_drops_assignments_beyond_capacity_first_choices_first():
    # Every token prefers expert 0, then expert 1.
    probs = torch.tensor([[0.7, 0.2, 0.1]] * 4)
    routing = route(probs, top_k=2, capacity=3)
    assert routing.expert.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # Expert 0 takes tokens 0..2 and drops token 3; expert 1 takes tokens 0..2 too.
    assert routing.keep.tolist() == [True, True, True, False, True, True, True, False]
    # Second choices queue behind every first choice of the same expert.
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    routing = route(probs, top_k=2, capacity=2)
    assert routing.expert.tolist() == [0, 1, 0, 1, 0, 1]
    assert routing.keep.tolist() == [True, True, True, True, False, False]


def test_load_balancing_loss_by_hand():
    # f = (1, 0): both first choices are expert 0; P = (0.7, 0.3): 2 * (1 * 0.7 + 0 * 0.3) = 1.4.
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    torch.testing.assert_close(load_balancing_loss(probs, torch.tensor([0, 0])), torch.tensor(1.4))
    # Perfect balance gives 1.
    uniform = torch.full((6, 3), 1 / 3)
    balanced = load_balancing_loss(uniform, torch.tensor([0, 1, 2, 0, 1, 2]))
    torch.testing.assert_close(balanced, torch.tensor(1.0))
    # The gradient flows through P (the mean probabilities), not through f.
    logits = torch.zeros(2, 2, requires_grad=True)
    load_balancing_loss(torch.softmax(logits, -1), torch.tensor([0, 0])).backward()
    assert logits.grad is not None and logits.grad[:, 0].gt(0).all()


@pytest.mark.parametrize("normalize", [False, True])
def test_mixture_output_is_the_gated_sum_and_dropped_tokens_get_zero(normalize):
    torch.manual_seed(0)
    layer = MixtureOfExperts(
        d_model=6, num_experts=3, top_k=2, capacity_factor=0.5, hidden=5, normalize_gates=normalize
    )
    x = torch.randn(9, 6)
    out, aux = layer(x)
    probs = torch.softmax(layer.router(x), -1)
    routing = route(probs, 2, expert_capacity(9, 3, 2, 0.5), normalize)
    assert (~routing.keep).any()
    expected = torch.zeros_like(x)
    for e, t, g, k in zip(*routing, strict=True):
        if k:
            expected[t] += g * layer.experts[int(e)](x[t])
    torch.testing.assert_close(out, expected)
    served = torch.zeros(9, dtype=torch.bool)
    served[routing.token[routing.keep]] = True
    assert (~served).any()
    assert torch.equal(out[~served], torch.zeros_like(out[~served]))
    torch.testing.assert_close(aux, load_balancing_loss(probs, routing.expert[:9]))


# -- the model ---------------------------------------------------------------------------------


def test_forward_shapes_and_loss_hook():
    model = _small(aux_loss_weight=0.5)
    init_parameters(model, 1)
    x, y = _tokens(50, (3, 8), 1), _tokens(50, (3, 8), 2)
    logits = model(x)
    assert logits.shape == (3, 8, 50)
    ce = F.cross_entropy(logits.reshape(-1, 50), y.reshape(-1))
    _, aux = model._run(x)
    assert aux > 0
    torch.testing.assert_close(model.loss(x, y), ce + 0.5 * aux)
    # Shorter sequences than num_features are fine.
    assert model(x[:, :5]).shape == (3, 5, 50)


def test_output_is_tied_and_attention_is_causal_without_drops():
    # capacity_factor = num_experts / top_k: every expert could take every token, none dropped.
    model = _small(capacity_factor=2.0)
    init_parameters(model, 2)
    assert [p for p in model.parameters() if p.dim() == 2 and p.shape[0] == 50] == [
        model.token.weight
    ]
    x = _tokens(50, (2, 8), 3)
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 50
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :5], model(changed)[:, :5])
        assert not torch.allclose(model(x)[:, 5:], model(changed)[:, 5:])


def test_expert_parameters_name_real_disjoint_parameters():
    model = _small(num_layers=2, num_experts=4)
    named = dict(model.named_parameters())
    experts = model.expert_parameters()
    assert len(experts) == 2 * 4
    flat = [name for names in experts for name in names]
    assert len(flat) == len(set(flat)) == 2 * 4 * 3
    assert all(name in named for name in flat)
    assert experts[0] == [
        "blocks.0.ffn.experts.0.up.weight",
        "blocks.0.ffn.experts.0.up.bias",
        "blocks.0.ffn.experts.0.down.weight",
    ]
    assert experts[5][0] == "blocks.1.ffn.experts.1.up.weight"


def test_round_stats_count_the_routed_tokens_and_reset():
    model = _small(top_k=2, capacity_factor=1.0)
    init_parameters(model, 4)
    model.round_stats()
    x = _tokens(50, (5, 8), 4)
    model(x)
    model(x[:3])
    stats = model.round_stats()
    tokens = 5 * 8 + 3 * 8
    per_layer = stats["tokens_per_expert"].reshape(2, 4)
    assert stats["tokens_per_expert"].dtype == np.int64
    np.testing.assert_array_equal(per_layer.sum(axis=1) + stats["dropped_tokens"], [2 * tokens] * 2)
    assert 0 <= float(stats["router_entropy"]) <= math.log(4)
    again = model.round_stats()
    assert again["tokens_per_expert"].sum() == 0 and again["dropped_tokens"].sum() == 0


def test_train_client_returns_the_clients_routing_stats():
    pop = ZipfTextPopulation(num_clients=5, seed=1, vocab_size=50, seq_len=8, topic_vocab=10)
    data = pop.client_data(2)
    model = _small()
    params = _params(model)
    evaluate(model, params, data, 50)  # stale stats from an evaluation are discarded
    update = train_client(model, params, data, LocalTraining(2, 4, 0.1), np.random.default_rng(0))
    routed = update.stats["tokens_per_expert"].sum() + update.stats["dropped_tokens"].sum()
    assert routed == 2 * 2 * 2 * data.y.size  # epochs x layers x top_k assignments per token
    twin = _small(dense=True)
    dense = train_client(twin, _params(twin), data, LocalTraining(), np.random.default_rng(0))
    assert dense.stats == {}


def test_dense_twin_has_the_same_active_parameters_per_token():
    for kwargs in ({}, {"top_k": 1}, {"num_experts": 8, "top_k": 3, "num_layers": 3}):
        moe, dense = _small(**kwargs), _small(dense=True, **kwargs)
        # The routers are the only difference: num_layers x d_model x num_experts weights.
        assert moe.active_parameters(count_router=False) == dense.active_parameters()
        layers, experts = kwargs.get("num_layers", 2), kwargs.get("num_experts", 4)
        assert moe.active_parameters() - dense.active_parameters() == layers * 16 * experts
        assert dense.expert_parameters() == [] and dense.round_stats() == {}
    # The defaults: d_model 64, 2 layers, 8 experts of width 128, top-2, V = 10,000.
    moe = MoETransformerLM(20, 10_000)
    dense = MoETransformerLM(20, 10_000, dense=True)
    assert sum(p.numel() for p in moe.parameters()) == 949_776
    assert moe.active_parameters(count_router=False) == dense.active_parameters() == 750_608


@pytest.mark.parametrize("dense", [False, True])
def test_local_training_on_zipf_text_reduces_the_loss(dense):
    pop = ZipfTextPopulation(
        num_clients=5,
        seed=3,
        vocab_size=100,
        seq_len=8,
        topic_vocab=20,
        median_sequences=30,
        sigma_sequences=0.0,
    )
    data = pop.client_data(1)
    model = MoETransformerLM(
        8, 100, d_model=16, num_heads=2, num_experts=4, expert_hidden=8, dense=dense
    )
    params = _params(model, 5)
    update = train_client(model, params, data, LocalTraining(5, 10, 0.5), np.random.default_rng(1))
    before = evaluate(model, params, data, 100).metrics()["eval/loss"]
    after = evaluate(model, params + torch.from_numpy(update.delta), data, 100).metrics()
    assert after["eval/loss"] < before - 0.25


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("num_features", {"num_features": 0}),
        ("num_classes", {"num_classes": 1}),
        ("d_model", {"d_model": 10, "num_heads": 4}),
        ("num_layers", {"num_layers": 0}),
        ("num_experts", {"num_experts": 0}),
        ("top_k", {"top_k": 9}),
        ("top_k", {"top_k": 0}),
        ("capacity_factor", {"capacity_factor": 0.0}),
        ("expert_hidden", {"expert_hidden": 0}),
        ("aux_loss_weight", {"aux_loss_weight": -1.0}),
    ],
)
def test_invalid_sizes_raise_config_error(key, kwargs):
    with pytest.raises(ConfigError) as info:
        MoETransformerLM(**{"num_features": 8, "num_classes": 20, **kwargs})
    assert info.value.key == key
