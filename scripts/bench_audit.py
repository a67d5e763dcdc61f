"""The cost of the canary audit, as JSON lines: a run with canaries against the same run without.

- `run`: the wall time of a whole run (this process, `LocalBackend`: no Ray in the figures)
  without canaries and with `--canaries` of them, the best of `--repeats` alternating runs, and
  the ratio. Canaries train nothing, so an audited cohort holds fewer real clients: the ratio
  can fall below 1;
- `overhead`: the audit's own work, timed apart at the model's size: the cosines of one round's
  change with every canary and null direction (the server, every round), the two estimates with
  their bootstrap (the driver, every evaluation), and the cosine plot (once); their total over
  the run as a share of the run without canaries.

Ratios are within one run, on one machine: never compare absolute times across machines.

Usage:
    python scripts/bench_audit.py [--canaries 1000] [--rounds 20] [--repeats 2]
        [--population femnist --model cnn] [--clients 10000] [--cohort 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _compose(overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from engine.app.config import register_configs
    from engine.app.run import CONFIG_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _run_seconds(overrides: Sequence[str]) -> float:
    """The wall time of one whole run of `overrides`, in this process."""
    from engine.app.build import as_dict, build_experiment
    from engine.app.runner import run_experiment
    from engine.runtime import LocalBackend

    cfg = _compose(overrides)
    experiment, tracking = build_experiment(cfg)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        config = as_dict(cfg)
        run_experiment(experiment, tracking, Path(out), config, "bench", backend=LocalBackend())
        return time.perf_counter() - start


def _best(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def overhead_seconds(dim: int, canaries: int, rounds: int, evals: int) -> dict[str, float]:
    """The audit's own seconds over a run: per-round cosines, per-eval estimates, the plot."""
    from engine.app.plots import audit_cosines
    from mechanisms.audit.canaries import Canaries
    from mechanisms.audit.estimate import estimate_epsilon

    audit = Canaries(canaries, dim, 0, first_id=0)
    change = np.random.default_rng(0).normal(size=dim).astype(np.float32)
    cosines = _best(lambda: audit.cosines(change), 5)
    observed, null = audit.cosines(change)
    rng = np.random.default_rng(1)
    estimate = 2 * _best(lambda: estimate_epsilon(observed, null, 1e-10, rng), 3)
    with tempfile.TemporaryDirectory() as out:
        pair = np.stack((observed, null))
        plot = _best(lambda: audit_cosines(pair, pair, Path(out) / "a.png"), 1)
    return {
        "cosines_per_round_s": cosines,
        "estimates_per_eval_s": estimate,
        "plot_s": plot,
        "total_s": rounds * cosines + evals * (estimate + cosines) + plot,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--population", default="femnist")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--cohort", type=int, default=20)
    args = parser.parse_args(argv)
    if min(args.canaries, args.rounds, args.repeats, args.clients, args.cohort) < 1:
        parser.error("--canaries, --rounds, --repeats, --clients and --cohort must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Prints one JSON line per measurement."""
    args = parse_args(argv)
    base = [
        "experiment=smoke",
        f"population={args.population}",
        f"model={args.model}",
        f"population.num_clients={args.clients}",
        f"participation.cohort_size={args.cohort}",
        f"rounds={args.rounds}",
        f"eval.every={args.eval_every}",
        "eval.num_clients=50",
        "clipping=fixed",
        "mechanism=gaussian",
    ]
    audited = [*base, "audit=canaries", f"audit.num_canaries={args.canaries}"]
    best = {"no_canaries": np.inf, "canaries": np.inf}
    for repeat in range(args.repeats):  # alternating, so that drift hits both alike
        for case, overrides in (("no_canaries", base), ("canaries", audited)):
            print(f"bench_audit: {case} run {repeat + 1}", file=sys.stderr, flush=True)
            best[case] = min(best[case], _run_seconds(overrides))
    for case, seconds in best.items():
        line = {"bench": "audit", "part": "run", "case": case, "canaries": args.canaries}
        ratio = seconds / best["no_canaries"]
        print(json.dumps({**line, "run_s": round(seconds, 3), "ratio": round(ratio, 4)}))
    from engine.app.build import build_experiment

    experiment, _ = build_experiment(_compose(audited))
    assert experiment.canaries is not None
    evals = -(-args.rounds // args.eval_every) + 1  # the evaluations, and the summary's
    costs = overhead_seconds(experiment.canaries.dim, args.canaries, args.rounds, evals)
    share = costs["total_s"] / best["no_canaries"]
    line = {"bench": "audit", "part": "overhead", "dim": experiment.canaries.dim}
    print(json.dumps({**line, **{k: round(v, 5) for k, v in costs.items()}, "share": share}))


if __name__ == "__main__":
    main()
