"""Bytes moved per round and the server's aggregation time, by aggregator, as JSON lines.

Two families of synthetic cohorts, each summed by the dense aggregator and by its own:

- `lm` (NextWordLM, per vocabulary size V), dense vs sparse: every client's delta touches
  `--row-fraction` x V distinct rows of the tied embedding and of the output bias, drawn
  Zipfian (P(row r) proportional to (r + 1)^-1.1, without replacement), and every other
  parameter densely;
- `moe_lm` (MoETransformerLM, per expert count E), dense vs moe: every client's delta is zero
  on all experts but `--top-k` per layer (drawn uniformly), dense elsewhere.

The cohort is split into chunks as the engine splits it (`Cluster.chunk_size_for`); each chunk's
clients are added to one partial per aggregator, as a worker does. Per line:

- `upload_bytes`: what the server reports as `system/upload_bytes`, the bytes the cohort's
  devices upload, each client in the aggregator's format (dense: its whole float32 vector;
  sparse: its dense part plus each touched row's int64 index and values; moe: its non-expert
  part plus the experts it touched). `dense_ratio` is the dense line's over this line's.
- `transport_bytes`: `system/transport_bytes`, the chunk partials' `nbytes` (what the
  simulator's workers send the server; a chunk sums its clients, so dense shrinks by the chunk
  size here and sparse only to the union of the chunk's rows). `transport_ratio` as above.
- `wire_bytes`: the partials' pickle-5 size with out-of-band buffers (as Ray ships them).
- `server_ms`: the mean over `--rounds` of the server's reduce (chunk order) plus densify
  (`dense_sum`), timed with perf_counter.

A sparse line's `meets_target` says whether its clients upload >= 20x fewer bytes than dense
ones (the target at V = 100k with <= 2% of rows per client; null at other vocabularies);
`max_ratio` is that ratio if clients touched no row at all.

Usage:
    python scripts/bench_aggregation.py [--vocab-sizes 10000 100000] [--experts 8 32]
        [--cohort 100] [--chunk-size C] [--row-fraction 0.02] [--top-k 2] [--moe-vocab 2000]
        [--rounds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.aggregation import (
    Aggregator,
    DenseAggregator,
    MoEAggregator,
    MoEPartial,
    Partial,
    SparseAggregator,
    SparsePartial,
)
from engine.aggregation.base import span_size
from engine.plan import Cluster
from engine.runtime.chunks import split_chunks
from engine.training import ClientUpdate, MoETransformerLM, NextWordLM, ParameterLayout, Span

TARGET_RATIO = 20.0
TARGET_VOCAB = 100_000
ZIPF_EXPONENT = 1.1
SCALE = np.float32(1e-3)


def zipf_rows(rng: np.random.Generator, vocab: int, count: int) -> np.ndarray:
    """`count` distinct sorted rows of `vocab`, Zipfian without replacement (Gumbel top-k)."""
    keys = -ZIPF_EXPONENT * np.log(np.arange(1, vocab + 1)) + rng.gumbel(size=vocab)
    return np.sort(np.argpartition(keys, vocab - count)[vocab - count :])


def fill(delta: np.ndarray, spans: Sequence[Span], rng: np.random.Generator) -> None:
    """Writes small Gaussian values into the spans of `delta` (in place)."""
    for start, stop in spans:
        delta[start:stop] = SCALE * rng.standard_normal(stop - start, dtype=np.float32)


def client_update(delta: np.ndarray, rng: np.random.Generator, **stats: np.ndarray) -> ClientUpdate:
    """A client update around `delta`, with a lognormal example count."""
    n = int(np.clip(rng.lognormal(np.log(10), 1.0), 1, 200))
    return ClientUpdate(delta, n, loss_sum=float(n), examples_seen=n, stats=stats)


def build_partials(
    aggregators: dict[str, Aggregator],
    layout: ParameterLayout,
    chunks: Sequence[np.ndarray],
    make_update: Callable[[int], ClientUpdate],
) -> dict[str, list[Partial]]:
    """One partial per chunk and aggregator, each client's update added to all (as workers do)."""
    partials: dict[str, list[Partial]] = {name: [] for name in aggregators}
    for chunk in chunks:
        current = {name: agg.zeros(layout.dim, layout) for name, agg in aggregators.items()}
        for client in chunk.tolist():
            update = make_update(client)
            for name, agg in aggregators.items():
                current[name].add(update, agg.client_weight(update))
        for name, partial in current.items():
            partials[name].append(partial)
    return partials


def wire_bytes(partials: Sequence[Partial]) -> int:
    """Pickle protocol 5 size of the partials, arrays as out-of-band buffers (Ray's way)."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(list(partials), protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(buffer.raw().nbytes for buffer in buffers)


def measure(
    aggregator: Aggregator, partials: Sequence[Partial], dim: int, rounds: int
) -> dict[str, Any]:
    """Times the server's reduce + densify `rounds` times; returns the figures."""
    aggregator.reduce(partials, dim).dense_sum()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        total = aggregator.reduce(partials, dim)
        reduced = time.perf_counter()
        total.dense_sum()
        times.append((reduced - start, time.perf_counter() - reduced))
    reduce_ms, densify_ms = (round(1e3 * float(t), 3) for t in np.mean(times, axis=0))
    return {
        "upload_bytes": sum(partial.upload_bytes for partial in partials),
        "transport_bytes": sum(partial.nbytes for partial in partials),
        "wire_bytes": wire_bytes(partials),
        "server_ms": round(reduce_ms + densify_ms, 3),
        "reduce_ms": reduce_ms,
        "densify_ms": densify_ms,
    }


def run_family(
    args: argparse.Namespace,
    head: dict[str, Any],
    aggregators: dict[str, Aggregator],
    layout: ParameterLayout,
    make_update: Callable[[int], ClientUpdate],
    extra: Callable[[list[Partial]], dict[str, Any]],
) -> None:
    """Builds a cohort's partials, measures every aggregator, prints one line each (dense first)."""
    chunk_size = args.chunk_size or Cluster().chunk_size_for(args.cohort)
    chunks = split_chunks(np.arange(args.cohort), chunk_size)
    case = " ".join(f"{key}={value}" for key, value in head.items())
    print(f"{case}: {len(chunks)} chunks of {len(chunks[0])}", file=sys.stderr, flush=True)
    partials = build_partials(aggregators, layout, chunks, make_update)
    dense: dict[str, Any] = {}
    for name, agg in aggregators.items():
        stats = measure(agg, partials[name], layout.dim, args.rounds)
        dense = dense or stats
        line = {
            "bench": "aggregation",
            **head,
            "aggregation": name,
            "cohort_size": args.cohort,
            "num_chunks": len(chunks),
            "num_params": layout.dim,
            **stats,
            "rounds": args.rounds,
            "dense_ratio": round(dense["upload_bytes"] / stats["upload_bytes"], 3),
            "transport_ratio": round(dense["transport_bytes"] / stats["transport_bytes"], 3),
            **extra(partials[name]),
        }
        print(json.dumps(line), flush=True)


def bench_lm(args: argparse.Namespace, vocab: int) -> None:
    """Dense vs sparse on NextWordLM with a vocabulary of `vocab` (see the module docstring)."""
    layout = ParameterLayout.of(NextWordLM(num_features=20, num_classes=vocab))
    per_client = max(1, round(args.row_fraction * vocab))
    touched = np.zeros(vocab, dtype=bool)

    def make_update(client: int) -> ClientUpdate:
        rng = np.random.default_rng([args.seed, vocab, client])
        rows = zipf_rows(rng, vocab, per_client)
        touched[rows] = True
        delta = np.zeros(layout.dim, dtype=np.float32)
        fill(delta, layout.outside_rows, rng)
        for block in layout.row_blocks:
            values = rng.standard_normal((per_client, block.cols), dtype=np.float32)
            delta[block.offset : block.stop].reshape(block.rows, block.cols)[rows] = SCALE * values
        return client_update(delta, rng)

    def extra(partials: list[Partial]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rows_per_client": per_client,
            "row_fraction": per_client / vocab,
            "rows_touched": int(touched.sum()),
        }
        sparse = [p for p in partials if isinstance(p, SparsePartial)]
        if sparse:
            out["rows_per_chunk"] = round(float(np.mean([len(p.rows[0]) for p in sparse])), 1)
            ratio = layout.dim * args.cohort * 4 / sum(p.upload_bytes for p in partials)
            floor = layout.dim / span_size(layout.outside_rows)
            out.update(max_ratio=round(floor, 3), target_ratio=TARGET_RATIO)
            # The target is stated at V = 100k: elsewhere the line only reports the ratio.
            out["meets_target"] = bool(ratio >= TARGET_RATIO) if vocab == TARGET_VOCAB else None
        return out

    aggregators: dict[str, Aggregator] = {"dense": DenseAggregator(), "sparse": SparseAggregator()}
    run_family(args, {"model": "lm", "vocab_size": vocab}, aggregators, layout, make_update, extra)


def bench_moe(args: argparse.Namespace, experts: int) -> None:
    """Dense vs moe on MoETransformerLM with `experts` experts (see the module docstring)."""
    model = MoETransformerLM(
        num_features=16, num_classes=args.moe_vocab, num_experts=experts, top_k=args.top_k
    )
    layout = ParameterLayout.of(model)
    num_layers = len(layout.experts) // experts

    def make_update(client: int) -> ClientUpdate:
        rng = np.random.default_rng([args.seed, experts, client])
        delta = np.zeros(layout.dim, dtype=np.float32)
        fill(delta, layout.outside_experts, rng)
        tokens = np.zeros(len(layout.experts), dtype=np.int64)
        for layer in range(num_layers):
            for e in layer * experts + rng.choice(experts, args.top_k, replace=False):
                fill(delta, layout.experts[e], rng)
                tokens[e] = rng.integers(1, 200)
        return client_update(
            delta, rng, tokens_per_expert=tokens, router_entropy=np.array(np.log(args.top_k))
        )

    def extra(partials: list[Partial]) -> dict[str, Any]:
        sizes = [sum(stop - start for start, stop in spans) for spans in layout.experts]
        out: dict[str, Any] = {
            "top_k": args.top_k,
            "vocab_size": args.moe_vocab,
            "expert_param_fraction": round(sum(sizes) / layout.dim, 4),
        }
        moe = [p for p in partials if isinstance(p, MoEPartial)]
        if moe:  # the share of all experts that a chunk's partial carries
            carried = [sum(s is not None for s in p.expert_sums) for p in moe]
            out["experts_per_chunk"] = round(float(np.mean(carried)) / len(sizes), 4)
        return out

    aggregators: dict[str, Aggregator] = {"dense": DenseAggregator(), "moe": MoEAggregator()}
    head = {"model": "moe_lm", "num_experts": experts}
    run_family(args, head, aggregators, layout, make_update, extra)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--experts", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--cohort", type=int, default=100, help="clients per round")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: the engine's")
    parser.add_argument("--row-fraction", type=float, default=0.02, help="rows per LM client / V")
    parser.add_argument("--top-k", type=int, default=2, help="experts per layer per MoE client")
    parser.add_argument("--moe-vocab", type=int, default=2000, help="vocabulary of the MoE LM")
    parser.add_argument("--rounds", type=int, default=5, help="timed server rounds per line")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.cohort, args.rounds, args.chunk_size or 1, args.top_k) < 1:
        parser.error("--cohort, --rounds, --chunk-size and --top-k must be >= 1")
    if not 0 < args.row_fraction <= 1 or min(args.vocab_sizes, default=2) < 2:
        parser.error("--row-fraction must be in (0, 1] and --vocab-sizes >= 2")
    if min(args.experts, default=args.top_k) < args.top_k:
        parser.error("--experts must be >= --top-k")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the LM cases, then the MoE cases, one JSON line per aggregator."""
    args = parse_args(argv)
    for vocab in args.vocab_sizes:
        bench_lm(args, vocab)
    for experts in args.experts:
        bench_moe(args, experts)


if __name__ == "__main__":
    main()
