"""Parameters as one flat float32 vector: how weights travel and how updates are summed."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def flatten(model: nn.Module) -> np.ndarray:
    """Returns a copy of the model's parameters as one float32 vector, in `parameters()` order."""
    with torch.no_grad():
        return nn.utils.parameters_to_vector(model.parameters()).cpu().numpy().astype(np.float32)


def assign_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copies a flat vector (as made by `flatten`) into the model's parameters.

    Unlike `torch.nn.utils.vector_to_parameters`, the parameters do not become views of `flat`:
    training the model leaves `flat` unchanged.
    """
    expected = sum(param.numel() for param in model.parameters())
    if flat.numel() != expected:
        raise ValueError(f"flat vector has {flat.numel()} values, the model has {expected}")
    offset = 0
    with torch.no_grad():
        for param in model.parameters():
            size = param.numel()
            param.copy_(flat[offset : offset + size].view_as(param))
            offset += size


def init_parameters(model: nn.Module, seed: int) -> None:
    """Initialises every parameter from `seed` alone, without touching torch's global RNG.

    Each tensor is drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for linear
    layers, where fan_in is the size of a weight's trailing dimensions (the bias uses its
    layer's weight's fan-in).
    """
    generator = torch.Generator().manual_seed(seed)
    fan_in = 1
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                fan_in = math.prod(param.shape[1:])
            bound = 1.0 / math.sqrt(fan_in)
            param.uniform_(-bound, bound, generator=generator)
