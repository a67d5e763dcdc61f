"""What one virtual client does: local SGD on its own data, and evaluation of a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from engine.errors import require
from engine.models import assign_flat
from engine.population import ClientData


@dataclass(frozen=True)
class LocalTraining:
    """Local SGD run by every client on its own examples.

    Attributes:
        epochs: Passes over the client's examples.
        batch_size: Examples per step; the last batch of an epoch may be smaller.
        lr: Client learning rate.
    """

    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.1

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass(frozen=True)
class ClientUpdate:
    """A client's result: its model delta and its training statistics.

    Attributes:
        delta: Trained minus received parameters, float32 [d].
        num_examples: The client's example count.
        loss_sum: Sum over local steps of (mean batch loss x batch size).
        examples_seen: Sum of the batch sizes (epochs x num_examples).
    """

    delta: np.ndarray
    num_examples: int
    loss_sum: float
    examples_seen: int


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
    assign_flat(model, params)
    weights: list[torch.Tensor] = list(model.parameters())
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    loss_sum = 0.0
    for _ in range(training.epochs):
        order = torch.from_numpy(rng.permutation(len(data)))
        for batch in order.split(training.batch_size):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            grads = torch.autograd.grad(loss, weights)
            with torch.no_grad():
                torch._foreach_add_(weights, grads, alpha=-training.lr)
            loss_sum += loss.item() * len(batch)
    with torch.no_grad():
        delta = nn.utils.parameters_to_vector(weights) - params
    return ClientUpdate(
        delta=delta.numpy(),
        num_examples=len(data),
        loss_sum=loss_sum,
        examples_seen=training.epochs * len(data),
    )


@dataclass
class EvalStats:
    """Summed evaluation statistics over some clients; `merge` adds two in place.

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
        """Accuracy, mean loss and the accuracy of always predicting the most common label."""
        count = max(self.count, 1)
        return {
            "eval/accuracy": self.correct / count,
            "eval/loss": self.loss_sum / count,
            "eval/majority_class_rate": float(self.label_counts.max()) / count,
        }


def evaluate(
    model: nn.Module, params: torch.Tensor, data: ClientData, num_classes: int
) -> EvalStats:
    """Evaluates `params` on `data` (all of a set of clients' examples concatenated)."""
    assign_flat(model, params)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x))
        labels = torch.from_numpy(data.y)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.argmax(dim=1) == labels).sum()
    return EvalStats(
        loss_sum=float(loss),
        correct=int(correct),
        count=len(data),
        label_counts=np.bincount(data.y, minlength=num_classes).astype(np.int64),
    )
