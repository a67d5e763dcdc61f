"""The randomized Hadamard rotation, vectorised over a batch of clients.

Random public signs, then an orthonormal fast Walsh-Hadamard transform (WHT).

The rotation spreads a clipped update's norm evenly over the coordinates, so that rounding and the
modular sum treat every coordinate alike (Kairouz, Liu, Steinke 2021, Section 4.2).
"""

from __future__ import annotations

import math

import torch

from common.errors import require
from common.rng import Stream, torch_generator

# Stages merged into one pass: a dense 2**k x 2**k Hadamard product per pass (fewer, wider passes
# than radix 2 run faster on a CPU: the work is memory-bound up to k of about 5).
_RADIX_LOG2 = 5
# The NOISE-stream key that marks the rotation's signs: (seed, NOISE, 1, round).
_SIGNS_KEY = 1


def padded_dim(dim: int) -> int:
    """The smallest power of two >= `dim`: 2**ceil(log2(dim)), and 1 for dim = 1.

    Raises:
        ConfigError: If `dim` < 1.
    """
    require(dim >= 1, "dim", f"must be >= 1, got {dim}")
    return 1 << (dim - 1).bit_length()


def rotation_signs(seed: int, round_idx: int, padded: int) -> torch.Tensor:
    """The round's random signs: float32 +-1 of length `padded`, the same for every client.

    Public randomness of (seed, round): drawn from `torch_generator(seed, Stream.NOISE, 1,
    round_idx)`. They are not secret; the guarantee does not need them to be.
    """
    require(padded >= 1 and padded & (padded - 1) == 0, "padded", f"not a power of 2: {padded}")
    generator = torch_generator(seed, Stream.NOISE, _SIGNS_KEY, round_idx)
    bits = torch.randint(0, 2, (padded,), generator=generator, dtype=torch.int64)
    return (bits * 2 - 1).to(torch.float32)


def _hadamard(log2: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The unnormalised Sylvester-Hadamard matrix of order 2**log2 (entries +-1)."""
    h = torch.ones(1, 1, dtype=dtype, device=device)
    for _ in range(log2):
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def fwht(x: torch.Tensor, spare: torch.Tensor | None = None) -> torch.Tensor:
    """The unnormalised Walsh-Hadamard transform x @ H_{d'} of each row of x [n, d'].

    H is Sylvester's matrix (d' a power of 2). Each pass applies k stages of the butterfly at
    once as a product with H_{2**k}: ceil(log2(d') / k) passes over x and O(n d' log2(d') 2**k / k)
    operations, no Python loop over clients or coordinates. x may be overwritten. Given `spare`
    (contiguous, x's shape, dtype and device), the passes alternate between x and spare and
    allocate nothing (large fresh allocations cost page faults); the result is one of the two.
    """
    width = x.shape[1]
    total = width.bit_length() - 1
    stride, done = 1, 0
    while done < total:
        k = min(_RADIX_LOG2, total - done)
        block = 1 << k
        h = _hadamard(k, x.dtype, x.device)
        out = torch.empty_like(x) if spare is None else spare
        if stride == 1:  # contiguous blocks of 2**k: one matrix product
            torch.matmul(x.view(-1, block), h, out=out.view(-1, block))
        else:  # [groups, 2**k, stride]: the product along the middle axis (H is symmetric)
            torch.matmul(h, x.view(-1, block, stride), out=out.view(-1, block, stride))
        x, spare = out, x
        stride *= block
        done += k
    return x


def rotate_raw(
    x: torch.Tensor,
    signs: torch.Tensor,
    workspace: torch.Tensor | None = None,
    factor: float = 1.0,
) -> torch.Tensor:
    """Returns factor * H D pad(x) per row, unnormalised, in x's dtype.

    The signs (times `factor`, in x's dtype) multiply x before the transform: with factor 1
    exactly. Given `workspace` (contiguous [2, >= n, d'] of x's dtype and device), the result
    is a view of it and nothing is allocated.

    Raises:
        ValueError: If x is not 2-D or wider than the signs.
    """
    padded = signs.shape[-1]
    if x.dim() != 2 or x.shape[1] > padded:
        raise ValueError(f"x must be [n, d] with d <= {padded}, got {tuple(x.shape)}")
    n, dim = x.shape
    signs = signs[:dim].to(dtype=x.dtype, device=x.device)
    if factor != 1.0:
        signs = signs * factor
    if workspace is None:
        flipped, spare = torch.empty(n, padded, dtype=x.dtype, device=x.device), None
    else:
        flipped, spare = workspace[0, :n], workspace[1, :n]
    if dim < padded:
        flipped[:, dim:] = 0
    torch.mul(x, signs, out=flipped[:, :dim])
    return fwht(flipped, spare)


def rotate_scaled(x: torch.Tensor, signs: torch.Tensor, factor: float) -> torch.Tensor:
    """Returns `rotate(x, signs) * factor` in float64.

    The transform runs in x's dtype; the factor (and the normalisation) multiply in float64.

    Raises:
        ValueError: If x is not 2-D or wider than the signs.
    """
    raw = rotate_raw(x, signs)
    return raw.to(torch.float64).mul_(factor / math.sqrt(signs.shape[-1]))


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Pads each row to d' = len(signs), multiplies by the signs, applies the orthonormal WHT.

    Args:
        x: [n, d] floating point, any device; d <= d'.
        signs: [d'] +-1, d' a power of 2 (`rotation_signs`).

    Returns:
        [n, d'] of x's dtype and device: H D pad(x) / sqrt(d') per row; the L2 norm of each row
        is preserved (up to rounding in x's dtype).

    Raises:
        ValueError: If x is not 2-D or wider than the signs.
    """
    return rotate_raw(x, signs).mul_(signs.shape[-1] ** -0.5)


def unrotate(y: torch.Tensor, signs: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of `rotate`: WHT (its own inverse), the signs again, then the first `dim`.

    Args:
        y: [..., d'] floating point, d' = len(signs).
        signs: The signs `rotate` used.
        dim: The original dimension d <= d'.

    Returns:
        [..., dim] of y's dtype and device.

    Raises:
        ValueError: If y's last axis is not d' or dim is out of range.
    """
    padded = signs.shape[-1]
    if y.shape[-1] != padded or not 1 <= dim <= padded:
        raise ValueError(f"y must be [..., {padded}] and 1 <= dim <= {padded}, got {dim}")
    flat = fwht(y.reshape(-1, padded))
    weights = signs[:dim].to(dtype=torch.float64) / math.sqrt(padded)
    out = flat[:, :dim] * weights.to(dtype=y.dtype, device=y.device)
    return out.reshape(*y.shape[:-1], dim)
