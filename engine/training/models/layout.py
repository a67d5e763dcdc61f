"""Where each named parameter lives in the flat parameter vector, and which blocks are special.

The flat vector is `model.parameters()` in order (see `engine.training.models.params`). A model may
declare two kinds of blocks that aggregation treats specially:

- `model.row_sparse_parameters() -> tuple[str, ...]`: parameters (an embedding [rows, cols], an
  output layer over a vocabulary) whose per-client updates touch few rows;
- `model.expert_parameters() -> list[list[str]]`: for each expert of a mixture of experts, the
  names of its parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from torch import nn

Span = tuple[int, int]


@dataclass(frozen=True)
class RowBlock:
    """A row-sparse parameter: `rows` x `cols` values from flat offset `offset`, row-major.

    Attributes:
        name: The parameter's name.
        offset: Flat index of its first value.
        rows: Leading dimension (a parameter of shape [r, ...] has r rows).
        cols: Values per row (the product of the trailing dimensions; 1 for a vector).
    """

    name: str
    offset: int
    rows: int
    cols: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.rows < 1 or self.cols < 1:
            raise ValueError(f"row block {self.name!r}: bad offset/rows/cols {self}")

    @property
    def stop(self) -> int:
        """Flat index one past its last value."""
        return self.offset + self.rows * self.cols


def complement(spans: tuple[Span, ...], dim: int) -> tuple[Span, ...]:
    """The sorted spans of [0, dim) that none of the (disjoint) `spans` cover."""
    out: list[Span] = []
    cursor = 0
    for start, stop in sorted(spans):
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, stop)
    if cursor < dim:
        out.append((cursor, dim))
    return tuple(out)


def _merge_adjacent(spans: list[Span]) -> tuple[Span, ...]:
    """Sorted spans with touching neighbours joined."""
    out: list[Span] = []
    for start, stop in sorted(spans):
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return tuple(out)


@dataclass(frozen=True)
class ParameterLayout:
    """The flat offsets of a model's parameters and its row-sparse and expert blocks.

    Guarantees:
        Parameter spans tile [0, dim) in `parameters()` order; row blocks are sorted and
        disjoint; each expert's spans are sorted, and no two experts share a coordinate.

    Attributes:
        names: Parameter names in `parameters()` order.
        shapes: Their shapes.
        offsets: Flat index of each parameter's first value.
        dim: Total number of parameters.
        row_blocks: The row-sparse parameters, by offset.
        experts: For each expert, the flat (start, stop) spans of its parameters.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    dim: int
    row_blocks: tuple[RowBlock, ...] = ()
    experts: tuple[tuple[Span, ...], ...] = ()

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.shapes) == len(self.offsets):
            raise ValueError("names, shapes and offsets must have the same length")
        cursor = 0
        for name, shape, offset in zip(self.names, self.shapes, self.offsets, strict=True):
            if offset != cursor:
                raise ValueError(f"parameter {name!r} starts at {offset}, expected {cursor}")
            cursor += math.prod(shape)
        if cursor != self.dim:
            raise ValueError(f"parameters hold {cursor} values, dim is {self.dim}")
        _check_disjoint([(b.offset, b.stop) for b in self.row_blocks], self.dim, "row blocks")
        _check_disjoint([s for spans in self.experts for s in spans], self.dim, "experts")

    @classmethod
    def dense(cls, dim: int) -> ParameterLayout:
        """A layout of one anonymous parameter of `dim` values and no special blocks."""
        return cls(names=("",), shapes=((dim,),), offsets=(0,), dim=dim)

    @classmethod
    def of(cls, model: nn.Module) -> ParameterLayout:
        """Reads the layout of `model`, and its optional row-sparse and expert declarations.

        Raises:
            ValueError: A declared name is not a parameter, or blocks overlap.
        """
        named = list(model.named_parameters())
        names = tuple(name for name, _ in named)
        shapes = tuple(tuple(param.shape) for _, param in named)
        offsets, cursor = [], 0
        for _, param in named:
            offsets.append(cursor)
            cursor += param.numel()
        where = {name: i for i, name in enumerate(names)}

        def index(name: str) -> int:
            if name not in where:
                raise ValueError(f"{name!r} is not a parameter of {type(model).__name__}")
            return where[name]

        def span(name: str) -> Span:
            i = index(name)
            return offsets[i], offsets[i] + math.prod(shapes[i])

        blocks = []
        for name in getattr(model, "row_sparse_parameters", tuple)():
            shape = shapes[index(name)] or (1,)
            blocks.append(RowBlock(name, span(name)[0], shape[0], math.prod(shape[1:])))
        experts = [
            _merge_adjacent([span(name) for name in expert])
            for expert in getattr(model, "expert_parameters", list)()
        ]
        return cls(
            names=names,
            shapes=shapes,
            offsets=tuple(offsets),
            dim=cursor,
            row_blocks=tuple(sorted(blocks, key=lambda b: b.offset)),
            experts=tuple(experts),
        )

    def span(self, name: str) -> Span:
        """The flat (start, stop) of parameter `name`."""
        i = self.names.index(name)
        return self.offsets[i], self.offsets[i] + math.prod(self.shapes[i])

    @cached_property
    def outside_rows(self) -> tuple[Span, ...]:
        """The spans of the coordinates outside every row block."""
        return complement(tuple((b.offset, b.stop) for b in self.row_blocks), self.dim)

    @cached_property
    def outside_experts(self) -> tuple[Span, ...]:
        """The spans of the coordinates that belong to no expert."""
        return complement(tuple(s for spans in self.experts for s in spans), self.dim)


def _check_disjoint(spans: list[Span], dim: int, what: str) -> None:
    """Raises ValueError unless the spans are non-empty, within [0, dim) and disjoint."""
    cursor = 0
    for start, stop in sorted(spans):
        if not 0 <= start < stop <= dim:
            raise ValueError(f"{what}: span ({start}, {stop}) is empty or outside [0, {dim})")
        if start < cursor:
            raise ValueError(f"{what} overlap at {start}")
        cursor = stop
