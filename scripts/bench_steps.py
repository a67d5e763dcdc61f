"""Where a client's local training time goes, per model, as JSON lines (one CPU thread).

For each model it prints two measurements:

- ``step``: one local SGD step at batch 1, 10 and 20 examples. The slope between batch 10 and
  20 is the per-example arithmetic; what a batch-10 step costs beyond 10 times that slope is
  fixed per step (Python, autograd, optimiser). A model whose step is mostly fixed cost gains
  from batching clients (`engine.training.vectorised`); one whose step is all arithmetic does not.
- ``clients``: local training of the same clients (the model's benchmark population, FedAvg
  defaults) on the per-client loop and on the vectorised path, and the speed-up of the latter.

Usage:
    python scripts/bench_steps.py [--models logreg,mlp,cnn] [--clients 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from engine.population import FemnistLikePopulation, Population, SyntheticPopulation
from engine.training import (
    CNN,
    MLP,
    LocalTraining,
    LogisticRegression,
    flatten,
    init_parameters,
    train_client,
    train_clients,
)

STEPS = 50  # steps per timing, so that a timing of the smallest model is a few ms

MODELS: dict[str, Callable[[], tuple[torch.nn.Module, Population]]] = {
    "logreg": lambda: (LogisticRegression(60, 10), SyntheticPopulation(num_clients=1000)),
    "mlp": lambda: (MLP(60, 10), SyntheticPopulation(num_clients=1000)),
    "cnn": lambda: (CNN(784, 62), FemnistLikePopulation(num_clients=1000)),
}


def _median_ms(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of `work()` in ms, after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def step_costs(model: torch.nn.Module, population: Population, repeats: int) -> dict[str, float]:
    """Time of one local step at batch 1, 10 and 20; per-example and fixed cost per step."""
    data = population.client_data(0)
    weights: list[torch.Tensor] = list(model.parameters())
    x = torch.from_numpy(np.resize(data.x, (20, *data.x.shape[1:])))
    y = torch.from_numpy(np.resize(data.y, 20))

    def step(batch: int) -> None:
        for _ in range(STEPS):
            loss = F.cross_entropy(model(x[:batch]), y[:batch])
            grads = torch.autograd.grad(loss, weights)
            with torch.no_grad():
                torch._foreach_add_(weights, list(grads), alpha=-1e-3)

    ms = {b: _median_ms(functools.partial(step, b), repeats) / STEPS for b in (1, 10, 20)}
    per_example = max((ms[20] - ms[10]) / 10, 0.0)
    fixed = min(max(ms[10] - 10 * per_example, 0.0), ms[10])
    return {
        "step_ms_batch1": ms[1],
        "step_ms_batch10": ms[10],
        "step_ms_batch20": ms[20],
        "per_example_ms": per_example,
        "fixed_ms_per_step": fixed,
        "fixed_share_batch10": fixed / ms[10],
    }


def client_costs(
    model: torch.nn.Module, population: Population, clients: int, repeats: int
) -> dict[str, float]:
    """Loop and vectorised times of `clients` clients' local training (one round, defaults)."""
    params = torch.from_numpy(flatten(model))
    datas = [population.client_data(i) for i in range(clients)]
    training = LocalTraining()

    def rngs() -> list[np.random.Generator]:
        return [np.random.default_rng([0, i]) for i in range(clients)]

    def looped() -> list[object]:
        pairs = zip(datas, rngs(), strict=True)
        return [train_client(model, params, d, training, r) for d, r in pairs]

    loop = _median_ms(looped, repeats)
    vectorised = _median_ms(lambda: train_clients(model, params, datas, training, rngs()), repeats)
    return {
        "clients": clients,
        "examples": int(sum(len(d) for d in datas)),
        "loop_ms": loop,
        "vectorised_ms": vectorised,
        "speedup_vs_loop": loop / vectorised,
    }


def main(argv: list[str] | None = None) -> None:
    """Prints a `step` and a `clients` line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    chosen = [m for m in args.models.split(",") if m]
    if not chosen or set(chosen) - set(MODELS):
        parser.error(f"--models: choose from {sorted(MODELS)}")
    if args.clients < 1 or args.repeats < 1:
        parser.error("--clients and --repeats must be >= 1")
    torch.set_num_threads(1)  # as a client worker runs
    for name in chosen:
        model, population = MODELS[name]()
        init_parameters(model, 0)
        for kind, measured in (
            ("step", step_costs(model, population, args.repeats)),
            ("clients", client_costs(model, population, args.clients, args.repeats)),
        ):
            print(json.dumps({"bench": "steps", "model": name, "kind": kind, **measured}))


if __name__ == "__main__":
    main()
