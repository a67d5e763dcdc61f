"""The aggregation interface, the dense partial, and dense weighted sums (FedAvg).

A partial is the pre-summed result of one chunk of clients. Chunks are a function of the cohort
alone, and partials are reduced in chunk order, so the total is bit-identical whatever the number
of workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from common.errors import require
from engine.training import ClientUpdate, ParameterLayout, Span

WEIGHTINGS = ("examples", "uniform")


@dataclass
class Partial:
    """A running sum of weighted client updates; `add` and `merge` accumulate in place.

    This dense partial is also the base of the sparse and MoE partials, which keep only part of
    the vector in `update_sum` and the rest in their own compact form.

    Attributes:
        update_sum: Sum of weight x delta, float32 [d] (subclasses: the coordinates they keep
            dense, concatenated in flat order).
        weight_sum: Sum of the client weights.
        num_clients: Clients summed.
        loss_sum: Sum of the clients' local training losses (see `ClientUpdate`).
        examples_seen: Examples behind `loss_sum`.
        bit_sum: Sum of the clients' adaptive-clipping bits (1[unclipped] - 1/2).
        clip_norm: The clip norm the updates were clipped to; None when not clipped.
        layout: The model's parameter layout (None for the dense partial, which needs none).
        upload_bytes: Bytes the summed clients uploaded, each in this aggregator's format
            (dense: the whole float32 vector; sparse: the dense part plus each touched row's
            index and values; MoE: the non-expert part plus the touched experts).
        failed: Clients of the partial's chunks whose training kept failing (not summed).
        nonfinite: Clients whose update was not finite: left out of the sum without clipping;
            with clipping summed as zeros (as `clip_update` maps them), so that whether an
            update was finite changes nothing but that client's own contribution.
    """

    update_sum: np.ndarray
    weight_sum: float = 0.0
    num_clients: int = 0
    loss_sum: float = 0.0
    examples_seen: int = 0
    bit_sum: float = 0.0
    clip_norm: float | None = None
    layout: ParameterLayout | None = None
    upload_bytes: int = 0
    failed: list[int] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)

    def add(self, update: ClientUpdate, weight: float, bit: float = 0.0) -> None:
        """Adds one client's update with the given weight (and clipping bit)."""
        self.update_sum += np.float32(weight) * update.delta
        self._count(update, weight, bit, update.delta.nbytes)

    def merge(self, other: Partial) -> None:
        """Adds another partial into this one (`other` is left as it was)."""
        self.update_sum += other.update_sum
        self.weight_sum += other.weight_sum
        self.num_clients += other.num_clients
        self.loss_sum += other.loss_sum
        self.examples_seen += other.examples_seen
        self.bit_sum += other.bit_sum
        self.upload_bytes += other.upload_bytes
        self.failed.extend(other.failed)
        self.nonfinite.extend(other.nonfinite)

    def dense_sum(self) -> np.ndarray:
        """The whole weighted sum as one float32 [d] vector (here `update_sum` itself)."""
        return self.update_sum

    def rescale(self, update: torch.Tensor, denominator: float) -> torch.Tensor:
        """Re-divides the coordinates whose own denominator is not `denominator`.

        The server divides the released sum by one denominator; a partial whose blocks have
        their own (data-dependent) weights re-divides them here, in place. Only for non-private
        releases: a private release keeps the public denominator everywhere. The dense partial
        returns `update` unchanged.
        """
        return update

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays that travel from the worker to the server (the partial itself)."""
        return int(self.update_sum.nbytes)

    def metrics(self) -> dict[str, float]:
        """Statistics of the summed clients (data-dependent: only for non-private runs)."""
        return {}

    def _count(self, update: ClientUpdate, weight: float, bit: float, payload: int) -> None:
        """Adds one client's weight, bit, loss and example counts, and its upload's bytes."""
        self.upload_bytes += int(payload)
        self.bit_sum += bit
        self.weight_sum += weight
        self.num_clients += 1
        self.loss_sum += update.loss_sum
        self.examples_seen += update.examples_seen


def gather(spans: tuple[Span, ...], source: np.ndarray, out: np.ndarray, scale: np.float32) -> None:
    """Adds scale x source[start:stop] of every span, concatenated, into `out` (in place)."""
    pos = 0
    for start, stop in spans:
        out[pos : pos + stop - start] += scale * source[start:stop]
        pos += stop - start


def scatter(spans: tuple[Span, ...], packed: np.ndarray, out: np.ndarray) -> None:
    """Writes the concatenated `packed` back to the spans of `out` (in place)."""
    pos = 0
    for start, stop in spans:
        out[start:stop] = packed[pos : pos + stop - start]
        pos += stop - start


def span_size(spans: tuple[Span, ...]) -> int:
    """The number of coordinates the spans cover."""
    return sum(stop - start for start, stop in spans)


class Aggregator(ABC):
    """Extension point: how updates are weighted, accumulated and reduced.

    The worker makes one partial per chunk with `zeros`, adds its clipped clients to it and
    `seal`s it (secure aggregation encodes it there); the server `reduce`s the partials in chunk
    order and then privatises the total's `dense_sum()`, so with DP on every coordinate of the
    release gets noise.
    """

    @abstractmethod
    def client_weight(self, update: ClientUpdate) -> float:
        """The weight of one client's update in the average."""

    @abstractmethod
    def zeros(self, dim: int, layout: ParameterLayout | None = None) -> Partial:
        """An empty partial for parameter vectors of size `dim`.

        Args:
            dim: The number of parameters d.
            layout: The model's layout (`ParameterLayout.of(model)`): where its row-sparse and
                expert blocks are. None means a plain vector with no such blocks.
        """

    def seal(self, partial: Partial, round_idx: int, client_ids: Sequence[int]) -> Partial:
        """The chunk's partial as it leaves the worker (secure aggregation encodes it here)."""
        return partial

    def reduce(self, partials: Sequence[Partial], dim: int) -> Partial:
        """Sums partials in the order given (callers pass chunk order)."""
        total = self.zeros(dim, partials[0].layout if partials else None)
        for partial in partials:
            total.merge(partial)
        return total


def checked_layout(dim: int, layout: ParameterLayout | None) -> ParameterLayout:
    """`layout`, or a plain one of `dim` values; raises ValueError if its dim is not `dim`."""
    if layout is None:
        return ParameterLayout.dense(dim)
    if layout.dim != dim:
        raise ValueError(f"layout has {layout.dim} parameters, partial has {dim}")
    return layout


@dataclass(frozen=True)
class WeightedAggregator(Aggregator):
    """The client weighting every aggregator shares.

    Attributes:
        weighting: "examples" weights each client by its example count (McMahan et al. 2017);
            "uniform" weights every client 1 (required with clipping).
    """

    weighting: str = "examples"

    def __post_init__(self) -> None:
        require(self.weighting in WEIGHTINGS, "weighting", f"must be one of {WEIGHTINGS}")

    def client_weight(self, update: ClientUpdate) -> float:
        """Example count or 1."""
        return float(update.num_examples) if self.weighting == "examples" else 1.0


@dataclass(frozen=True)
class DenseAggregator(WeightedAggregator):
    """Dense sum of flat updates (FedAvg).

    Attributes:
        weighting: "examples" weights each client by its example count (McMahan et al. 2017);
            "uniform" weights every client 1.
    """

    weighting: str = "examples"

    def zeros(self, dim: int, layout: ParameterLayout | None = None) -> Partial:
        """A zero float32 partial (the layout is only checked: a dense sum needs none)."""
        checked_layout(dim, layout)
        return Partial(update_sum=np.zeros(dim, dtype=np.float32))
