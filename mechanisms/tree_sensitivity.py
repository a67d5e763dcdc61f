"""Exact sensitivity sens(C; k, b)^2 of binary-tree aggregation, by a dynamic programme.

A participation pattern is a set of at most k rounds in [0, n), any two at least b apart, and
C has one row per complete dyadic interval (tree node) of each segment. Pure functions of plain
integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mechanisms.participation import participations_that_fit
from mechanisms.sensitivity import check_bound

_NEG = -(1 << 60)  # "infeasible" in the integer tables of the dynamic programme


@dataclass(frozen=True)
class _Block:
    """Summary of a block of consecutive rounds for the tree dynamic programme.

    tables[c - 1][a, t] is the largest sum of count^2 over the tree nodes inside the block, over
    placements of c rounds in the block (pairwise >= b apart) whose first round is at offset
    >= a and whose last round is >= t rounds before the block's end (offset <= size - 1 - t);
    a and t range over [0, min(b, size)), so index b - 1 stands for ">= b - 1". _NEG marks
    infeasible entries.
    """

    size: int
    tables: tuple[np.ndarray, ...]


def _shift(table: np.ndarray, lead: int, trail: int, dim: int) -> np.ndarray:
    """A block's table after `lead` empty rounds are put before it and `trail` after it.

    Threshold a maps to max(0, a - lead) (likewise t): edge padding repeats row / column 0.
    """
    lead, trail = min(lead, dim), min(trail, dim)
    padded = np.pad(table, ((lead, 0), (trail, 0)), mode="edge")[:dim, :dim]
    if padded.shape == (dim, dim):
        return padded
    out = np.full((dim, dim), _NEG, dtype=np.int64)
    out[: padded.shape[0], : padded.shape[1]] = padded
    return out


def _join(left: np.ndarray, right: np.ndarray, b: int, dim: int) -> np.ndarray:
    """(max,+) join of a left and a right table, each with >= 1 round, across their border.

    The last left round and the first right round are tl + ar + 1 apart (tl, ar their gaps to
    the border), so the pair is allowed iff tl >= tau and ar >= b - 1 - tau for some tau in
    [0, b - 1]: result[a, t] = max_tau left[a, tau] + right[b - 1 - tau, t]. Rows of `left` do
    not increase in tau and right[b - 1 - tau, t] does not decrease in tau, so for each value v
    only the largest tau with left[a, tau] >= v matters: loop over min(#values, #tau) items.
    """
    dl, dr = left.shape[0], right.shape[0]
    lo = max(0, b - dr)  # tau >= lo keeps the right index b - 1 - tau < dr; tau < dl too
    out = np.full((dim, dim), _NEG, dtype=np.int64)
    if lo >= dl:
        return out
    sub = left[:, lo:]  # [dl, m], columns tau = lo .. dl - 1
    rows = right[b - 1 - np.arange(lo, dl)]  # [m, dr], row j for tau = lo + j
    best = np.full((dl, dr), _NEG, dtype=np.int64)
    values = np.unique(sub[sub > _NEG])
    if len(values) < sub.shape[1]:
        for v in values:
            last = (sub >= v).sum(axis=1) - 1  # largest j with sub[a, j] >= v
            ok = last >= 0
            best[ok] = np.maximum(best[ok], v + rows[last[ok]])
    else:
        for j in range(sub.shape[1]):
            best = np.maximum(best, sub[:, j : j + 1] + rows[j][None, :])
    best[best < 0] = _NEG  # feasible values are >= 1
    out[:dl, :dr] = best
    return out


def _concat(x: _Block, y: _Block, k: int, b: int) -> _Block:
    """The block x followed by y; no tree node spans both (a node is added by the caller)."""
    size = x.size + y.size
    dim = min(b, size)
    cmax = participations_that_fit(size, b, k)
    tables = []
    for c in range(1, cmax + 1):
        best = np.full((dim, dim), _NEG, dtype=np.int64)
        if c <= len(x.tables):
            best = np.maximum(best, _shift(x.tables[c - 1], 0, y.size, dim))
        if c <= len(y.tables):
            best = np.maximum(best, _shift(y.tables[c - 1], x.size, 0, dim))
        for cx in range(max(1, c - len(y.tables)), min(c - 1, len(x.tables)) + 1):
            best = np.maximum(best, _join(x.tables[cx - 1], y.tables[c - cx - 1], b, dim))
        tables.append(best)
    return _Block(size, tuple(tables))


def _perfect_tree(height: int, k: int, b: int, memo: dict[int, _Block]) -> _Block:
    """A complete subtree over 2^height rounds; all such subtrees share one summary."""
    if height in memo:
        return memo[height]
    size = 1 << height
    if size <= b:  # holds at most one round, which counts 1 in each of the height + 1 levels
        grid = np.add.outer(np.arange(size), np.arange(size))
        block = _Block(size, (np.where(grid <= size - 1, height + 1, _NEG).astype(np.int64),))
    else:
        child = _perfect_tree(height - 1, k, b, memo)
        joined = _concat(child, child, k, b)
        block = _Block(
            size, tuple(t + np.where(t > _NEG, c * c, 0) for c, t in enumerate(joined.tables, 1))
        )
    memo[height] = block
    return block


def _forest(length: int, k: int, b: int, memo: dict[int, _Block]) -> _Block:
    """One tree segment of `length` rounds: complete subtrees by the binary digits of length."""
    block: _Block | None = None
    for height in reversed(range(length.bit_length())):
        if length >> height & 1:
            tree = _perfect_tree(height, k, b, memo)
            block = tree if block is None else _concat(block, tree, k, b)
    assert block is not None
    return block


def tree_sensitivity_squared(n: int, k: int, b: int, restart_every: int | None = None) -> float:
    """Exact sens^2 of binary-tree aggregation over n rounds under a (k, b) bound.

    The tree has one node per complete dyadic interval [j 2^l, (j + 1) 2^l) inside [0, n), and
    C[node, i] = 1 iff i is in the node, so sens^2 = max over patterns of the sum over nodes of
    (pattern rounds in the node)^2. With `restart_every` = R, rounds are cut into consecutive
    segments of R rounds (the last one shorter), each with its own tree, and the separation
    applies across segment borders too.

    Algorithm (exact): the nodes of a segment form perfect binary trees laid left to right by
    the binary digits of its length, so the rounds are a concatenation of blocks. A block is
    summarised by a table indexed by (c, a, t): the best node sum inside it for c rounds whose
    first is >= a rounds after its start and last >= t rounds before its end, a and t capped at
    b - 1. A pattern of a concatenation X Y is one of X and one of Y whose only possibly too
    close pair is (last of X, first of Y), at distance t_X + a_Y + 1: allowed iff
    min(t_X, b - 1) + a_Y >= b - 1, so the capped tables suffice and the join is an exact
    (max,+) product over the border threshold. A tree node adds c^2 to the join of its
    children. A node of <= b rounds holds at most one round, which counts once per level.
    Complete subtrees of equal height share one table, and the R-round segments repeat, so
    they are joined by doubling (the join is associative). The (max,+) product uses that the
    tables are monotone: per row only the last threshold of each distinct value can win.
    Cost: O(log n) joins, each of O(k^2) (max,+) products costing O(min(b, V) min(b, n)^2),
    V the number of distinct values in a table (a small integer range); k == 1 or b >= n
    (one round) is answered directly.

    Args:
        n: Number of rounds.
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b), b >= 1.
        restart_every: Rounds per tree, or None for one tree over all n rounds.

    Returns:
        max over patterns of || C sum_{i in pi} e_i ||^2 (an integer, as a float).

    Raises:
        ValueError: If n < 0, k < 0, b < 1 or restart_every < 1.

    Guarantees:
        DP-FTRL with tree aggregation (Kairouz et al. 2021, "Practical and private (deep)
        learning without sampling or shuffling", App. D) releases a rho-zCDP sequence with
        rho = this value / (2 sigma^2), assuming the tree holds exactly the complete dyadic
        intervals and every client keeps the (k, b) bound.
    """
    check_bound(k, b)
    if n < 0 or (restart_every is not None and restart_every < 1):
        raise ValueError(f"need n >= 0 and restart_every >= 1, got {n}, {restart_every}")
    if n == 0 or k == 0:
        return 0.0
    seg = n if restart_every is None else min(restart_every, n)
    if k == 1 or b >= n:  # one round: one node per level of the tallest complete subtree
        return float(seg.bit_length())
    memo: dict[int, _Block] = {}
    reps, rest = divmod(n, seg)
    total: _Block | None = None
    power = _forest(seg, k, b, memo)
    while reps:
        if reps & 1:
            total = power if total is None else _concat(total, power, k, b)
        reps >>= 1
        if reps:
            power = _concat(power, power, k, b)
    assert total is not None
    if rest:
        total = _concat(total, _forest(rest, k, b, memo), k, b)
    return float(max(int(t[0, 0]) for t in total.tables))
