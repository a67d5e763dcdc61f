"""Mixture-of-experts aggregation: each expert's sum travels only if some client touched it.

A client of a mixture of experts routes its tokens to a few experts; the others get exactly zero
gradient. `MoEPartial` keeps each touched expert's weighted sum and the weight of the clients
that touched it, and the non-expert parameters as a dense sum. Non-private, the server averages
each expert over the clients that touched it; private, every block is averaged by the public
cohort size (a count of clients that touched an expert is data, see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.aggregation.base import (
    Partial,
    WeightedAggregator,
    checked_layout,
    gather,
    scatter,
    span_size,
)
from engine.training import ClientUpdate, ParameterLayout


@dataclass
class MoEPartial(Partial):
    """A partial with per-expert sums and weights, and the clients' routing statistics.

    Attributes:
        expert_sums: Per expert, the float32 sum of weight x delta over its spans (concatenated),
            or None while no client of the partial touched it.
        expert_weights: float64 [E], the summed weight of the clients that touched each expert.
        expert_tokens: float64 [E], tokens routed to each expert (the clients'
            `stats["expert_tokens"]`, or `stats["tokens_per_expert"]`, in `expert_parameters`
            order), or None if no client reported them.
        entropy_sum: Sum of the clients' `stats["router_entropy"]`.
        entropy_count: Clients that reported a router entropy.
    """

    expert_sums: list[np.ndarray | None] = field(default_factory=list)
    expert_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    expert_tokens: np.ndarray | None = None
    entropy_sum: float = 0.0
    entropy_count: int = 0

    @property
    def _layout(self) -> ParameterLayout:
        if self.layout is None:
            raise ValueError("an MoE partial needs its layout")
        return self.layout

    def add(self, update: ClientUpdate, weight: float, bit: float = 0.0) -> None:
        """Adds one client; it touches expert e when its delta on e's spans is nonzero."""
        layout, scale = self._layout, np.float32(weight)
        gather(layout.outside_experts, update.delta, self.update_sum, scale)
        payload = self.update_sum.nbytes
        for e, spans in enumerate(layout.experts):
            parts = [update.delta[start:stop] for start, stop in spans]
            if not any(part.any() for part in parts):
                continue
            contribution = scale * (np.concatenate(parts) if len(parts) > 1 else parts[0])
            payload += contribution.nbytes
            current = self.expert_sums[e]
            if current is None:
                self.expert_sums[e] = contribution
            else:
                current += contribution
            self.expert_weights[e] += weight
        stats: dict[str, np.ndarray] = getattr(update, "stats", None) or {}
        tokens = stats.get("expert_tokens", stats.get("tokens_per_expert"))
        self._add_stats(tokens, stats.get("router_entropy"))
        self._count(update, weight, bit, payload)

    def _add_stats(self, tokens: np.ndarray | None, entropy: np.ndarray | float | None) -> None:
        """Accumulates one client's (or partial's) tokens per expert and router entropy."""
        if tokens is not None:
            tokens = np.asarray(tokens, dtype=np.float64).reshape(-1)
            if len(tokens) != len(self.expert_weights):
                raise ValueError(
                    f"expert_tokens has {len(tokens)} entries, the model has "
                    f"{len(self.expert_weights)} experts"
                )
            if self.expert_tokens is None:
                self.expert_tokens = np.zeros(len(tokens))
            self.expert_tokens += tokens
        if entropy is not None:
            self.entropy_sum += float(np.mean(entropy))
            self.entropy_count += 1

    def merge(self, other: Partial) -> None:
        """Adds another MoE partial of the same layout (`other` is left as it was)."""
        if not isinstance(other, MoEPartial) or other.layout != self.layout:
            raise ValueError("can only merge an MoE partial of the same layout")
        super().merge(other)
        for e, theirs in enumerate(other.expert_sums):
            if theirs is None:
                continue
            mine = self.expert_sums[e]
            if mine is None:
                self.expert_sums[e] = theirs.copy()
            else:
                mine += theirs
        self.expert_weights += other.expert_weights
        self._add_stats(other.expert_tokens, None)
        self.entropy_sum += other.entropy_sum
        self.entropy_count += other.entropy_count

    def dense_sum(self) -> np.ndarray:
        """The non-expert sum and every expert's sum (zeros if untouched), float32 [d]."""
        layout = self._layout
        out = np.zeros(layout.dim, dtype=np.float32)
        scatter(layout.outside_experts, self.update_sum, out)
        for spans, packed in zip(layout.experts, self.expert_sums, strict=True):
            if packed is not None:
                scatter(spans, packed, out)
        return out

    def rescale(self, update: torch.Tensor, denominator: float) -> torch.Tensor:
        """Divides each touched expert by its own weight instead of `denominator`, in place."""
        for spans, weight in zip(self._layout.experts, self.expert_weights.tolist(), strict=True):
            if weight > 0 and weight != denominator:
                for start, stop in spans:
                    update[start:stop].mul_(denominator / weight)
        return update

    @property
    def nbytes(self) -> int:
        """The non-expert sum, the touched experts' sums, and the per-expert arrays."""
        experts = sum(s.nbytes for s in self.expert_sums if s is not None)
        tokens = 0 if self.expert_tokens is None else self.expert_tokens.nbytes
        return int(self.update_sum.nbytes + experts + self.expert_weights.nbytes + tokens)

    def metrics(self) -> dict[str, float]:
        """`train/expert_load/e{i}` (tokens per expert) and `train/router_entropy` (client mean).

        Each key is present only when the clients reported the statistic.
        """
        out: dict[str, float] = {}
        if self.expert_tokens is not None:
            loads = self.expert_tokens.tolist()
            out.update({f"train/expert_load/e{i}": load for i, load in enumerate(loads)})
        if self.entropy_count:
            out["train/router_entropy"] = self.entropy_sum / self.entropy_count
        return out


@dataclass(frozen=True)
class MoEAggregator(WeightedAggregator):
    """Per-expert sums and weights for mixtures of experts.

    Non-expert parameters are averaged as in FedAvg. Each expert block is averaged by its own
    denominator when the release is not private: the weight of the clients that touched it (an
    untouched expert stays where it was). With DP on, the server divides every coordinate by
    the public cohort size instead, and adds noise to every coordinate. When every client
    touches every expert, this is FedAvg. Models declare their experts with
    `expert_parameters()` (see `engine.training.models.layout`); without any, this is a dense sum.

    Attributes:
        weighting: "uniform" weights every client 1; "examples" by its example count.
    """

    weighting: str = "uniform"

    def zeros(self, dim: int, layout: ParameterLayout | None = None) -> MoEPartial:
        """An empty MoE partial: a zero non-expert sum, no expert sums, zero weights."""
        layout = checked_layout(dim, layout)
        return MoEPartial(
            update_sum=np.zeros(span_size(layout.outside_experts), dtype=np.float32),
            layout=layout,
            expert_sums=[None] * len(layout.experts),
            expert_weights=np.zeros(len(layout.experts)),
        )
