"""Conditional randomized rounding to integers, with an exact integer norm check.

Each row is rounded stochastically (floor, plus 1 with probability the fractional part), and the
rows whose rounded L2 norm exceeds the inflated bound are rounded again, until every row is
within it (Kairouz, Liu, Steinke 2021, Section 4.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# The next `width` uniforms in [0, 1) of each given row's stream: float64 [len(rows), width] on
# the rows' device. Consecutive calls for a row continue its stream.
UniformDraw = Callable[[torch.Tensor, int], torch.Tensor]

# Coordinates rounded at a time on a CPU (rows times columns): the temporaries stay in cache.
_CPU_BLOCK = 1 << 17

# Below these bounds on a row's sum of squares, float64 and int64 sums of squares are exact.
_FLOAT64_EXACT = 2.0**52
_INT64_SAFE = 2.0**61


def inflated_norm_bound(scaled_clip: float, dim: int, beta: float) -> float:
    """The L2 bound that conditional rounding enforces on a vector of norm <= scaled_clip.

    min(c + sqrt(d), sqrt(c**2 + d / 4 + sqrt(2 log(1 / beta)) (c + sqrt(d) / 2))), with c the
    scaled clip norm and d the padded dimension; beta = 0 gives c + sqrt(d). As the reference's
    `rounded_l2_norm_bound` (google-research/federated, distributed_dp/accounting_utils.py).

    Guarantees:
        Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated
        Learning with Secure Aggregation", Theorem 1 / Proposition 22: stochastic rounding of
        a vector of norm <= c stays within the second term with probability >= 1 - beta, so a
        conditional rounding that retries until the check passes needs 1 / (1 - beta) tries in
        expectation (beta = exp(-1/2) in the papers). The first term holds for every rounding
        (each coordinate moves by < 1). The norm of what passes is bounded by construction.

    Raises:
        ValueError: If c < 0, d < 1 or beta is outside [0, 1).
    """
    if scaled_clip < 0 or dim < 1 or not 0 <= beta < 1:
        raise ValueError(f"need c >= 0, d >= 1, 0 <= beta < 1; got {scaled_clip}, {dim}, {beta}")
    deterministic = scaled_clip + math.sqrt(dim)
    if beta == 0:
        return deterministic
    squared = (
        scaled_clip**2
        + dim / 4
        + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(dim) / 2)
    )
    return min(deterministic, math.sqrt(squared))


def _exceeds(approx: torch.Tensor, rounded: torch.Tensor, limit: int) -> torch.Tensor:
    """Whether each row's integer sum of squares exceeds `limit`, decided exactly (CPU bool).

    `approx` is the float64 sum of squares S' of the rows of `rounded` (int64), from exact
    integer partial sums: S' is exact below 2**53 (every partial sum is an integer that float64
    represents, whatever the order or fusion) and within a relative d' 2**-53 of the true S
    otherwise. So S' < 2**52 is exact, and S' farther than that from the limit decides alone;
    the rows left (only at very many bits) are summed again in int64 (below 2**61) or in Python
    integers.
    """
    near = float(limit)  # within a relative 2**-53 of the limit: inside the margin below
    over = approx > near
    margin = rounded.shape[1] * 2.0**-52
    unsure = (approx >= _FLOAT64_EXACT) & ((approx - near).abs() <= margin * approx + 1)
    for row in unsure.nonzero().flatten().tolist():
        values = rounded[row]
        if approx[row] < _INT64_SAFE:
            total = int((values * values).sum().item())
        else:
            total = sum(v * v for v in values.tolist())
        over[row] = total > limit
    return over


def _round_tries(
    x: torch.Tensor, rows: torch.Tensor, factor: float, draw: UniformDraw, out: torch.Tensor
) -> torch.Tensor:
    """One stochastic rounding of x[rows] * factor (in float64) into out[rows], by columns.

    Returns the rows' float64 sums of squares (CPU), from exact per-block integer sums.
    """
    width = x.shape[1]
    step = width if x.device.type != "cpu" else max(1024, _CPU_BLOCK // max(1, rows.numel()))
    whole = rows.numel() == x.shape[0]
    squares = torch.zeros(rows.numel(), dtype=torch.float64, device=x.device)
    buffer = torch.empty(rows.numel(), min(step, width), dtype=torch.float64, device=x.device)
    for start in range(0, width, step):
        stop = min(width, start + step)
        part = x[:, start:stop] if whole else x[rows, start:stop]
        u = draw(rows, stop - start)
        scaled = buffer[:, : stop - start]
        scaled.copy_(part)  # exact; a mixed-dtype add into float64 runs 2x slower than both
        if factor != 1.0:
            scaled.mul_(factor)
        scaled.add_(u)
        rounded = scaled.floor_()  # floor(y + u): see round_rows
        squares += torch.einsum("ij,ij->i", rounded, rounded)
        if whole:
            out[:, start:stop] = rounded
        else:
            out[rows, start:stop] = rounded.to(torch.int64)
    return squares.cpu()


def round_rows(
    x: torch.Tensor,
    bound: float,
    draw: UniformDraw,
    max_tries: int = 1000,
    *,
    factor: float = 1.0,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`conditional_round` of x * factor, the uniforms taken from `draw` (a stream per row).

    Args:
        x: [n, d'] floating point; it is scaled by `factor` in float64, then each coordinate y
            becomes floor(y + u), u uniform in [0, 1): floor(y) + 1 with probability frac(y),
            up to the float64 rounding of y + u (a bias below |y| 2**-52 per coordinate).
        bound: The L2 bound in the integer domain (>= 0).
        draw: Given row indices (int64 [k], x's device) and a width w, returns the next w
            uniforms of each row's stream, float64 [k, w] on x's device (may be overwritten).
            The columns are drawn left to right, so a row's uniforms do not depend on how they
            are split.
        max_tries: Roundings per row at most.
        factor: Multiplies x (in float64) before rounding.
        out: Where to write the result (int64, x's shape and device); a new tensor if None.

    Returns:
        (rounded int64 [n, d'], retries int64 [n] on the CPU): the retries of each row (tries
        - 1).

    Raises:
        RuntimeError: If rows still exceed the bound after `max_tries` tries.
    """
    if x.dim() != 2 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be floating point [n, d'], got {x.dtype} {tuple(x.shape)}")
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"bound must be finite and >= 0, got {bound}")
    if out is not None and (out.shape != x.shape or out.dtype != torch.int64):
        raise ValueError(f"out must be int64 {tuple(x.shape)}, got {out.dtype} {tuple(out.shape)}")
    limit = math.floor(bound * bound)  # S <= bound**2 <=> S <= floor(bound**2) for integer S
    n = x.shape[0]
    rounded = torch.empty(x.shape, dtype=torch.int64, device=x.device) if out is None else out
    retries = torch.zeros(n, dtype=torch.int64)
    pending = torch.arange(n)
    for tries in range(1, max_tries + 1):
        if pending.numel() == 0:
            break
        if tries > 1:
            retries[pending] += 1
        on_device = pending.to(x.device)
        squares = _round_tries(x, on_device, factor, draw, rounded)
        pending = pending[_exceeds(squares, rounded if tries == 1 else rounded[on_device], limit)]
    if pending.numel() > 0:
        raise RuntimeError(
            f"conditional rounding: {pending.numel()} rows still exceed the L2 bound {bound} "
            f"after {max_tries} tries (is the input clipped and scaled to the bound's clip norm?)"
        )
    return rounded, retries


def conditional_round(
    x: torch.Tensor, bound: float, generator: torch.Generator, max_tries: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rounds each row of x stochastically to integers, again while its L2 norm exceeds `bound`.

    Each coordinate becomes floor(x) + Bernoulli(x - floor(x)); a row whose integer sum of
    squares exceeds bound**2 (compared exactly, in integers) is rounded again from x, with fresh
    randomness, until it passes.

    Guarantees:
        Every returned row has L2 norm <= bound, exactly (Kairouz, Liu, Steinke 2021, Section
        4.1, conditional randomized rounding). With the bound of `inflated_norm_bound` for the
        row's norm, a try passes with probability >= 1 - beta (their Theorem 1). Unconditional
        stochastic rounding is unbiased; conditioning on the check biases it slightly (towards
        smaller norms), the less so the rarer the retries.

    Args:
        x: [n, d'] float64 (already scaled), any device.
        bound: The L2 bound in the integer domain.
        generator: A torch CPU generator; the uniforms are drawn from it and moved to x's device.
        max_tries: Roundings per row at most.

    Returns:
        (int64 [n, d'] on x's device, retries int64 [n] on the CPU).

    Raises:
        RuntimeError: Naming how many rows still exceed the bound after `max_tries` tries.
    """

    def draw(rows: torch.Tensor, width: int) -> torch.Tensor:
        u = torch.rand(rows.numel(), width, generator=generator, dtype=torch.float64)
        return u.to(x.device)

    return round_rows(x, bound, draw, max_tries)
