"""DP-FTRL tree aggregation: noise whose prefix sums grow like log t, not t."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import require
from mechanisms.base import NoiseState, NoisyMechanism, add_noise, standard_normal
from mechanisms.tree_sensitivity import tree_sensitivity_squared


def honaker_variances(levels: int) -> list[float]:
    """Variances (in units of sigma^2) of the bottom-up estimates of nodes of levels 0..levels-1.

    A leaf's estimate is its noisy value: v_0 = 1. A node of level l >= 1 combines its own
    noisy value (variance 1) with the sum of its two children's estimates (independent,
    variance 2 v_{l-1}) by inverse-variance weighting, which gives

        1 / v_l = 1 + 1 / (2 v_{l-1}),   i.e.   v_l = 2^l / (2^(l+1) - 1),

    and the weight of the node's own value is v_l, that of its children's sum 1 - v_l.
    """
    variances = [1.0]
    while len(variances) < levels:
        variances.append(1.0 / (1.0 + 1.0 / (2.0 * variances[-1])))
    return variances[:levels]


def _top_level(local_round: int) -> int:
    """The level of the largest node that completes at `local_round`: the trailing zeros of t+1."""
    count = local_round + 1
    return (count & -count).bit_length() - 1


def _set_bits(count: int) -> list[int]:
    """The levels of the dyadic decomposition of [0, count)."""
    return [level for level in range(count.bit_length()) if count >> level & 1]


@dataclass(frozen=True)
class TreeMechanism(NoisyMechanism):
    """DP-FTRL's tree aggregation: prefix-sum noise of variance ~ sigma^2 log2(t), not sigma^2 t.

    Kairouz et al. 2021, "Practical and Private (Deep) Learning without Sampling or Shuffling".
    The tree has one node per complete dyadic interval of rounds [j 2^l, (j+1) 2^l), released
    (with fresh noise z ~ N(0, I) from (seed, NOISE, [segment,] l, j)) once its last round has
    elapsed. The prefix sum after round t is estimated from the nodes of the dyadic
    decomposition of [0, t], and round t releases the difference of consecutive prefix
    estimates: x_t + sigma (e_t - e_{t-1}), where e_t is the noise of prefix estimate t (e_{-1}
    = 0). Model updates that are FTRL on these released values see prefix-sum noise of variance
    sigma^2 popcount(t+1) instead of sigma^2 (t+1).

    With `efficient`, each node's estimate is Honaker's (2015, "Efficient Use of Differentially
    Private Binary Trees") bottom-up estimator, as used online in Kairouz et al. 2021: the node's
    own noisy value and its children's summed estimates, inverse-variance weighted (see
    `honaker_variances`); the top-down pass needs future nodes and is not available online.
    Prefix variance at round t is then sigma^2 sum over the set bits l of t+1 of
    2^l / (2^(l+1) - 1) (-> sigma^2 popcount(t+1) / 2 for high bits).

    With `restart_every` = R, a fresh tree starts every R rounds: prefix sums restart with each
    segment [s R, (s+1) R) (the "tree restarts" of Kairouz et al. 2021), and the noise of a
    segment's first round is just its first prefix noise.

    Guarantees:
        The released sequence is a post-processing of the noisy node values, the Gaussian
        mechanism C x + sigma z with C [m, n] the node-interval indicators of `matrices`. Each
        row of C involves only elapsed rounds, so the guarantee holds for adaptively chosen
        updates (Kairouz et al. 2021; Denisov et al. 2022). With user-level replace-with-zero
        adjacency, updates of L2 norm <= 1 (in clip norms), and at most k participations any
        two >= b rounds apart, the release is rho-zCDP with rho = sensitivity_squared(n, k, b)
        / (2 sigma^2), the same for both estimators (they decode the same C). A state records
        the tree (restarts, estimator) its buffers belong to, and no other tree continues it.
        Assumes secret noise: seeded noise (the default) is known to whoever knows the seed;
        `noise_seed="secret"` draws it from the OS (`mechanisms.base.NoiseSeed`).

    Memory:
        Between rounds, popcount(t'+1) float32 d-vectors, t' the round within its segment: at
        most floor(log2(T + 1)) for T rounds (T = R with restarts, and none after a segment's
        last round). While privatizing, at most two more: the new node, and either the output
        (which reuses the vector of a node that leaves the decomposition when one does, i.e.
        when t' is odd) or, with `efficient`, a scratch draw. The state holds these vectors,
        by level (buffer "2" is the node of level 2), and the next round index. Each round
        draws one d-vector (naive) or top level + 1 (efficient, 2 on average): every node of
        the tree once.

    Attributes:
        noise_multiplier: sigma, the noise standard deviation in units of the clip norm (> 0).
        seed: Seed of the noise stream (with noise_seed="seeded").
        noise_seed: "seeded" draws the noise from `seed` (reproducible; the default);
            "secret" from a 128-bit seed drawn from the OS and never logged (`NoiseSeed`).
        restart_every: Rounds per tree (R), or None for one tree over the whole run.
        efficient: Use Honaker's bottom-up estimator instead of the plain node sums.
    """

    restart_every: int | None = None
    efficient: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        every = self.restart_every
        require(every is None or every >= 1, "restart_every", f"must be >= 1, got {every}")

    def _factorisation_digest(self) -> str:
        """The tree the stored node noises belong to: its restarts and its estimator."""
        return f"tree-restart{self.restart_every}-{'honaker' if self.efficient else 'plain'}"

    def _locate(self, round_idx: int) -> tuple[tuple[int, ...], int]:
        """(the key prefix of the round's tree, the round's index within it)."""
        if self.restart_every is None:
            return (), round_idx
        segment, local = divmod(round_idx, self.restart_every)
        return (segment,), local

    def privatize(
        self, total: torch.Tensor, round_idx: int, state: NoiseState
    ) -> tuple[torch.Tensor, NoiseState]:
        """Returns x_t + sigma (e_t - e_{t-1}), streaming the nodes that complete at round t.

        The nodes of levels 0..v complete at round t (v = trailing zeros of t'+1); the prefix
        decomposition drops its nodes of levels 0..v-1 (stored) and gains the one of level v.

        Raises:
            ValueError: If `state` cannot privatize round `round_idx` (see `_check`), or its
                buffers are not the nodes of the round's decomposition.
        """
        self._check(total, round_idx, state)
        prefix, local = self._locate(round_idx)
        expected = [str(level) for level in _set_bits(local)]
        if sorted(state.buffers) != sorted(expected):
            raise ValueError(
                f"round {round_idx} needs buffers of levels {expected}, got {sorted(state.buffers)}"
            )
        buffers = dict(state.buffers)
        top, count = _top_level(local), local + 1

        def draw(level: int, out: torch.Tensor | None = None) -> torch.Tensor:
            return standard_normal(
                state.dim, state.seed, *prefix, level, (count >> level) - 1, out=out
            )

        # The nodes of levels < top leave the decomposition: the left children of the new node.
        leaving = [buffers.pop(str(level)) for level in range(top)]
        if self.efficient:
            weights = honaker_variances(top + 1)
            node = draw(0)
            scratch = torch.empty_like(node) if top else None
            for level in range(1, top + 1):  # (1 - w) (left + right) + w z, w = v_level
                node.add_(leaving[level - 1]).lerp_(draw(level, scratch), weights[level])
        else:
            node = draw(top)
        buffers[str(top)] = node
        if self.restart_every is not None and count == self.restart_every:
            buffers.clear()
        after = dataclasses.replace(state, round=round_idx + 1, buffers=buffers)
        if not leaving:
            return add_noise(total, node, self.noise_multiplier), after
        noise = torch.sub(node, leaving[0], out=leaving[0])
        for buffer in leaving[1:]:
            noise.sub_(buffer)
        return add_noise(total, noise, self.noise_multiplier, reuse=True), after

    def _nodes(self, rounds: int) -> Iterator[tuple[int, int, int]]:
        """(segment, level, index) of the nodes in the order they complete, lower levels first."""
        every = self.restart_every or max(rounds, 1)
        for start in range(0, rounds, every):
            for local in range(min(every, rounds - start)):
                for level in range(_top_level(local) + 1):
                    yield start // every, level, ((local + 1) >> level) - 1

    def row_keys(self, rounds: int) -> list[tuple[int, ...]]:
        """The NOISE-stream keys of the rows of `matrices(rounds)`'s C, in order."""
        restarts = self.restart_every is not None
        return [(s, lv, j) if restarts else (lv, j) for s, lv, j in self._nodes(rounds)]

    def matrices(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """C [m, n]: one row per complete node (its interval's indicator), in completion order.

        C_inv [n, m] = D P W: W maps node noises to the noises of the node estimates (I, or
        Honaker's recursion), P sums the estimates of each prefix's decomposition, and D takes
        differences of consecutive prefixes within a segment. P W C = the prefix-sum matrix
        (within segments), since every estimate is unbiased, so C_inv @ C = I.
        """
        every = self.restart_every or max(rounds, 1)
        nodes = list(self._nodes(rounds))
        row = {node: i for i, node in enumerate(nodes)}
        encoder = np.zeros((len(nodes), rounds))
        estimates = np.eye(len(nodes))
        variances = honaker_variances(max(rounds, 1).bit_length())
        for i, (segment, level, index) in enumerate(nodes):
            start = segment * every + (index << level)
            encoder[i, start : start + (1 << level)] = 1.0
            if self.efficient and level > 0:
                children = estimates[row[segment, level - 1, 2 * index]]
                children = children + estimates[row[segment, level - 1, 2 * index + 1]]
                estimates[i] = variances[level] * estimates[i] + (1 - variances[level]) * children
        decoder = np.zeros((rounds, len(nodes)))
        for t in range(rounds):
            segment, local = divmod(t, every)
            count = local + 1
            for level in _set_bits(count):
                decoder[t] += estimates[row[segment, level, (count >> level) - 1]]
            if local > 0:
                decoder[t] -= sum(
                    estimates[row[segment, level, (local >> level) - 1]]
                    for level in _set_bits(local)
                )
        return encoder, decoder

    def sensitivity_squared(
        self, rounds: int, max_participations: int, min_separation: int
    ) -> float:
        """Max over (k, b) participation patterns of ||C sum_i e_i||^2, for the tree's C."""
        return float(
            tree_sensitivity_squared(rounds, max_participations, min_separation, self.restart_every)
        )
