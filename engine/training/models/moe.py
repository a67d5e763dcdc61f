"""A small causal Transformer LM whose feed-forward layers are mixtures of experts.

GShard / Switch / V-MoE style (Lepikhin et al. 2021, Fedus et al. 2022, Riquelme et al. 2021):
each block's feed-forward is `num_experts` two-layer experts behind a softmax router; every
token goes to its `top_k` most probable experts, weighted by their router probabilities,
renormalised over the k chosen as in GShard (`normalize_gates`; off: the raw probabilities, as in
Switch and V-MoE). An expert takes at most C = ceil(capacity_factor * top_k * T / num_experts) of
the T tokens of a batch; assignments are served first choices first, then in token order, and
those beyond C are dropped (a token whose every assignment is dropped passes through the
residual unchanged). The Switch/GShard load-balancing loss E * sum_e f_e * P_e (f_e: share of
tokens whose first choice is e; P_e: mean router probability of e), summed over layers, is added
to the training loss with weight `aux_loss_weight` by the `loss` hook.

`dense=True` builds the dense counterpart with the same active parameters per token: one
feed-forward of width top_k * expert_hidden in place of each mixture (the router aside).

LayerNorms have no affine parameters; the expert (and dense) down-projections have no bias, so
a dropped token's feed-forward output is exactly zero. Capacity is per batch, so with drops a
token's output can depend on later tokens of the batch (as in GShard); with no drops (capacity
factor >= num_experts / top_k) the model is strictly causal. Routing is data-dependent and its
statistics are read on the host: the model runs on the per-client loop, not under torch.func.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from common.errors import require
from engine.population import InputKind, Inputs
from engine.training.models.lm import OutputBias


class Routing(NamedTuple):
    """The top-k assignments of T tokens, first choices of all tokens first, then second, ...

    Attributes:
        expert: int64 [k * T], the expert of each assignment.
        token: int64 [k * T], its token.
        gate: [k * T], its router probability.
        keep: bool [k * T], whether it is within its expert's capacity.
    """

    expert: torch.Tensor
    token: torch.Tensor
    gate: torch.Tensor
    keep: torch.Tensor


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, factor: float) -> int:
    """Tokens one expert may take: ceil(factor * top_k * num_tokens / num_experts)."""
    return math.ceil(factor * top_k * num_tokens / num_experts)


def route(probs: torch.Tensor, top_k: int, capacity: int, normalize: bool = False) -> Routing:
    """Top-k routing of router probabilities [T, E] under a per-expert capacity.

    With `normalize`, a token's k gates are its top-k probabilities divided by their sum
    (GShard's top-2 gating; Mixtral's softmax over the top-k logits is the same); otherwise
    they are the probabilities themselves (Switch, V-MoE).
    """
    num_tokens, num_experts = probs.shape
    gate, expert = probs.topk(top_k, dim=-1)
    if normalize:
        gate = gate / gate.sum(dim=-1, keepdim=True)
    expert, gate = expert.T.reshape(-1), gate.T.reshape(-1)
    onehot = _one_hot(expert, num_experts)
    position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1
    token = torch.arange(num_tokens, device=probs.device).repeat(top_k)
    return Routing(expert=expert, token=token, gate=gate, keep=position < capacity)


def _one_hot(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [n, num_classes] one-hot rows of `index` in [0, num_classes).

    `F.one_hot` and `torch.bincount` read their input's range back to the host; on a GPU that
    is a synchronisation per call, this is none.
    """
    classes = torch.arange(num_classes, device=index.device)
    return (index[:, None] == classes).long()


def load_balancing_loss(probs: torch.Tensor, first_choice: torch.Tensor) -> torch.Tensor:
    """E * sum_e f_e * P_e for router probabilities [T, E] and first-choice experts [T].

    Equals 1 when both the first choices and the mean probabilities are uniform.
    """
    num_tokens, num_experts = probs.shape
    share = _one_hot(first_choice, num_experts).sum(dim=0).to(probs.dtype) / num_tokens
    return num_experts * torch.sum(share * probs.mean(dim=0))


class FeedForward(nn.Module):
    """Two-layer GELU feed-forward d -> width -> d; the down-projection has no bias."""

    def __init__(self, d_model: int, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, width)
        self.down = nn.Linear(width, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps [..., d] to [..., d]."""
        return self.down(F.gelu(self.up(x)))


class MixtureOfExperts(nn.Module):
    """A top-k routed mixture of `FeedForward` experts with a capacity; tokens are rows [T, d].

    Accumulates, until `take_stats`, the assignments each expert served, the assignments
    dropped, and the router entropy.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        top_k: int,
        capacity_factor: float,
        hidden: int,
        normalize_gates: bool = False,
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.normalize_gates = normalize_gates
        self.router = nn.Linear(d_model, num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(d_model, hidden) for _ in range(num_experts))
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._served = np.zeros(len(self.experts), np.int64)
        self._dropped = 0
        self._entropy_sum: float | torch.Tensor = 0.0  # a float64 tensor once a batch is seen
        self._tokens = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs [T, d] and the load-balancing loss of tokens [T, d].

        The kept assignments are grouped by expert with one stable sort, each group in
        assignment order, and their sizes are the one value read back to the host per call (on
        a GPU, one synchronisation rather than one per expert).
        """
        probs = torch.softmax(self.router(x), dim=-1)
        num_experts = len(self.experts)
        capacity = expert_capacity(len(x), num_experts, self.top_k, self.capacity_factor)
        routing = route(probs, self.top_k, capacity, self.normalize_gates)
        slot = torch.where(routing.keep, routing.expert, num_experts)  # dropped: slot E
        order = torch.argsort(slot, stable=True)
        sizes = _one_hot(slot, num_experts + 1).sum(dim=0).tolist()
        out = torch.zeros_like(x)
        start = 0
        for expert, size in zip(self.experts, sizes, strict=False):  # sizes[E]: the dropped
            if size:
                chosen = order[start : start + size]
                tokens = routing.token[chosen]
                out = out.index_add(0, tokens, expert(x[tokens]) * routing.gate[chosen, None])
            start += size
        with torch.no_grad():
            self._served += np.asarray(sizes[:num_experts], np.int64)
            self._dropped += sizes[num_experts]
            entropy = torch.special.entr(probs).sum().to(torch.float64)
            self._entropy_sum = self._entropy_sum + entropy
            self._tokens += len(x)
        return out, load_balancing_loss(probs, routing.expert[: len(x)])

    def take_stats(self) -> tuple[np.ndarray, int, float, int]:
        """(assignments served per expert, dropped, router entropy sum, tokens); then resets."""
        stats = (self._served, self._dropped, float(self._entropy_sum), self._tokens)
        self._reset_stats()
        return stats


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention, then a mixture-of-experts or dense feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ffn: nn.Module) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.ffn = ffn

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps [n, seq, d] to [n, seq, d], with the feed-forward's auxiliary loss."""
        n, length, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.attn_out(attended.transpose(1, 2).reshape(n, length, d))
        tokens = self.norm2(h).reshape(n * length, d)
        if isinstance(self.ffn, MixtureOfExperts):
            out, aux = self.ffn(tokens)
        else:
            out, aux = self.ffn(tokens), h.new_zeros(())
        return h + out.reshape(n, length, d), aux


class MoETransformerLM(nn.Module):
    """Causal Transformer LM with mixture-of-experts feed-forwards (or dense ones), tied output.

    Token ids [n, seq] (seq <= num_features) give logits [n, seq, V]; position t predicts token
    t + 1. Logits are the final (normalised) states times the token embedding, plus a bias.

    Args:
        num_features: Maximum sequence length (injected from the population).
        num_classes: Vocabulary size V (injected from the population).
        d_model: Model width.
        num_heads: Attention heads; must divide d_model.
        num_layers: Transformer blocks.
        num_experts: Experts per mixture.
        top_k: Experts per token.
        capacity_factor: Expert capacity relative to a perfectly balanced load.
        expert_hidden: Hidden width of one expert.
        aux_loss_weight: Weight of the load-balancing loss in the training loss.
        normalize_gates: Renormalise a token's top-k gates to sum to 1 (GShard).
        dense: Build the dense counterpart: feed-forwards of width top_k * expert_hidden.
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.TOKENS)

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        num_experts: int = 8,
        top_k: int = 2,
        capacity_factor: float = 1.25,
        expert_hidden: int = 128,
        aux_loss_weight: float = 0.01,
        normalize_gates: bool = True,
        dense: bool = False,
    ) -> None:
        super().__init__()
        require(num_features >= 1, "num_features", f"must be >= 1, got {num_features}")
        require(num_classes >= 2, "num_classes", f"must be >= 2, got {num_classes}")
        require(num_heads >= 1, "num_heads", f"must be >= 1, got {num_heads}")
        require(
            d_model % num_heads == 0,
            "d_model",
            f"must be a multiple of num_heads ({num_heads}), got {d_model}",
        )
        require(num_layers >= 1, "num_layers", f"must be >= 1, got {num_layers}")
        require(num_experts >= 1, "num_experts", f"must be >= 1, got {num_experts}")
        require(1 <= top_k <= num_experts, "top_k", f"must be in [1, num_experts], got {top_k}")
        require(capacity_factor > 0, "capacity_factor", f"must be > 0, got {capacity_factor}")
        require(expert_hidden >= 1, "expert_hidden", f"must be >= 1, got {expert_hidden}")
        require(aux_loss_weight >= 0, "aux_loss_weight", f"must be >= 0, got {aux_loss_weight}")
        self.vocab_size = num_classes
        self.top_k = top_k
        self.aux_loss_weight = aux_loss_weight
        self.dense = dense
        self.token = nn.Embedding(num_classes, d_model)
        self.position = nn.Embedding(num_features, d_model)
        self.blocks = nn.ModuleList(
            Block(
                d_model,
                num_heads,
                FeedForward(d_model, top_k * expert_hidden)
                if dense
                else MixtureOfExperts(
                    d_model, num_experts, top_k, capacity_factor, expert_hidden, normalize_gates
                ),
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.output = OutputBias(num_classes)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.token(x) + self.position(torch.arange(x.shape[1], device=x.device))
        aux = h.new_zeros(())
        for block in self.blocks:
            h, block_aux = block(h)
            aux = aux + block_aux
        return self.norm(h) @ self.token.weight.T + self.output.bias, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits [n, seq, V] for token ids [n, seq]."""
        return self._run(x)[0]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy plus aux_loss_weight x the load-balancing loss."""
        logits, aux = self._run(x)
        ce = F.cross_entropy(logits.reshape(-1, self.vocab_size), y.reshape(-1))
        return ce + self.aux_loss_weight * aux

    def _mixtures(self) -> list[MixtureOfExperts]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MixtureOfExperts)]

    def expert_parameters(self) -> list[list[str]]:
        """Parameter names of each expert, layer by layer ([] for the dense model)."""
        return [
            [f"blocks.{layer}.ffn.experts.{e}.{name}" for name, _ in expert.named_parameters()]
            for layer, block in enumerate(self.blocks)
            if isinstance(block.ffn, MixtureOfExperts)
            for e, expert in enumerate(block.ffn.experts)
        ]

    def active_parameters(self, count_router: bool = True) -> int:
        """Parameters used per token: all but the (num_experts - top_k) unchosen experts.

        Args:
            count_router: Count the routers' weights (the dense model has none).
        """
        total = sum(p.numel() for p in self.parameters())
        for mixture in self._mixtures():
            per_expert = sum(p.numel() for p in mixture.experts[0].parameters())
            total -= (len(mixture.experts) - self.top_k) * per_expert
            if not count_router:
                total -= mixture.router.weight.numel()
        return total

    def round_stats(self) -> dict[str, np.ndarray]:
        """Routing statistics since the last call, then resets them ({} for the dense model).

        Returns:
            `tokens_per_expert`: int64 [num_layers * num_experts], assignments each expert
            served, in `expert_parameters` order; `dropped_tokens`: int64 [num_layers],
            assignments dropped for capacity; `router_entropy`: float64 [], the mean entropy
            (nats) of the router distribution over all tokens and layers.
        """
        mixtures = self._mixtures()
        if not mixtures:
            return {}
        served, dropped, entropy, tokens = zip(*(m.take_stats() for m in mixtures), strict=True)
        return {
            "tokens_per_expert": np.concatenate(served),
            "dropped_tokens": np.array(dropped, np.int64),
            "router_entropy": np.array(sum(entropy) / max(sum(tokens), 1)),
        }
