"""Sensitivity sens(C; k, b)^2 of noise encoders C under a (k, b) participation bound.

A participation pattern is a set of at most k rounds in [0, n), any two at least b apart
(|i - j| >= b), and sens(C; k, b)^2 = max over patterns pi of || C sum_{i in pi} e_i ||^2, in
units of the clip norm. Every function here is pure and takes plain integers or arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_NEG = -(1 << 60)  # "infeasible" in the integer tables of the tree dynamic programme


def _check_bound(k: int, b: int) -> None:
    if k < 0 or b < 1:
        raise ValueError(f"need k >= 0 and b >= 1, got k={k}, b={b}")


def _best_pattern_sum(weights: np.ndarray, k: int, b: int) -> np.ndarray:
    """Max sum of weights[..., i] over patterns (<= k rounds, >= b apart), per leading index.

    Weights must be non-negative, so "at most k" equals the best over exactly j <= k rounds.
    O(n k) per row: best_j[i] = w[i] + max_{i' <= i - b} best_{j-1}[i'] via prefix maxima.
    """
    n = weights.shape[-1]
    if n == 0 or k == 0:
        return np.zeros(weights.shape[:-1])
    last = weights.copy()  # best over patterns of j + 1 rounds whose last round is i
    best = last.max(axis=-1)
    for _ in range(1, min(k, n)):
        shifted = np.full_like(weights, -np.inf)
        if b < n:
            shifted[..., b:] = np.maximum.accumulate(last, axis=-1)[..., : n - b]
        last = weights + shifted
        best = np.maximum(best, last.max(axis=-1))
    return np.maximum(best, 0.0)


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
    cmax = min(k, (size - 1) // b + 1)  # most rounds >= b apart that fit in `size` rounds
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
    _check_bound(k, b)
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


def banded_sensitivity_squared(column_norms_sq: np.ndarray, bands: int, k: int, b: int) -> float:
    """Exact sens^2 of a lower-triangular banded C from its squared column norms.

    With C[i, j] = 0 whenever i - j >= bands, column j is supported on rows [j, j + bands), so
    columns of rounds >= b >= bands apart have disjoint supports and || C sum_{i in pi} e_i ||^2
    = sum_{i in pi} ||C e_i||^2. The maximum over patterns is an O(n k) dynamic programme over
    positions (prefix maxima of the best sum of j norms ending at each round).

    Args:
        column_norms_sq: ||C e_i||^2 for i in [0, n), non-negative, shape [n].
        bands: Number of bands of C (C[i, j] = 0 when i - j >= bands), >= 1.
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b).

    Returns:
        The exact sensitivity squared.

    Raises:
        ValueError: If bands > b (then use `general_sensitivity_squared`), or bad inputs.

    Guarantees:
        Exact for banded C with bands <= b (Choquette-Choo et al. 2023, "(Amplified) banded
        matrix factorizations: a unified approach to private training"), assuming C really is
        lower-triangular with `bands` bands and the norms are its column norms.
    """
    _check_bound(k, b)
    norms = np.asarray(column_norms_sq, dtype=np.float64)
    if norms.ndim != 1 or np.any(norms < 0) or not np.all(np.isfinite(norms)):
        raise ValueError("column_norms_sq must be a 1-D array of finite non-negative values")
    if bands < 1 or bands > b:
        raise ValueError(f"need 1 <= bands <= b, got bands={bands}, b={b}")
    return float(_best_pattern_sum(norms, k, b))


def toeplitz_sensitivity_squared(coeffs: np.ndarray, n: int, k: int, b: int) -> float:
    """Exact sens^2 of the n x n lower-triangular Toeplitz C with first column `coeffs`.

    For non-negative, non-increasing c_0 >= c_1 >= ... >= 0 the worst pattern is 0, b, 2b, ...
    (as many of k rounds as fit), so sens^2 = || sum_j C e_{jb} ||^2, computed in O(n k)
    without building C.

    Args:
        coeffs: c_0, c_1, ..., at least n of them (only the first n are used).
        n: Number of rounds.
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b).

    Returns:
        The exact sensitivity squared.

    Raises:
        ValueError: If the first n coefficients are not non-negative and non-increasing, or
            there are fewer than n of them.

    Guarantees:
        Exact under the stated assumption on the coefficients (McMahan, Xu, Zhang 2024,
        "Efficient and near-optimal noise generation for streaming differential privacy",
        Theorem 2).
    """
    _check_bound(k, b)
    c = np.asarray(coeffs, dtype=np.float64).ravel()
    if n < 0 or len(c) < n:
        raise ValueError(f"need n >= 0 and at least n={n} coefficients, got {len(c)}")
    c = c[:n]
    if np.any(c < 0) or np.any(np.diff(c) > 0) or not np.all(np.isfinite(c)):
        raise ValueError("Toeplitz coefficients must be finite, non-negative, non-increasing")
    column_sum = np.zeros(n)
    for start in range(0, min(n, k * b), b):
        column_sum[start:] += c[: n - start]
    return float(column_sum @ column_sum)


def general_sensitivity_squared(C: np.ndarray, k: int, b: int) -> float:  # noqa: N803
    """An upper bound on sens^2 for any encoder C, exact when C^T C is diagonal.

    With A = |C^T C| (entrywise), let r_i = max over patterns pi' containing i of
    sum_{j in pi'} A_ij (row i's best pattern-constrained sum, computed by the O(n k) pattern
    programme on the weights A_ij for |i - j| >= b). The bound is max over patterns pi of
    sum_{i in pi} r_i (the same programme on the weights r). It holds because for every
    pattern pi, || C sum_{i in pi} e_i ||^2 = sum_{i, j in pi} G_ij <= sum_{i in pi}
    sum_{j in pi} A_ij <= sum_{i in pi} r_i. When G is diagonal, r_i = G_ii and both
    inequalities are equalities. Cost O(n^2 k) time and O(n^2) memory.

    Args:
        C: The encoder, shape [m, n].
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b).

    Returns:
        An upper bound on the sensitivity squared.

    Guarantees:
        Always >= the true sens(C; k, b)^2, for any C, by the chain of inequalities above
        (sensitivity as defined for multi-participation matrix mechanisms by Choquette-Choo et
        al. 2023, "(Amplified) banded matrix factorizations: a unified approach to private
        training"); equal to it when C^T C is diagonal, or when only one round fits.
    """
    _check_bound(k, b)
    if k == 0 or C.shape[1] == 0:
        return 0.0
    a = np.abs(C.T @ C)
    n = a.shape[0]
    offsets = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    others = np.where(offsets >= b, a, 0.0)  # zero weight is harmless: a skipped round
    rows = np.diag(a) + _best_pattern_sum(others, k - 1, b)
    return float(_best_pattern_sum(rows, k, b))


def brute_force_sensitivity_squared(C: np.ndarray, k: int, b: int) -> float:  # noqa: N803
    """Exact sens^2 of any C by enumerating every participation pattern (for tests).

    Args:
        C: The encoder, shape [m, n] with n <= 16.
        k: Most participations per client.
        b: Least separation between two participations (|i - j| >= b).

    Returns:
        max over patterns pi of || C sum_{i in pi} e_i ||^2.

    Raises:
        ValueError: If n > 16.

    Guarantees:
        Exact by definition (no assumption on C); cost exponential in n.
    """
    _check_bound(k, b)
    n = C.shape[1]
    if n > 16:
        raise ValueError(f"brute force is limited to n <= 16, got {n}")
    patterns: list[tuple[int, ...]] = [()]
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(min(k, n)):
        frontier = [(*p, i) for p in frontier for i in range(p[-1] + b if p else 0, n)]
        patterns.extend(frontier)
    indicator = np.zeros((len(patterns), n))
    for row, p in enumerate(patterns):
        indicator[row, list(p)] = 1.0
    return float(((indicator @ C.T) ** 2).sum(axis=1).max())
