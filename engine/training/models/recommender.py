"""Matrix factorisation trained with Federated Reconstruction (Singhal et al., NeurIPS 2021).

The model is partitioned into global parameters, which the server aggregates, and local ones,
which never leave the client. Global: the item table, item biases and a rating-level head, all
`nn.Parameter`s, so they are exactly what `flatten` sends and what a client's delta holds. Local:
the user's embedding and bias, a plain tensor attribute (not a parameter, not a buffer, not in
`state_dict`), rebuilt from scratch for every client and never sent anywhere.

The protocol, driven by the hooks that `engine.training.client` calls:
    1. `begin_client(x, y)` (once per client, with all of its ratings) splits them into a
       support split (the first `support_fraction` of them, in the population's random order)
       and a query split (the rest), and reconstructs the user vector on the support split by
       `reconstruction_steps` steps of gradient descent from zero, the global parameters frozen.
    2. `loss(x, y)` is the training loss of the global parameters, the user vector frozen: the
       mean cross-entropy over the batch's query examples (support examples weigh 0).
    3. Evaluation reconstructs the same way, then should score only the query examples
       (`query_mask`, also offered as the `eval_mask` hook): the support ratings fitted the user.
Splits are told apart by item id: a user rates an item at most once.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from common.errors import require
from engine.population import InputKind, Inputs
from engine.training.models.params import init_parameters


class ReconstructionMF(nn.Module):
    """Rating-level classifier on a matrix factorisation, with reconstructed user embeddings.

    For user u (local vector [p_u, b_u]) and item i, the score is
    s = <p_u, q_i> + b_u + c_i and the logits of rating level k = 0..K-1 are
    (k - (K - 1) / 2 + w_k) * s + a_k: an ordinal "stereotype" head, one score per user-item
    pair read out per level, whose fixed slopes make a higher score mean a higher rating from
    the first round (w and a are learned; a discretised Gaussian around s is representable).
    The item table and biases are row-sparse (`row_sparse_parameters`): a client's update
    touches only the rows of its query items.

    Args:
        num_features: Number of items I (injected from the population): size of the item table.
        num_classes: Number of rating levels K (injected from the population).
        rank: Embedding dimension r.
        reconstruction_steps: Gradient steps of the user reconstruction (0: a cold user, zeros).
        reconstruction_lr: Step size of the user reconstruction.
        support_fraction: Share of each client's ratings used to reconstruct its user; at least
            one rating goes to each split when a client has two or more.
        reconstruction_l2: L2 penalty on the user factor during reconstruction.

    Attributes:
        item_embedding: Global, [I, r].
        item_bias: Global, [I].
        level_weight: Global, [K].
        level_bias: Global, [K].
        user: Local, [r + 1] (factor then bias): the last reconstructed user, plain tensor.
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.ITEMS)

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        rank: int = 8,
        reconstruction_steps: int = 10,
        reconstruction_lr: float = 0.5,
        support_fraction: float = 0.5,
        reconstruction_l2: float = 0.01,
    ) -> None:
        super().__init__()
        require(num_features >= 1, "num_features", f"must be >= 1, got {num_features}")
        require(num_classes >= 2, "num_classes", f"must be >= 2, got {num_classes}")
        require(rank >= 1, "rank", f"must be >= 1, got {rank}")
        require(reconstruction_steps >= 0, "reconstruction_steps", "must be >= 0")
        require(reconstruction_lr > 0, "reconstruction_lr", "must be > 0")
        require(0 < support_fraction < 1, "support_fraction", "must be in (0, 1)")
        require(reconstruction_l2 >= 0, "reconstruction_l2", "must be >= 0")
        self.rank = rank
        self.reconstruction_steps = reconstruction_steps
        self.reconstruction_lr = reconstruction_lr
        self.support_fraction = support_fraction
        self.reconstruction_l2 = reconstruction_l2
        self.item_embedding = nn.Parameter(torch.empty(num_features, rank))
        self.item_bias = nn.Parameter(torch.empty(num_features))
        self.level_weight = nn.Parameter(torch.empty(num_classes))
        self.level_bias = nn.Parameter(torch.empty(num_classes))
        init_parameters(self, seed=0)  # runs overwrite this from their own seed
        # Local state: plain tensors, so neither `parameters()` nor `state_dict()` holds them.
        self.user = torch.zeros(rank + 1)
        self.support_items = torch.empty(0, dtype=torch.int64)

    def support_size(self, n: int) -> int:
        """How many of a client's `n` ratings reconstruct its user (the rest are its query)."""
        if n < 2:
            return 0
        return min(n - 1, max(1, math.floor(self.support_fraction * n)))

    def _logits(self, items: torch.Tensor, user: torch.Tensor, frozen: bool) -> torch.Tensor:
        weights = [self.item_embedding, self.item_bias, self.level_weight, self.level_bias]
        table, bias, level_weight, level_bias = (w.detach() if frozen else w for w in weights)
        score = table[items] @ user[: self.rank] + user[self.rank] + bias[items]
        slope = torch.arange(len(level_weight), device=score.device) - (len(level_weight) - 1) / 2
        return score[:, None] * (slope + level_weight) + level_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rating-level logits [n, K] of items `x` (ids, any integer or float dtype) for `user`."""
        return self._logits(_items(x), self.user.to(self.level_bias.device), frozen=False)

    def begin_client(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> None:
        """Reconstructs the user from scratch on the support split of one client's ratings.

        Deterministic: the split is positional and the descent starts from zero. The global
        parameters are frozen (detached); the result is stored in `user`, detached too.

        Args:
            x: All of the client's item ids [n].
            y: All of its rating levels [n].
        """
        items, levels = _items(x), torch.as_tensor(y).long().reshape(-1)
        device = self.level_bias.device
        support = self.support_size(len(items))
        self.support_items = items[:support].to(device)
        sx, sy = self.support_items, levels[:support].to(device)
        user = torch.zeros(self.rank + 1, device=device)
        if support == 0:
            self.user = user
            return
        with torch.enable_grad():
            for _ in range(self.reconstruction_steps):
                user.requires_grad_(True)
                loss = F.cross_entropy(self._logits(sx, user, frozen=True), sy)
                loss = loss + 0.5 * self.reconstruction_l2 * user[: self.rank].square().sum()
                (grad,) = torch.autograd.grad(loss, user)
                user = (user - self.reconstruction_lr * grad).detach()
        self.user = user.detach()

    def query_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Which of items `x` (bool [n]) are not in the current user's support split."""
        items = _items(x)
        return ~torch.isin(items, self.support_items.to(items.device))

    eval_mask = query_mask  # the rows that evaluation should score (the support fitted the user)

    def row_sparse_parameters(self) -> tuple[str, ...]:
        """The item table and biases: a client's update touches only its query items' rows."""
        return ("item_embedding", "item_bias")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch's query examples (0 if it has none), user frozen."""
        per_example = F.cross_entropy(self(x), torch.as_tensor(y).long(), reduction="none")
        weight = self.query_mask(x).to(per_example.dtype)
        return (per_example * weight).sum() / weight.sum().clamp(min=1.0)


def _items(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Item ids as int64 [n], from ids of any dtype and shape [n] or [n, 1]."""
    return torch.as_tensor(x).reshape(-1).long()
