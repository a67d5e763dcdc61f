"""Small on-device classifiers."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from common.errors import require
from engine.population import InputKind, Inputs


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer producing class logits.

    Args:
        num_features: Input dimension.
        num_classes: Number of classes.
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.FEATURES)

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of flat inputs."""
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Two-layer perceptron with a ReLU hidden layer.

    Args:
        num_features: Input dimension.
        num_classes: Number of classes.
        hidden: Width of the hidden layer.
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.FEATURES)

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = nn.Linear(num_features, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of flat inputs."""
        return self.out(torch.relu(self.hidden(x.flatten(1))))


class CNN(nn.Module):
    """A small on-device CNN for 28 x 28 grey images (FEMNIST-sized): 104,646 parameters.

    conv 5x5 (1 -> 16) -> ReLU -> max-pool 2 -> conv 5x5 (16 -> 32) -> ReLU -> max-pool 2 ->
    dense 1568 -> 56 -> ReLU -> dense 56 -> num_classes (62 for FEMNIST). Inputs may come flat
    ([n, 784]) or as images ([n, 28, 28] or [n, 1, 28, 28]).

    Args:
        num_features: Input values per example; must be 784 (28 x 28).
        num_classes: Number of classes.
        hidden: Width of the dense hidden layer.
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.FEATURES, num_features=28 * 28)

    def __init__(self, num_features: int, num_classes: int, hidden: int = 56) -> None:
        super().__init__()
        require(num_features == 784, "num_features", f"must be 784 (28 x 28), got {num_features}")
        require(hidden >= 1, "hidden", f"must be >= 1, got {hidden}")
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.hidden = nn.Linear(32 * 7 * 7, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of 28 x 28 inputs."""
        h = x.reshape(-1, 1, 28, 28)
        h = F.max_pool2d(torch.relu(self.conv1(h)), 2)
        h = F.max_pool2d(torch.relu(self.conv2(h)), 2)
        return self.out(torch.relu(self.hidden(h.flatten(1))))
