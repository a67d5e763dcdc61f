"""engine/training/client.py: local SGD on one client's data, and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.training.client as client_module
from common.errors import ConfigError
from engine.population import ClientData, SyntheticPopulation
from engine.training import (
    MLP,
    ClientUpdate,
    EvalStats,
    LocalTraining,
    LogisticRegression,
    evaluate,
    evaluate_clients,
    flatten,
    init_parameters,
    train_client,
)

D, C = 12, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _population() -> SyntheticPopulation:
    return SyntheticPopulation(
        num_clients=100,
        seed=1,
        num_features=D,
        num_classes=C,
        median_examples=40,
        max_examples=80,
    )


def _params(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    init_parameters(model, seed)
    return torch.from_numpy(flatten(model))


# -- an independent numpy reference for multinomial logistic regression -----------------------


def _split(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # nn.Linear holds weight [C, D] (row-major) then bias [C].
    flat = flat.astype(np.float64)
    return flat[: C * D].reshape(C, D), flat[C * D :]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _loss_and_grad(flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of a linear model and its gradient, by hand."""
    w, b = _split(flat)
    x = x.astype(np.float64)
    probs = _softmax(x @ w.T + b)
    onehot = np.eye(C)[y]
    loss = float(-np.log(probs[np.arange(len(y)), y]).mean())
    g = (probs - onehot) / len(y)
    return loss, np.concatenate([(g.T @ x).ravel(), g.sum(axis=0)])


# -- train_client ------------------------------------------------------------------------------


def test_single_full_batch_step_is_minus_lr_times_the_gradient():
    data = _population().client_data(3)
    model = LogisticRegression(D, C)
    params = _params(model, seed=5)
    lr = 0.3
    training = LocalTraining(epochs=1, batch_size=len(data) + 7, lr=lr)
    update = train_client(model, params, data, training, np.random.default_rng(0))
    loss, grad = _loss_and_grad(params.numpy(), data.x, data.y)
    np.testing.assert_allclose(update.delta, -lr * grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(update.loss_sum, loss * len(data), rtol=1e-5)
    assert update.num_examples == len(data)
    assert update.examples_seen == len(data)


def test_full_batch_epochs_are_successive_gradient_steps():
    data = _population().client_data(8)
    model = LogisticRegression(D, C)
    params = _params(model, seed=2)
    lr, epochs = 0.5, 3
    training = LocalTraining(epochs=epochs, batch_size=len(data), lr=lr)
    update = train_client(model, params, data, training, np.random.default_rng(1))
    w = params.numpy().astype(np.float64)
    losses = 0.0
    for _ in range(epochs):
        loss, grad = _loss_and_grad(w, data.x, data.y)
        losses += loss * len(data)
        w = w - lr * grad
    np.testing.assert_allclose(update.delta, w - params.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(update.loss_sum, losses, rtol=1e-5)
    assert update.examples_seen == epochs * len(data)


@pytest.mark.parametrize("make_model", [lambda: LogisticRegression(D, C), lambda: MLP(D, C, 16)])
def test_train_client_basic_properties(make_model):
    data = _population().client_data(0)
    model = make_model()
    params = _params(model)
    before = params.clone()
    training = LocalTraining(epochs=2, batch_size=8, lr=0.1)
    update = train_client(model, params, data, training, np.random.default_rng(42))
    assert isinstance(update, ClientUpdate)
    assert update.delta.dtype == np.float32
    assert update.delta.shape == (params.numel(),)
    assert np.all(np.isfinite(update.delta))
    assert np.linalg.norm(update.delta) > 0
    torch.testing.assert_close(params, before, rtol=0, atol=0)  # the input is left unchanged
    assert update.num_examples == len(data)
    assert update.examples_seen == 2 * len(data)
    assert update.loss_sum > 0
    # The same rng seed gives the same update, whatever the scratch model held before.
    other = make_model()
    init_parameters(other, 999)
    again = train_client(other, params, data, training, np.random.default_rng(42))
    np.testing.assert_array_equal(update.delta, again.delta)
    assert update.loss_sum == again.loss_sum
    # A different shuffling gives a different update (batches smaller than the data).
    shuffled = train_client(model, params, data, training, np.random.default_rng(43))
    assert not np.array_equal(update.delta, shuffled.delta)


@given(epochs=st.integers(1, 3), batch_size=st.integers(1, 50), client=st.integers(0, 99))
@settings(max_examples=10, deadline=None)
def test_examples_seen_is_epochs_times_n(epochs, batch_size, client):
    data = _population().client_data(client)
    model = LogisticRegression(D, C)
    update = train_client(
        model,
        _params(model),
        data,
        LocalTraining(epochs=epochs, batch_size=batch_size, lr=0.05),
        np.random.default_rng(client),
    )
    assert update.examples_seen == epochs * len(data)
    assert update.num_examples == len(data)


def test_training_reduces_the_loss_on_the_clients_own_data():
    pop = _population()
    model = LogisticRegression(D, C)
    params = _params(model)
    for client in range(5):
        data = pop.client_data(client)
        update = train_client(
            model,
            params,
            data,
            LocalTraining(epochs=5, batch_size=10, lr=0.1),
            np.random.default_rng(client),
        )
        before = evaluate(model, params, data, C).metrics()["eval/loss"]
        after = evaluate(model, params + torch.from_numpy(update.delta), data, C).metrics()
        assert after["eval/loss"] < before


def test_tiny_learning_rate_gives_a_tiny_first_order_delta():
    data = _population().client_data(2)
    model = LogisticRegression(D, C)
    params = _params(model)
    lr, batch_size = 1e-4, 10
    big = train_client(
        model, params, data, LocalTraining(1, batch_size, 0.1), np.random.default_rng(0)
    )
    tiny = train_client(
        model, params, data, LocalTraining(1, batch_size, lr), np.random.default_rng(0)
    )
    assert 0 < np.linalg.norm(tiny.delta) < 0.01 * np.linalg.norm(big.delta)
    # To first order in lr, the delta is -lr times the sum of the batch gradients at `params`,
    # with the batches that the client's shuffling makes.
    order = np.random.default_rng(0).permutation(len(data))
    grads = sum(
        _loss_and_grad(params.numpy(), data.x[batch], data.y[batch])[1]
        for batch in np.array_split(order, range(batch_size, len(data), batch_size))
    )
    expected = -lr * np.asarray(grads)
    np.testing.assert_allclose(tiny.delta, expected, rtol=0, atol=0.02 * np.abs(expected).max())


# -- evaluate ----------------------------------------------------------------------------------


def test_evaluate_matches_numpy():
    pop = _population()
    data = ClientData(
        x=np.concatenate([pop.client_data(c).x for c in range(6)]),
        y=np.concatenate([pop.client_data(c).y for c in range(6)]),
    )
    model = LogisticRegression(D, C)
    params = _params(model, seed=4)
    stats = evaluate(model, params, data, C)
    w, b = _split(params.numpy())
    logits = data.x.astype(np.float64) @ w.T + b
    probs = _softmax(logits)
    expected_loss = -np.log(probs[np.arange(len(data)), data.y]).sum()
    assert stats.count == len(data)
    assert stats.correct == int((logits.argmax(axis=1) == data.y).sum())
    np.testing.assert_allclose(stats.loss_sum, expected_loss, rtol=1e-5)
    counts = np.array([(data.y == k).sum() for k in range(C)])
    np.testing.assert_array_equal(stats.label_counts, counts)
    assert stats.label_counts.dtype == np.int64
    assert stats.label_counts.shape == (C,)


def test_evaluate_label_counts_cover_absent_classes():
    data = ClientData(x=np.zeros((3, D), np.float32), y=np.array([0, 0, 2], np.int64))
    model = LogisticRegression(D, C)
    stats = evaluate(model, torch.zeros(C * D + C), data, C)
    np.testing.assert_array_equal(stats.label_counts, [2, 0, 1, 0])
    # Zero parameters: uniform predictions, loss log(C) per example.
    np.testing.assert_allclose(stats.loss_sum, 3 * np.log(C), rtol=1e-6)


# -- EvalStats ---------------------------------------------------------------------------------


def test_eval_stats_merge_and_metrics():
    a = EvalStats(loss_sum=3.0, correct=4, count=10, label_counts=np.array([6, 4, 0]))
    b = EvalStats(loss_sum=1.0, correct=5, count=6, label_counts=np.array([1, 2, 3]))
    b_counts = b.label_counts.copy()
    a.merge(b)
    assert (a.loss_sum, a.correct, a.count) == (4.0, 9, 16)
    np.testing.assert_array_equal(a.label_counts, [7, 6, 3])
    np.testing.assert_array_equal(b.label_counts, b_counts)
    metrics = a.metrics()
    assert metrics == pytest.approx(
        {
            "eval/accuracy": 9 / 16,
            "eval/loss": 4 / 16,
            "eval/perplexity": np.exp(4 / 16),
            "eval/majority_class_rate": 7 / 16,
        }
    )


def test_eval_stats_merge_does_not_alias_label_counts():
    counts = np.array([1, 1])
    a = EvalStats(0.0, 0, 2, counts)
    a.merge(EvalStats(0.0, 0, 2, np.array([1, 0])))
    np.testing.assert_array_equal(counts, [1, 1])


def test_eval_stats_metrics_of_nothing_do_not_divide_by_zero():
    metrics = EvalStats(0.0, 0, 0, np.zeros(3, np.int64)).metrics()
    assert metrics == {
        "eval/accuracy": 0.0,
        "eval/loss": 0.0,
        "eval/perplexity": 1.0,
        "eval/majority_class_rate": 0.0,
    }


# -- sequence models and model hooks ----------------------------------------------------------

V, L = 7, 5


class _TinyLM(torch.nn.Module):
    """Logits [n, seq, V] from an embedding and a bias: no hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(V, V)
        self.bias = torch.nn.Parameter(torch.zeros(V))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x) + self.bias


class _HookedLM(_TinyLM):
    """Records its hook calls; its training loss is twice the cross-entropy."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        self.batches = 0

    def begin_client(self, x: torch.Tensor, y: torch.Tensor) -> None:
        assert torch.is_grad_enabled()
        self.calls.append(("begin_client", len(x)))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        self.calls.append(("loss", len(x)))
        return 2 * torch.nn.functional.cross_entropy(self(x).reshape(-1, V), y.reshape(-1))

    def round_stats(self) -> dict[str, np.ndarray]:
        stats = {"batches": np.array(self.batches)}
        self.batches = 0
        self.calls.append(("round_stats", 0))
        return stats


def _sequences(n: int, seed: int = 0) -> ClientData:
    tokens = np.random.default_rng(seed).integers(0, V, (n, L + 1))
    return ClientData(x=tokens[:, :-1].copy(), y=tokens[:, 1:].copy())


def test_sequence_logits_are_trained_per_token_by_default():
    data = _sequences(6)
    model = _TinyLM()
    params = _params(model, 3)
    lr = 0.7
    update = train_client(model, params, data, LocalTraining(1, 100, lr), np.random.default_rng(0))
    # Reference: the gradient of the token-mean cross-entropy, by autograd on a fresh copy.
    reference = _TinyLM()
    torch.nn.utils.vector_to_parameters(params.clone(), reference.parameters())
    logits = reference(torch.from_numpy(data.x))
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, V), torch.from_numpy(data.y).ravel()
    )
    grad = torch.cat([g.ravel() for g in torch.autograd.grad(loss, list(reference.parameters()))])
    np.testing.assert_allclose(update.delta, -lr * grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(update.loss_sum, loss.item() * len(data), rtol=1e-6)
    assert update.num_examples == 6 and update.stats == {}


def test_hooks_are_called_once_per_client_and_stats_are_returned():
    data = _sequences(7)
    model = _HookedLM()
    params = _params(model)
    model.batches = 99  # stale statistics from before this client are discarded
    training = LocalTraining(epochs=2, batch_size=3, lr=0.1)
    update = train_client(model, params, data, training, np.random.default_rng(1))
    assert model.calls[0] == ("begin_client", 7)
    assert model.calls[1] == ("round_stats", 0)
    assert model.calls[2:-1] == [("loss", 3), ("loss", 3), ("loss", 1)] * 2
    assert model.calls[-1] == ("round_stats", 0)
    assert update.stats == {"batches": np.array(6)}
    # The hook's loss is what is trained and reported: twice the plain cross-entropy, which
    # trains like the plain one at twice the learning rate.
    doubled = LocalTraining(epochs=2, batch_size=3, lr=0.2)
    plain = train_client(_TinyLM(), params, data, doubled, np.random.default_rng(1))
    np.testing.assert_allclose(update.loss_sum, 2 * plain.loss_sum, rtol=1e-5)
    np.testing.assert_allclose(update.delta, plain.delta, rtol=1e-5, atol=1e-7)


def test_evaluate_counts_tokens_and_reports_perplexity():
    data = _sequences(4, seed=2)
    model = _HookedLM()
    params = _params(model, 1)
    stats = evaluate(model, params, data, V)
    assert model.calls == [("begin_client", 4)]  # evaluation never uses the loss hook
    logits = _TinyLM()
    torch.nn.utils.vector_to_parameters(params.clone(), logits.parameters())
    with torch.no_grad():
        flat = logits(torch.from_numpy(data.x)).reshape(-1, V)
    labels = torch.from_numpy(data.y).ravel()
    expected = torch.nn.functional.cross_entropy(flat, labels, reduction="sum")
    assert stats.count == 4 * L
    assert stats.correct == int((flat.argmax(1) == labels).sum())
    np.testing.assert_allclose(stats.loss_sum, float(expected), rtol=1e-5)
    np.testing.assert_array_equal(stats.label_counts, np.bincount(data.y.ravel(), minlength=V))
    metrics = stats.metrics()
    np.testing.assert_allclose(metrics["eval/perplexity"], np.exp(metrics["eval/loss"]))
    # Uniform predictions: perplexity is the vocabulary size.
    uniform = evaluate(_TinyLM(), torch.zeros_like(params), data, V).metrics()
    np.testing.assert_allclose(uniform["eval/perplexity"], V, rtol=1e-5)


def test_evaluate_in_slices_gives_the_same_stats(monkeypatch):
    data = _sequences(9, seed=4)
    model = _TinyLM()
    params = _params(model, 2)
    whole = evaluate(model, params, data, V)
    monkeypatch.setattr(client_module, "_EVAL_LOGITS", 2 * L * V)  # two sequences per slice
    sliced = evaluate(model, params, data, V)
    assert (sliced.correct, sliced.count) == (whole.correct, whole.count)
    np.testing.assert_allclose(sliced.loss_sum, whole.loss_sum, rtol=1e-6)


def test_evaluate_clients_begins_each_client_and_sums():
    parts = [_sequences(n, seed=n) for n in (2, 3, 1)]
    model = _HookedLM()
    params = _params(model, 5)
    total = evaluate_clients(model, params, parts, V)
    assert model.calls == [("begin_client", 2), ("begin_client", 3), ("begin_client", 1)]
    pooled = evaluate(
        _TinyLM(),
        params,
        ClientData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])),
        V,
    )
    assert (total.correct, total.count) == (pooled.correct, pooled.count)
    np.testing.assert_allclose(total.loss_sum, pooled.loss_sum, rtol=1e-6)
    np.testing.assert_array_equal(total.label_counts, pooled.label_counts)


def test_classifier_updates_carry_no_stats():
    data = _population().client_data(1)
    model = LogisticRegression(D, C)
    update = train_client(model, _params(model), data, LocalTraining(), np.random.default_rng(0))
    assert update.stats == {}


# -- LocalTraining validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("epochs", 0), ("epochs", -1), ("batch_size", 0), ("lr", 0.0), ("lr", -0.1)],
)
def test_local_training_validation(key, value):
    with pytest.raises(ConfigError) as info:
        LocalTraining(**{key: value})
    assert info.value.key == key


def test_local_training_defaults():
    assert LocalTraining() == LocalTraining(epochs=1, batch_size=10, lr=0.1)
