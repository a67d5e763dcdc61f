"""Costs of distributed DP, as JSON lines: the clients' encoder, and a whole round.

- `encoder`: at each dimension d (`--dims`), per client and on one torch thread: the encoder's
  rotation, rounding and norm check (the codec with no noise share), and the whole encoding
  with Skellam shares (per client, and drawn as one aggregate per chunk) and discrete Gaussian
  shares, each as seconds per client and as a ratio to one dense float32 pass over d
  (`x + y`, the cost of summing an update in the clear). Clients are encoded as a chunk of
  `--clients` (default 8: a cohort of 100 makes chunks of 7), whose buffers are allocated once
  per chunk: smaller chunks pay more per client;
- `round`: the median round time of a cohort of `--cohort` clients of the FEMNIST-like CNN and
  of the next-word LM in this process (`LocalBackend`: no Ray in the figures), with the central
  Gaussian mechanism and with `ddp_skellam` and `ddp_gaussian` (at `--bits`), and the ratio of
  each to the central one.

Ratios are within one run, on one machine: never compare absolute times across machines.

Usage:
    python scripts/bench_ddp.py [--dims 65536 1048576 4194304] [--clients 8] [--repeats 3]
        [--cohort 100] [--rounds 4] [--bits 16] [--parts encoder round] [--seed 0]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mechanisms.ddp.codec import CodecSpec, encode_chunk
from mechanisms.ddp.params import DdpParams, choose
from mechanisms.ddp.rotation import padded_dim, rotation_signs

MODELS = {
    "cnn": ("population=femnist", "model=cnn", "training.vectorise=on"),
    "lm": ("population=zipf_text", "model=lm"),
}
MECHANISMS = ("gaussian", "ddp_skellam", "ddp_gaussian")


def _best(run: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls (after one warm-up), in seconds."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _spec(
    dim: int, clients: int, noise: str, bits: int, with_noise: bool, aggregate: bool = False
) -> CodecSpec:
    params = DdpParams(
        bits=bits,
        cohort_size=clients,
        min_survivors=clients,
        clip_norm=1.0,
        dim=dim,
        noise_multiplier=1.0,
        noise=noise,
    )
    choice = choose(params)
    local = choice.local_noise if with_noise else 0.0
    return CodecSpec(bits, choice.scale, choice.l2_sensitivity, noise, local, dim, aggregate)


def _encode(rows: torch.Tensor, signs: torch.Tensor, spec: CodecSpec) -> object:
    rngs = [np.random.default_rng(i) for i in range(len(rows))]
    return encode_chunk(rows, signs, spec, rngs)


def encoder_lines(dims: Sequence[int], clients: int, repeats: int, bits: int) -> list[dict]:
    """Per-client encoder costs at each d, against one dense float32 pass."""
    torch.set_num_threads(1)
    lines = []
    for dim in dims:
        rng = np.random.default_rng(dim)
        rows = torch.from_numpy(rng.normal(size=(clients, dim)).astype(np.float32))
        rows /= rows.norm(dim=1, keepdim=True)  # clipped to norm 1
        signs = rotation_signs(0, 0, padded_dim(dim))
        x, y = rows[0].clone(), rows[1 % clients].clone()
        dense = _best(functools.partial(torch.add, x, y, out=x), repeats)
        for case, noise, with_noise, aggregate in (
            ("rotate_round", "skellam", False, False),
            ("skellam_per_client", "skellam", True, False),
            ("skellam_aggregate", "skellam", True, True),
            ("ddgauss", "gaussian", True, False),
        ):
            spec = _spec(dim, clients, noise, bits, with_noise, aggregate)
            print(f"encoder {case} d={dim}", file=sys.stderr, flush=True)

            per_client = _best(functools.partial(_encode, rows, signs, spec), repeats) / clients
            lines.append(
                {
                    "bench": "ddp",
                    "part": "encoder",
                    "case": case,
                    "dim": dim,
                    "padded_dim": padded_dim(dim),
                    "clients": clients,
                    "seconds_per_client": round(per_client, 6),
                    "dense_pass_s": round(dense, 7),
                    "ratio_to_dense_pass": round(per_client / dense, 2),
                }
            )
    return lines


def _experiment(overrides: Sequence[str]) -> Any:
    """The validated experiment of `fedray experiment=smoke <overrides>`."""
    from hydra import compose, initialize_config_dir

    from engine.app.build import build_experiment
    from engine.app.config import register_configs
    from engine.app.run import CONFIG_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=smoke", *overrides])
    return build_experiment(cfg)[0]


def _round_seconds(overrides: Sequence[str], rounds: int) -> float:
    """The median time of rounds 1.. of a run of `overrides` in this process."""
    from engine.runtime import LocalBackend, Simulation

    with Simulation(_experiment(overrides), backend=LocalBackend()) as sim:
        times = []
        for round_idx in range(rounds):
            start = time.perf_counter()
            sim.run_round(round_idx)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def round_lines(cohort: int, rounds: int, bits: int) -> list[dict]:
    """One round's time per model and mechanism, and its ratio to the central Gaussian's."""
    lines = []
    for model, overrides in MODELS.items():
        central = 0.0
        for mechanism in MECHANISMS:
            extra = [f"mechanism.bits={bits}"] if mechanism != "gaussian" else []
            print(f"round {model} {mechanism}", file=sys.stderr, flush=True)
            seconds = _round_seconds(
                [
                    *overrides,
                    f"mechanism={mechanism}",
                    *extra,
                    f"participation.cohort_size={cohort}",
                    "population.num_clients=2000",
                ],
                rounds,
            )
            central = seconds if mechanism == "gaussian" else central
            lines.append(
                {
                    "bench": "ddp",
                    "part": "round",
                    "model": model,
                    "mechanism": mechanism,
                    "cohort": cohort,
                    "round_s": round(seconds, 4),
                    "ratio_to_central": round(seconds / central, 3),
                }
            )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1 << 16, 1 << 20, 1 << 22])
    parser.add_argument(
        "--clients", type=int, default=8, help="clients per encoded chunk (cohort 100: 7)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cohort", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (first: warm-up)")
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument(
        "--parts", nargs="+", choices=("encoder", "round"), default=["encoder", "round"]
    )
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.clients < 2 or min(args.dims) < 2:
        parser.error("--rounds and --clients must be >= 2, --dims >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Prints one JSON line per measurement."""
    args = parse_args(argv)
    if "encoder" in args.parts:
        for line in encoder_lines(args.dims, args.clients, args.repeats, args.bits):
            print(json.dumps(line), flush=True)
    if "round" in args.parts:
        for line in round_lines(args.cohort, args.rounds, args.bits):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
