"""What one virtual client does: local SGD on its own data, and evaluation of a model.

Data: `ClientData.x` holds float32 features [n, ...] for classifiers, or int64 token ids
[n, seq] for language models, whose `y` holds the int64 next tokens [n, seq]. Logits of shape
[n, ..., num_classes] are flattened to [-1, num_classes] and targets to [-1], so a sequence
model is trained and evaluated per token; a classifier's [n, num_classes] logits are unchanged.

Optional model hooks, duck-typed (see `engine.training.models`): `loss(x, y)` replaces the default
cross-entropy during training, `begin_client(x, y)` is called once per client after the global
parameters are loaded (before training, and before evaluating that client), and `round_stats()`
returns per-client statistics accumulated during training, returned in `ClientUpdate.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from common.errors import require
from engine.population import ClientData
from engine.training.models import assign_flat

# Evaluation runs in slices of examples whose logits hold at most this many values.
_EVAL_LOGITS = 1 << 22


@dataclass(frozen=True)
class LocalTraining:
    """Local SGD run by every client on its own examples.

    Attributes:
        epochs: Passes over the client's examples.
        batch_size: Examples per step; the last batch of an epoch may be smaller.
        lr: Client learning rate.
        momentum: Heavy-ball momentum m of local SGD (v = m v + g; w -= lr v); 0 for plain SGD.
        vectorise: "on" trains a worker's clients as batched computations
            (`engine.training.vectorised`), "off" loops over clients, "auto" vectorises a model that
            supports it where that is faster (`engine.training.vectorised.prefers_vectorised`: on a
            GPU, and on a CPU for models without convolutions).
        vectorise_memory_mb: Memory budget of one vectorised group of clients.
        vectorise_steps: Local steps of each client that the vectorised path batches; a
            client's later steps (the heavy tail of client sizes, where few clients are left to
            batch with) run one client at a time. None: 8 on a CPU (where a batched step costs
            about as much as three looped ones), every step on a GPU.
    """

    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.1
    momentum: float = 0.0
    vectorise: str = "auto"
    vectorise_memory_mb: float = 256.0
    vectorise_steps: int | None = None

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        modes = ("auto", "on", "off")
        require(self.vectorise in modes, "vectorise", f"must be one of {modes}")
        require(self.vectorise_memory_mb > 0, "vectorise_memory_mb", "must be > 0")
        steps = self.vectorise_steps
        require(steps is None or steps >= 0, "vectorise_steps", "must be >= 0 or null")


@dataclass(frozen=True)
class ClientUpdate:
    """A client's result: its model delta and its training statistics.

    An example is a row of the client's data: one sequence for a language model.

    Attributes:
        delta: Trained minus received parameters, float32 [d].
        num_examples: The client's example count.
        loss_sum: Sum over local steps of (mean batch loss x batch size).
        examples_seen: Sum of the batch sizes (epochs x num_examples).
        stats: The model's `round_stats()` for this client's training (e.g. tokens per expert);
            empty for models without the hook.
    """

    delta: np.ndarray
    num_examples: int
    loss_sum: float
    examples_seen: int
    stats: dict[str, np.ndarray] = field(default_factory=dict)


def flat_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of logits [..., C] against targets [...], over all positions."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction
    )


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The model's `loss(x, y)` hook if it has one, else the mean cross-entropy of its logits."""
    hook = getattr(model, "loss", None)
    if callable(hook):
        loss: torch.Tensor = hook(x, y)
        return loss
    return flat_cross_entropy(model(x), y)


def begin_client(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Calls the model's `begin_client(x, y)` hook, if it has one."""
    hook = getattr(model, "begin_client", None)
    if callable(hook):
        hook(x, y)


def round_stats(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's `round_stats()` (which resets them), or {} for a model without the hook."""
    hook = getattr(model, "round_stats", None)
    return dict(hook()) if callable(hook) else {}


def train_client(
    model: nn.Module,
    params: torch.Tensor,
    data: ClientData,
    training: LocalTraining,
    rng: np.random.Generator,
) -> ClientUpdate:
    """Runs local SGD from `params` and returns the client's delta.

    Args:
        model: Scratch module of the right architecture; its parameters are overwritten.
        params: Flat float32 starting point, left unchanged.
        data: The client's examples.
        training: Local SGD settings.
        rng: The client's stream for this round: it decides the shuffling.
    """
    device = next(model.parameters()).device  # a worker with a GPU keeps its model there
    params = params.to(device)
    assign_flat(model, params)
    x, y = torch.from_numpy(data.x).to(device), torch.from_numpy(data.y).to(device)
    begin_client(model, x, y)
    round_stats(model)  # discards what earlier calls (e.g. an evaluation) accumulated
    batches = (torch.from_numpy(b) for b in client_batches(len(data), training, rng))
    loss_sum = sgd_steps(model, x, y, batches, training, {})
    with torch.no_grad():
        delta = nn.utils.parameters_to_vector(model.parameters()) - params
    return ClientUpdate(
        delta=delta.cpu().numpy(),
        num_examples=len(data),
        loss_sum=loss_sum,
        examples_seen=training.epochs * len(data),
        stats=round_stats(model),
    )


def client_batches(
    size: int, training: LocalTraining, rng: np.random.Generator
) -> list[np.ndarray]:
    """One client's batches: per epoch a permutation of its examples, split into `batch_size`.

    The per-client loop and the vectorised path both take these; an empty client has none.
    """
    batches: list[np.ndarray] = []
    for _ in range(training.epochs):
        order = rng.permutation(size)
        batches.extend(np.split(order, range(training.batch_size, size, training.batch_size)))
    return [b for b in batches if len(b)]


def sgd_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: Iterable[torch.Tensor],
    training: LocalTraining,
    velocity: dict[int, torch.Tensor],
) -> float:
    """Local SGD (with momentum) of `model`'s parameters, in place; returns the loss sum.

    Args:
        model: The model, holding the client's current weights.
        x: The client's inputs.
        y: The client's targets.
        batches: Index tensors into x, y, one per step.
        training: Learning rate and momentum.
        velocity: Momentum buffers by parameter position, updated in place (empty at the start).
    """
    weights: list[torch.Tensor] = list(model.parameters())
    loss_sum = 0.0
    for batch in batches:
        loss = training_loss(model, x[batch], y[batch])
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        used = [(i, g) for i, g in enumerate(grads) if g is not None]
        if training.momentum:
            for i, g in used:
                velocity[i] = velocity[i] * training.momentum + g if i in velocity else g
            used = [(i, velocity[i]) for i, _ in used]
        with torch.no_grad():
            steps = [g for _, g in used]
            torch._foreach_add_([weights[i] for i, _ in used], steps, alpha=-training.lr)
        loss_sum += loss.item() * len(batch)
    return loss_sum


@dataclass
class EvalStats:
    """Summed evaluation statistics over some clients; `merge` adds two in place.

    For a language model every target token counts as one example.

    Attributes:
        loss_sum: Sum of per-example cross-entropy.
        correct: Correct top-1 predictions.
        count: Examples evaluated.
        label_counts: Examples per label, int64 [num_classes].
    """

    loss_sum: float
    correct: int
    count: int
    label_counts: np.ndarray

    def merge(self, other: EvalStats) -> None:
        """Adds `other` into this."""
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.count += other.count
        self.label_counts = self.label_counts + other.label_counts

    def metrics(self) -> dict[str, float]:
        """Accuracy, mean loss, perplexity exp(mean loss), and the majority-label rate."""
        count = max(self.count, 1)
        mean_loss = self.loss_sum / count
        return {
            "eval/accuracy": self.correct / count,
            "eval/loss": mean_loss,
            "eval/perplexity": math.exp(mean_loss) if mean_loss < 700 else math.inf,
            "eval/majority_class_rate": float(self.label_counts.max()) / count,
        }


def evaluate(
    model: nn.Module, params: torch.Tensor, data: ClientData, num_classes: int
) -> EvalStats:
    """Evaluates `params` on `data` with the full-softmax cross-entropy of the model's logits.

    The model's `begin_client` hook sees `data` as one client: use `evaluate_clients` to
    evaluate several clients of a model that rebuilds per-client state. Examples are evaluated
    in slices, so that a large vocabulary's logits never take more than ~16 MB.
    """
    device = next(model.parameters()).device
    assign_flat(model, params.to(device))
    x, y = torch.from_numpy(data.x).to(device), torch.from_numpy(data.y).to(device)
    begin_client(model, x, y)  # with gradients on: a reconstruction may train local state
    eval_mask = getattr(model, "eval_mask", None)
    if eval_mask is not None:  # e.g. Federated Reconstruction scores the query split only
        keep = eval_mask(x)
        x, y = x[keep], y[keep]
    loss, correct = 0.0, 0
    with torch.no_grad():
        per_row = max(1, int(np.prod(y.shape[1:])) * num_classes)
        for rows in torch.arange(len(y)).split(max(1, _EVAL_LOGITS // per_row)):
            logits = model(x[rows])
            flat = logits.reshape(-1, logits.shape[-1])
            labels = y[rows].reshape(-1)
            loss += float(F.cross_entropy(flat, labels, reduction="sum"))
            correct += int((flat.argmax(dim=1) == labels).sum())
    return EvalStats(
        loss_sum=loss,
        correct=correct,
        count=int(y.numel()),
        label_counts=np.bincount(y.cpu().numpy().ravel(), minlength=num_classes).astype(np.int64),
    )


def evaluate_clients(
    model: nn.Module, params: torch.Tensor, clients: Sequence[ClientData], num_classes: int
) -> EvalStats:
    """Evaluates `params` on each client separately (each after `begin_client`), summed."""
    total = EvalStats(0.0, 0, 0, np.zeros(num_classes, np.int64))
    for data in clients:
        total.merge(evaluate(model, params, data, num_classes))
    return total
