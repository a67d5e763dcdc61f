"""engine/training/models/lm.py: the Gboard-style CIFG next-word model and its sampled softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from common.errors import ConfigError
from engine.population import ZipfTextPopulation
from engine.training import (
    LocalTraining,
    NextWordLM,
    evaluate,
    flatten,
    init_parameters,
    train_client,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _params(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    init_parameters(model, seed)
    return torch.from_numpy(flatten(model))


def _tokens(vocab: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, vocab, shape))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_gboard_size_parameter_count_and_flat_order():
    # V x E embedding (tied), CIFG gates [3H, E + E] + [3H], projection [E, H], output bias [V]:
    # 960,000 + 230,400 + 1,200 + 38,400 + 10,000 = 1,240,000; the paper's 670 units give
    # 960,000 + 385,920 + 2,010 + 64,320 + 10,000 = 1,422,250 (Hard et al. 2018: "1.4M").
    assert _count(NextWordLM(num_features=20, num_classes=10_000, hidden=670)) == 1_422_250
    model = NextWordLM(num_features=20, num_classes=10_000)
    assert _count(model) == 1_240_000
    assert [(name, tuple(p.shape)) for name, p in model.named_parameters()] == [
        ("embedding.weight", (10_000, 96)),
        ("cell.gates.weight", (1200, 192)),
        ("cell.gates.bias", (1200,)),
        ("cell.proj.weight", (96, 400)),
        ("output.bias", (10_000,)),
    ]


def test_output_layer_is_tied_to_the_input_embedding():
    model = NextWordLM(5, 30, embedding_dim=4, hidden=6)
    init_parameters(model, 1)
    vocab_sized = [p for p in model.parameters() if p.dim() == 2 and p.shape[0] == 30]
    assert len(vocab_sized) == 1 and vocab_sized[0] is model.embedding.weight
    x = _tokens(30, (3, 5))
    features = model.features(x)
    expected = features @ model.embedding.weight.T + model.output.bias
    torch.testing.assert_close(model(x), expected)
    # A row of the embedding that no input uses still moves its own output logit.
    unused = int(np.setdiff1d(np.arange(30), x.numpy())[0])
    with torch.no_grad():
        before = model(x)[..., unused].clone()
        model.embedding.weight[unused] += 1.0
        after = model(x)
    assert not torch.allclose(after[..., unused], before)
    others = [t for t in range(30) if t != unused]
    torch.testing.assert_close(after[..., others], model(x)[..., others])


def test_cifg_cell_matches_the_equations_in_numpy():
    model = NextWordLM(3, 11, embedding_dim=4, hidden=5)
    init_parameters(model, 7)
    x = _tokens(11, (2, 3), seed=3)
    w = model.cell.gates.weight.detach().double().numpy()
    b = model.cell.gates.bias.detach().double().numpy()
    p = model.cell.proj.weight.detach().double().numpy()
    emb = model.embedding.weight.detach().double().numpy()
    r, c = np.zeros((2, 4)), np.zeros((2, 5))
    outputs = []
    for t in range(3):
        z = np.concatenate([emb[x[:, t].numpy()], r], axis=1) @ w.T + b
        f, g, o = np.split(z, 3, axis=1)
        c = _sigmoid(f) * c + (1 - _sigmoid(f)) * np.tanh(g)
        r = (_sigmoid(o) * np.tanh(c)) @ p.T
        outputs.append(r)
    np.testing.assert_allclose(
        model.features(x).detach().numpy(), np.stack(outputs, axis=1), rtol=1e-5, atol=1e-6
    )


def test_full_softmax_loss_is_cross_entropy_of_the_flattened_logits():
    model = NextWordLM(6, 40, embedding_dim=8, hidden=12)
    init_parameters(model, 2)
    x, y = _tokens(40, (4, 6), 1), _tokens(40, (4, 6), 2)
    expected = F.cross_entropy(model(x).reshape(-1, 40), y.reshape(-1))
    torch.testing.assert_close(model.loss(x, y), expected)


def test_sampled_candidates_are_the_batch_tokens_plus_seeded_negatives():
    model = NextWordLM(6, 500, embedding_dim=8, hidden=12, sampled_softmax=20)
    x, y = _tokens(500, (4, 6), 1), _tokens(500, (4, 6), 2)
    candidates = model.sampled_candidates(x, y)
    batch = np.union1d(x.numpy(), y.numpy())
    assert np.all(np.isin(batch, candidates.numpy()))
    assert len(batch) < len(candidates) <= len(batch) + 20
    assert torch.equal(candidates, torch.sort(candidates).values)
    # Deterministic, and a function of the batch's multiset of tokens only.
    order = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(model.sampled_candidates(x[order], y[order]), candidates)
    other = model.sampled_candidates(x, (y + 1) % 500)
    assert not torch.equal(other, candidates)


def test_sampled_softmax_over_the_whole_vocabulary_is_the_full_softmax():
    model = NextWordLM(5, 25, embedding_dim=6, hidden=8, sampled_softmax=2000)
    init_parameters(model, 4)
    x, y = _tokens(25, (3, 5), 5), _tokens(25, (3, 5), 6)
    assert torch.equal(model.sampled_candidates(x, y), torch.arange(25))
    full = F.cross_entropy(model(x).reshape(-1, 25), y.reshape(-1))
    torch.testing.assert_close(model.loss(x, y), full)


def _embedding_rows_changed(model: NextWordLM, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vocab, dim = model.embedding.weight.shape
    rows = delta[: vocab * dim].reshape(vocab, dim)
    bias = delta[-vocab:]
    return np.flatnonzero(np.any(rows != 0, axis=1)), np.flatnonzero(bias != 0)


def test_sampled_softmax_training_touches_only_the_candidate_rows():
    vocab = 400
    pop = ZipfTextPopulation(
        num_clients=10, seed=2, vocab_size=vocab, seq_len=6, topic_vocab=50, median_sequences=12
    )
    data = pop.client_data(1)
    model = NextWordLM(6, vocab, embedding_dim=8, hidden=16, sampled_softmax=30)
    params = _params(model)
    training = LocalTraining(epochs=2, batch_size=5, lr=0.5)
    update = train_client(model, params, data, training, np.random.default_rng(9))
    # The batches that the client's shuffling makes, and their candidates.
    replay = np.random.default_rng(9)
    expected: set[int] = set()
    for _ in range(training.epochs):
        order = replay.permutation(len(data))
        for start in range(0, len(data), training.batch_size):
            batch = order[start : start + training.batch_size]
            x, y = torch.from_numpy(data.x[batch]), torch.from_numpy(data.y[batch])
            expected.update(model.sampled_candidates(x, y).tolist())
    rows, bias = _embedding_rows_changed(model, update.delta)
    assert set(rows.tolist()) <= expected
    assert set(bias.tolist()) <= expected
    assert set(np.union1d(data.x, data.y).tolist()) <= set(rows.tolist())
    assert len(expected) < vocab // 2  # sparse: most rows are untouched
    # The full softmax moves every output row.
    full = NextWordLM(6, vocab, embedding_dim=8, hidden=16)
    dense = train_client(full, params, data, training, np.random.default_rng(9))
    rows, bias = _embedding_rows_changed(full, dense.delta)
    assert len(rows) == vocab and len(bias) == vocab


def test_row_sparse_parameters_name_the_vocabulary_rows():
    model = NextWordLM(4, 50, embedding_dim=3, hidden=5, sampled_softmax=8)
    named = dict(model.named_parameters())
    names = model.row_sparse_parameters()
    assert names == ("embedding.weight", "output.bias")
    assert all(named[name].shape[0] == 50 for name in names)


def test_local_training_on_zipf_text_reduces_the_loss():
    pop = ZipfTextPopulation(
        num_clients=20,
        seed=1,
        vocab_size=200,
        seq_len=10,
        topic_vocab=40,
        median_sequences=30,
        sigma_sequences=0.0,
    )
    data = pop.client_data(3)
    for sampled in (None, 20):
        model = NextWordLM(10, 200, embedding_dim=16, hidden=32, sampled_softmax=sampled)
        params = _params(model, 3)
        training = LocalTraining(epochs=5, batch_size=10, lr=3.0)
        update = train_client(model, params, data, training, np.random.default_rng(0))
        before = evaluate(model, params, data, 200).metrics()
        after = evaluate(model, params + torch.from_numpy(update.delta), data, 200).metrics()
        assert after["eval/loss"] < before["eval/loss"] - 0.25
        assert after["eval/perplexity"] < before["eval/perplexity"]


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("num_features", {"num_features": 0}),
        ("num_classes", {"num_classes": 1}),
        ("embedding_dim", {"embedding_dim": 0}),
        ("hidden", {"hidden": 0}),
        ("sampled_softmax", {"sampled_softmax": -1}),
    ],
)
def test_invalid_sizes_raise_config_error(key, kwargs):
    args = {"num_features": 5, "num_classes": 10, **kwargs}
    with pytest.raises(ConfigError) as info:
        NextWordLM(**args)
    assert info.value.key == key
