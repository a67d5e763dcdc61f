"""engine/training/models/layout.py and the sparse and MoE aggregators, worker to release."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from torch import nn

from common.errors import ConfigError
from engine.aggregation import (
    Aggregator,
    DenseAggregator,
    MoEAggregator,
    MoEPartial,
    PackedPartials,
    Partial,
    SparseAggregator,
    SparsePartial,
)
from engine.aggregation.sparse import add_rows
from engine.app.metric_keys import Release, declared, releasable
from engine.population import ClientData, Population
from engine.runtime import ClientWorker, ParameterServer
from engine.training import MLP, ClientUpdate, LocalTraining, ParameterLayout
from engine.training.models.layout import RowBlock
from mechanisms.clipping import FixedClipping, NoClipping, clip_update
from mechanisms.gaussian import GaussianMechanism
from mechanisms.noiseless import NoNoise
from strategies import FedAvg


class BagOfTokens(nn.Module):
    """Mean of the embeddings of x's token ids (floats), then a linear head."""

    def __init__(self, vocab: int = 40, width: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2))
        self.emb = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, classes)

    def row_sparse_parameters(self) -> tuple[str, ...]:
        return ("emb.weight",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x.long()).mean(1) * self.scale[0])


class HardMoE(nn.Module):
    """A shared layer, then expert (x[:, 0] // 10) mod E per example (no gradient to the rest)."""

    def __init__(self, features: int = 3, experts: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(features, 4)
        self.experts = nn.ModuleList(nn.Linear(4, classes) for _ in range(experts))
        self.out_bias = nn.Parameter(torch.zeros(classes))

    def expert_parameters(self) -> list[list[str]]:
        return [[f"experts.{e}.weight", f"experts.{e}.bias"] for e in range(len(self.experts))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.inp(x))
        route = torch.div(x[:, 0], 10, rounding_mode="floor").long() % len(self.experts)
        outs = torch.stack([expert(hidden) for expert in self.experts], dim=1)
        return outs[torch.arange(len(x)), route] + self.out_bias


class TokenClients(Population):
    """Client c holds 6 examples of 3 'tokens' from a window of 5 ids starting at 3c mod 35."""

    num_clients = 12
    num_classes = 3
    num_features = 3

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        return np.full(len(ids), 6, dtype=np.int64)

    def client_data(self, client_id: int) -> ClientData:
        rng = np.random.default_rng(client_id)
        x = (3 * client_id) % 35 + rng.integers(0, 5, (6, 3))
        return ClientData(x=x.astype(np.float32), y=rng.integers(0, 3, 6).astype(np.int64))

    def held_out_ids(self, count: int) -> np.ndarray:
        return np.arange(self.num_clients, self.num_clients + count)


def _update(delta: np.ndarray, n: int = 4, **stats: np.ndarray) -> ClientUpdate:
    return ClientUpdate(delta.astype(np.float32), n, loss_sum=1.0, examples_seen=n, stats=stats)


def _sparse_delta(layout: ParameterLayout, rng: np.random.Generator, rows: int) -> np.ndarray:
    """Dense noise outside the row blocks; `rows` random rows of each block nonzero."""
    delta = rng.standard_normal(layout.dim).astype(np.float32)
    for block in layout.row_blocks:
        matrix = delta[block.offset : block.stop].reshape(block.rows, block.cols)
        keep = rng.choice(block.rows, size=min(rows, block.rows), replace=False)
        matrix[np.setdiff1d(np.arange(block.rows), keep)] = 0
    return delta


def _moe_delta(layout: ParameterLayout, rng: np.random.Generator, experts: list[int]):
    delta = rng.standard_normal(layout.dim).astype(np.float32)
    for e, spans in enumerate(layout.experts):
        if e not in experts:
            for start, stop in spans:
                delta[start:stop] = 0
    return delta


def _partial(aggregator: Aggregator, layout, updates, clip: float | None = None) -> Partial:
    """What a worker sums: clipped, weight 1 with a clip norm, the aggregator's weight without."""
    partial = aggregator.zeros(layout.dim, layout)
    partial.clip_norm = clip
    for update in updates:
        if clip is None:
            partial.add(update, aggregator.client_weight(update))
        else:
            delta, bit = clip_update(update.delta, clip)
            partial.add(_update(delta, update.num_examples, **update.stats), 1.0, bit)
    return partial


# ----------------------------------------------------------------------------- layout


def test_layout_offsets_row_blocks_and_experts():
    layout = ParameterLayout.of(BagOfTokens(vocab=40, width=3))
    assert layout.names == ("scale", "emb.weight", "head.weight", "head.bias")
    assert layout.offsets == (0, 2, 122, 131) and layout.dim == 134
    assert layout.row_blocks == (RowBlock("emb.weight", 2, 40, 3),)
    assert layout.outside_rows == ((0, 2), (122, 134))
    assert layout.experts == () and layout.outside_experts == ((0, 134),)
    moe = ParameterLayout.of(HardMoE(features=3, experts=3, classes=3))
    # A module's own parameters come first: out_bias (3), then inp (12 + 4); each expert's
    # weight (12) and bias (3) are adjacent, so one span each.
    assert moe.names[:3] == ("out_bias", "inp.weight", "inp.bias")
    assert moe.experts == (((19, 34),), ((34, 49),), ((49, 64),))
    assert moe.outside_experts == ((0, 19),)
    assert moe.span("out_bias") == (0, 3)
    assert pickle.loads(pickle.dumps(moe)) == moe
    plain = ParameterLayout.of(MLP(num_features=4, num_classes=3))
    assert plain.row_blocks == () and plain.experts == ()


def test_layout_rejects_unknown_and_overlapping_declarations():
    class Twice(BagOfTokens):
        def row_sparse_parameters(self) -> tuple[str, ...]:
            return ("emb.weight", "emb.weight")

    class Unknown(BagOfTokens):
        def row_sparse_parameters(self) -> tuple[str, ...]:
            return ("embedding",)

    class Shared(HardMoE):
        def expert_parameters(self) -> list[list[str]]:
            return [["experts.0.weight", "inp.bias"], ["experts.1.weight", "inp.bias"]]

    for model, match in (
        (Twice(), "overlap"),
        (Unknown(), "not a parameter"),
        (Shared(), "overlap"),
    ):
        with pytest.raises(ValueError, match=match):
            ParameterLayout.of(model)
    with pytest.raises(ValueError, match="starts at"):
        ParameterLayout(names=("a", "b"), shapes=((2,), (3,)), offsets=(0, 3), dim=5)
    with pytest.raises(ValueError, match="dim"):
        ParameterLayout(names=("a",), shapes=((2,),), offsets=(0,), dim=3)


# ----------------------------------------------------------------------------- sparse


def test_sparse_partial_unites_rows_and_reports_what_travels():
    layout = ParameterLayout.of(BagOfTokens(vocab=40, width=3))
    offset = layout.row_blocks[0].offset
    first, second = np.zeros(layout.dim, np.float32), np.zeros(layout.dim, np.float32)
    first[[0, offset + 3 * 1, offset + 3 * 3 + 2]] = [1.0, 2.0, 3.0]  # rows 1 and 3
    second[[1, offset + 3 * 3, offset + 3 * 7 + 1]] = [4.0, 5.0, 6.0]  # rows 3 and 7
    aggregator = SparseAggregator(weighting="uniform")
    left = _partial(aggregator, layout, [_update(first)])
    right = _partial(aggregator, layout, [_update(second)])
    assert isinstance(left, SparsePartial) and isinstance(right, SparsePartial)
    assert left.rows[0].tolist() == [1, 3] and right.rows[0].tolist() == [3, 7]
    total = aggregator.reduce([left, right], layout.dim)
    assert isinstance(total, SparsePartial)
    assert total.rows[0].dtype == np.int64 and total.rows[0].tolist() == [1, 3, 7]
    np.testing.assert_array_equal(total.values[0], [[2, 0, 0], [5, 0, 3], [0, 6, 0]])
    np.testing.assert_array_equal(total.dense_sum(), first + second)
    assert total.metrics() == {"train/rows_touched": 3.0}
    # 14 dense float32, 3 int64 rows, 3 x 3 float32 values: far less than the 134 x 4 bytes.
    assert total.nbytes == 14 * 4 + 3 * 8 + 9 * 4
    # Each client uploaded its dense part and its own two rows (index and values).
    assert total.upload_bytes == 2 * (14 * 4 + 2 * 8 + 2 * 3 * 4)
    assert left.rows[0].tolist() == [1, 3]  # reduce left its inputs alone
    with pytest.raises(ValueError, match="same layout"):
        total.merge(DenseAggregator().zeros(layout.dim))


@given(
    chunks=st.lists(st.integers(0, 5), max_size=6),
    rows=st.integers(0, 12),
    weighting=st.sampled_from(["examples", "uniform"]),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_sparse_and_moe_sums_equal_the_dense_sum(chunks, rows, weighting, seed):
    rng = np.random.default_rng(seed)
    sparse_layout = ParameterLayout.of(BagOfTokens(vocab=12, width=2))
    moe_layout = ParameterLayout.of(HardMoE(experts=4))
    cases = (
        (
            SparseAggregator(weighting),
            sparse_layout,
            lambda: _sparse_delta(sparse_layout, rng, rows),
        ),
        (MoEAggregator(weighting), moe_layout, lambda: _moe_delta(moe_layout, rng, [rows % 4])),
    )
    dense = DenseAggregator(weighting)
    for aggregator, layout, draw in cases:
        groups = [[_update(draw(), int(rng.integers(1, 9))) for _ in range(n)] for n in chunks]
        structured = [_partial(aggregator, layout, group) for group in groups]
        plain = [_partial(dense, layout, group) for group in groups]
        total = aggregator.reduce(structured, layout.dim)
        expected = dense.reduce(plain, layout.dim)
        np.testing.assert_array_equal(total.dense_sum(), expected.update_sum)
        assert (total.weight_sum, total.num_clients) == (expected.weight_sum, expected.num_clients)
        # At most the row indices of a whole block (or the per-expert weights) more than dense.
        assert sum(p.nbytes for p in structured) <= sum(p.nbytes for p in plain) + 128 * len(chunks)


@given(old=st.sets(st.integers(0, 30)), new=st.sets(st.integers(0, 30)), seed=st.integers(0, 99))
def test_add_rows_is_a_dense_row_sum(old, new, seed):
    rng = np.random.default_rng(seed)
    rows, new_rows = np.array(sorted(old), np.int64), np.array(sorted(new), np.int64)
    values = rng.standard_normal((len(rows), 2)).astype(np.float32)
    new_values = rng.standard_normal((len(new_rows), 2)).astype(np.float32)
    dense = np.zeros((31, 2), np.float32)
    dense[rows] += values
    dense[new_rows] += new_values
    out_rows, out_values = add_rows(rows, values.copy(), new_rows, new_values)
    assert out_rows.tolist() == sorted(old | new)
    np.testing.assert_array_equal(out_values, dense[out_rows])


# ----------------------------------------------------------------------------- MoE


def _server(aggregator: Aggregator, layout, clipping=None, mechanism=None, cohort=3):
    return ParameterServer(
        np.zeros(layout.dim, np.float32),
        FedAvg(),
        mechanism or NoNoise(),
        aggregator,
        clipping or NoClipping(),
        cohort,
    )


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
def test_moe_is_fedavg_when_every_client_touches_every_expert(weighting):
    rng = np.random.default_rng(3)
    layout = ParameterLayout.of(HardMoE(experts=3))
    updates = [_update(_moe_delta(layout, rng, [0, 1, 2]), n) for n in (2, 5, 9, 1)]
    results = []
    for aggregator in (MoEAggregator(weighting), DenseAggregator(weighting)):
        server = _server(aggregator, layout, cohort=4)
        results.append(server.apply(0, [_partial(aggregator, layout, updates)])[0])
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("clip", [None, 100.0])
def test_moe_averages_each_expert_over_the_clients_that_touched_it(clip):
    layout = ParameterLayout.of(HardMoE(experts=3))
    rng = np.random.default_rng(4)
    touched = [[0], [0, 1], [1]]  # expert 2: nobody
    deltas = [_moe_delta(layout, rng, experts) for experts in touched]
    tokens = [np.array([5, 0, 0]), np.array([2, 3, 0]), np.array([0, 7, 0])]
    updates = [  # either name of the tokens per expert
        _update(d, 4, **{key: t, "router_entropy": np.array(h)})
        for d, t, h, key in zip(
            deltas,
            tokens,
            (0.1, 0.5, 0.3),
            ("expert_tokens", "tokens_per_expert", "expert_tokens"),
            strict=True,
        )
    ]
    clipping = None if clip is None else FixedClipping(clip)
    aggregator = MoEAggregator()
    server = _server(aggregator, layout, clipping=clipping, cohort=3)
    weights, metrics = server.apply(0, [_partial(aggregator, layout, updates, clip)])
    (e0,), (e1,), (e2,) = (spans for spans in layout.experts)
    total = np.sum(deltas, axis=0)
    outside = np.concatenate([np.arange(a, b) for a, b in layout.outside_experts])
    np.testing.assert_allclose(weights[outside], total[outside] / 3, rtol=1e-6)
    np.testing.assert_allclose(weights[e0[0] : e0[1]], total[e0[0] : e0[1]] / 2, rtol=1e-6)
    np.testing.assert_allclose(weights[e1[0] : e1[1]], total[e1[0] : e1[1]] / 2, rtol=1e-6)
    np.testing.assert_array_equal(weights[e2[0] : e2[1]], 0)
    loads = [metrics[f"train/expert_load/e{e}"] for e in range(3)]
    assert loads == [7.0, 10.0, 0.0]
    assert metrics["train/router_entropy"] == pytest.approx(0.3)


def test_moe_partial_records_per_expert_weights_and_sends_touched_experts_only():
    layout = ParameterLayout.of(HardMoE(experts=3))
    rng = np.random.default_rng(5)
    updates = [_update(_moe_delta(layout, rng, [1]), n) for n in (3, 4)]
    partial = _partial(MoEAggregator("examples"), layout, updates)
    assert isinstance(partial, MoEPartial)
    assert partial.expert_weights.tolist() == [0.0, 7.0, 0.0]
    assert [s is not None for s in partial.expert_sums] == [False, True, False]
    assert partial.nbytes == (19 + 15) * 4 + 3 * 8
    assert partial.upload_bytes == 2 * (19 + 15) * 4  # each client: non-expert part, expert 1
    assert partial.metrics() == {}  # no client reported routing statistics
    with pytest.raises(ValueError, match="experts"):
        partial.add(_update(updates[0].delta, 1, expert_tokens=np.ones(2)), 1.0)


# ----------------------------------------------------------------------------- release


def _clipped_rounds(aggregator, layout, draw, rounds, cohort, clip, z):
    """Weights and released updates of a DP server over `rounds` rounds; also the clean sums."""
    server = _server(aggregator, layout, FixedClipping(clip), GaussianMechanism(z, seed=7), cohort)
    previous, released, clean = server.weights().copy(), [], []
    for round_idx in range(rounds):
        updates = [_update(draw()) for _ in range(cohort)]
        weights, metrics = server.apply(round_idx, [_partial(aggregator, layout, updates, clip)])
        logged = releasable(metrics, private=True)  # what a private run's tracker writes
        assert not any(k.startswith("train/") for k in logged)
        assert all(declared(k).release is not Release.NONPRIVATE for k in logged)
        released.append(weights - previous)
        clean.append(sum(clip_update(u.delta, clip)[0] for u in updates) / cohort)
        previous = weights.copy()
    return np.array(released), np.array(clean)


@pytest.mark.parametrize("kind", ["sparse", "moe"])
def test_every_released_coordinate_carries_gaussian_noise(kind):
    """Clients touch 2 rows of 60 (or 1 expert of 4); every coordinate gets N(0, (zC/n)^2)."""
    rng = np.random.default_rng(11)
    z, clip, cohort, rounds = 1.3, 0.5, 4, 150
    if kind == "sparse":
        layout = ParameterLayout.of(BagOfTokens(vocab=60, width=3))
        aggregator: Aggregator = SparseAggregator("uniform")
        draw = lambda: _sparse_delta(layout, rng, 2)  # noqa: E731
    else:
        layout = ParameterLayout.of(HardMoE(experts=4))
        aggregator = MoEAggregator()
        draw = lambda: _moe_delta(layout, rng, [int(rng.integers(4))])  # noqa: E731
    released, clean = _clipped_rounds(aggregator, layout, draw, rounds, cohort, clip, z)
    noise = released - clean
    std = z * clip / cohort
    assert np.all(released != 0)  # no coordinate is released without noise, in any round
    untouched = clean == 0  # (round, coordinate) pairs that no client of the round touched
    assert untouched.mean() > 0.1
    for group in (noise, noise[untouched], noise[~untouched]):
        assert group.std() == pytest.approx(std, rel=0.04)
        assert abs(group.mean()) < 5 * std / np.sqrt(group.size)
    per_coordinate = noise.std(axis=0) / std
    assert per_coordinate.min() > 0.65 and per_coordinate.max() < 1.35
    assert scipy_stats.kstest(noise.ravel() / std, "norm").pvalue > 1e-3


@pytest.mark.parametrize("kind", ["sparse", "moe"])
def test_private_release_is_the_dense_release(kind):
    """With DP on, sparse and MoE change what travels, not one bit of what is released."""
    rng = np.random.default_rng(12)
    if kind == "sparse":
        layout = ParameterLayout.of(BagOfTokens())
        aggregators: list[Aggregator] = [SparseAggregator("uniform"), DenseAggregator("uniform")]
        draw = lambda i: _sparse_delta(layout, rng, 2)  # noqa: E731
    else:
        layout = ParameterLayout.of(HardMoE(experts=3))
        aggregators = [MoEAggregator(), DenseAggregator("uniform")]
        draw = lambda i: _moe_delta(layout, rng, [i % 3])  # noqa: E731
    servers = [
        _server(a, layout, FixedClipping(1.0), GaussianMechanism(0.8, seed=3), cohort=5)
        for a in aggregators
    ]
    for round_idx in range(3):
        updates = [_update(draw(i)) for i in range(3)]
        (mine, my_metrics), (dense, dense_metrics) = (
            server.apply(
                round_idx,  # two workers: one chunk, then another
                [_partial(a, layout, updates[:1], 1.0)],
                [_partial(a, layout, updates[1:], 1.0)],
            )
            for server, a in zip(servers, aggregators, strict=True)
        )
        np.testing.assert_array_equal(mine, dense)
        assert dense_metrics["system/upload_bytes"] == 3 * layout.dim * 4  # three clients
        assert dense_metrics["system/transport_bytes"] == 2 * layout.dim * 4  # two partials
        # A sparse or MoE partial's size depends on the data: a private run drops it.
        for key in ("system/upload_bytes", "system/transport_bytes"):
            assert my_metrics[key] < dense_metrics[key]
            assert key not in releasable(my_metrics, private=True)


# ----------------------------------------------------------------------------- worker


@pytest.mark.parametrize(
    ("factory", "aggregator"),
    [(BagOfTokens, SparseAggregator("uniform")), (HardMoE, MoEAggregator())],
)
@pytest.mark.parametrize("clip", [None, 0.05])
def test_worker_partials_equal_the_dense_ones_and_are_clipped(factory, aggregator, clip):
    population, training = TokenClients(), LocalTraining(epochs=1, batch_size=3, lr=0.5)
    workers = [
        ClientWorker(population, factory, training, a, seed=0)
        for a in (aggregator, DenseAggregator("uniform"))
    ]
    model = factory()
    weights = nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
    chunks = [np.array([0, 1, 2]), np.array([3]), np.array([7, 8])]
    structured, dense = (w.train(weights, 0, chunks, clip) for w in workers)
    packed = pickle.loads(pickle.dumps(PackedPartials(structured)))  # as they travel
    for mine, theirs, wired in zip(structured, dense, packed, strict=True):
        assert type(wired) is type(mine)
        np.testing.assert_array_equal(wired.dense_sum(), mine.dense_sum())
        np.testing.assert_array_equal(mine.dense_sum(), theirs.update_sum)
        assert mine.nbytes < theirs.nbytes
    if clip is not None:  # a one-client chunk's sum is that client's clipped update
        assert np.linalg.norm(structured[1].dense_sum()) <= clip
    if isinstance(structured[0], SparsePartial):
        assert 0 < len(structured[0].rows[0]) < 40
    else:
        assert isinstance(structured[0], MoEPartial)
        assert structured[0].expert_weights.sum() < 3 * len(model.experts)


def test_weighting_is_validated():
    for cls in (SparseAggregator, MoEAggregator):
        with pytest.raises(ConfigError) as info:
            cls(weighting="tokens")
        assert info.value.key == "weighting"
    assert SparseAggregator().weighting == "examples" and MoEAggregator().weighting == "uniform"
