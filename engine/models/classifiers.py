"""Small on-device classifiers."""

from __future__ import annotations

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer producing class logits.

    Args:
        num_features: Input dimension.
        num_classes: Number of classes.
    """

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

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = nn.Linear(num_features, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of flat inputs."""
        return self.out(torch.relu(self.hidden(x.flatten(1))))
