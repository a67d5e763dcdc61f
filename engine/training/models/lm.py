"""Gboard-style next-word prediction: a one-layer CIFG LSTM with projection, tied embeddings.

The architecture of Hard et al. 2018 ("Federated learning for mobile keyboard prediction"): an
input embedding V x 96, a coupled input-forget gate (CIFG) LSTM whose output is projected to 96
dimensions and fed back as the recurrent state (an LSTMP, Sak et al. 2014), and an output layer
tied to the input embedding: logits = proj(h) @ E^T + b. The paper's cell has 670 units (1.4M
parameters); the default here is 400, which gives the issue's "about 1.3M" and keeps the dense
core (what every client uploads whatever rows it touched) at 270k parameters.

Flat-vector order (`model.parameters()`, as `engine.training.models.flatten` lays them out):
`embedding.weight` [V, E], `cell.gates.weight` [3H, E + E], `cell.gates.bias` [3H],
`cell.proj.weight` [E, H], `output.bias` [V]. At V = 10,000 with the defaults that is
960,000 + 230,400 + 1,200 + 38,400 + 10,000 = 1,240,000 parameters (hidden = 670 gives the
paper's 1,422,250).
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from common.errors import require
from engine.population import InputKind, Inputs


class OutputBias(nn.Module):
    """The bias [V] of a tied output layer.

    A submodule, so that it comes last in `parameters()` (a module's own parameters come before
    its children's), after the weight whose fan-in `init_parameters` gives it.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))


class CIFGCell(nn.Module):
    """An LSTM cell with coupled input and forget gates (i = 1 - f) and a projected output.

    Three gate blocks instead of four: forget f, candidate g and output o, all computed by one
    linear layer from the input and the previous projected output r:
    c' = f * c + (1 - f) * tanh(g), h' = sigmoid(o) * tanh(c'), r' = P h'.

    Args:
        input_size: Input dimension.
        hidden: Cell width H.
        projection: Dimension of the projected output r (the recurrent state).
    """

    def __init__(self, input_size: int, hidden: int, projection: int) -> None:
        super().__init__()
        self.gates = nn.Linear(input_size + projection, 3 * hidden)
        self.proj = nn.Linear(hidden, projection, bias=False)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: (x [n, input], (r [n, projection], c [n, hidden])) -> (r', c')."""
        r, c = state
        f, g, o = self.gates(torch.cat([x, r], dim=-1)).chunk(3, dim=-1)
        forget = torch.sigmoid(f)
        c = forget * c + (1.0 - forget) * torch.tanh(g)
        return self.proj(torch.sigmoid(o) * torch.tanh(c)), c


class NextWordLM(nn.Module):
    """Next-word language model of Gboard scale, with an optional sampled softmax for training.

    Input token ids [n, seq] give logits [n, seq, V]: position t predicts token t + 1.

    With `sampled_softmax = k`, the training loss (the `loss` hook) is a softmax over only the
    candidate rows: the batch's distinct input and target tokens plus up to k distinct negatives
    drawn uniformly from the vocabulary by a generator seeded from the batch's multiset of tokens
    (so the same batch always draws the same negatives, on any worker). No log-Q correction is
    applied. A client's update then changes only the candidate rows of the tied embedding and of
    the output bias: see `row_sparse_parameters`. Evaluation always uses the full softmax. The
    candidates are hashed on the host, so the sampled loss runs on the per-client loop, not
    under torch.func.

    Args:
        num_features: Sequence length the model is built for (injected from the population;
            inputs of any length are accepted).
        num_classes: Vocabulary size V (injected from the population).
        embedding_dim: Embedding and projection dimension E.
        hidden: CIFG cell width H.
        sampled_softmax: Negatives per batch for the sampled training softmax; None for the
            full softmax.
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.TOKENS)

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        embedding_dim: int = 96,
        hidden: int = 400,
        sampled_softmax: int | None = None,
    ) -> None:
        super().__init__()
        require(num_features >= 1, "num_features", f"must be >= 1, got {num_features}")
        require(num_classes >= 2, "num_classes", f"must be >= 2, got {num_classes}")
        require(embedding_dim >= 1, "embedding_dim", f"must be >= 1, got {embedding_dim}")
        require(hidden >= 1, "hidden", f"must be >= 1, got {hidden}")
        require(
            sampled_softmax is None or sampled_softmax >= 0,
            "sampled_softmax",
            f"must be >= 0 or null, got {sampled_softmax}",
        )
        self.seq_len = num_features
        self.vocab_size = num_classes
        self.sampled_softmax = sampled_softmax
        self.embedding = nn.Embedding(num_classes, embedding_dim)
        self.cell = CIFGCell(embedding_dim, hidden, embedding_dim)
        self.output = OutputBias(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The projected LSTM outputs [n, seq, E] for token ids [n, seq]."""
        inputs = self.embedding(x)
        n = x.shape[0]
        r = inputs.new_zeros(n, self.cell.proj.out_features)
        c = inputs.new_zeros(n, self.cell.proj.in_features)
        outputs = []
        for t in range(x.shape[1]):
            r, c = self.cell(inputs[:, t], (r, c))
            outputs.append(r)
        return torch.stack(outputs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits [n, seq, V] for token ids [n, seq]."""
        return self.features(x) @ self.embedding.weight.T + self.output.bias

    def sampled_candidates(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Sorted distinct candidate tokens of a batch for the sampled softmax (see the class)."""
        tokens = torch.cat([x.reshape(-1), y.reshape(-1)])
        ordered = torch.sort(tokens).values.to(torch.int64).cpu().numpy().tobytes()
        seed = int.from_bytes(hashlib.blake2b(ordered, digest_size=8).digest(), "little")
        generator = torch.Generator().manual_seed(seed >> 1)
        negatives = torch.randint(
            self.vocab_size, (self.sampled_softmax or 0,), generator=generator
        )
        return torch.unique(torch.cat([tokens, negatives.to(tokens.device)]))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a batch: full, or sampled when so configured."""
        if self.sampled_softmax is None:
            logits = self(x)
            return F.cross_entropy(logits.reshape(-1, self.vocab_size), y.reshape(-1))
        candidates = self.sampled_candidates(x, y)
        logits = self.features(x) @ self.embedding.weight[candidates].T
        logits = logits + self.output.bias[candidates]
        targets = torch.searchsorted(candidates, y.reshape(-1))
        return F.cross_entropy(logits.reshape(-1, len(candidates)), targets)

    def row_sparse_parameters(self) -> tuple[str, ...]:
        """Parameters whose rows (first-dimension slices) only the batch's tokens update.

        The tied embedding [V, E] and the output bias [V]: with the sampled softmax, a client's
        delta is zero outside the rows of its candidate tokens (with the full softmax every
        output row gets a gradient, but the rows are still the natural unit of sparsity).
        """
        return ("embedding.weight", "output.bias")
