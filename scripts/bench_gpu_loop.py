"""Client updates per second: fedray's training paths against a pure-torch loop, one device.

The baseline is what a user would write by hand: for each client, load the round's weights
into an `nn.Module`, run `torch.optim.SGD` over the client's batches, and read back the
change. fedray's per-client loop (`engine.training.client.train_client`) and its vectorised path
(`engine.training.vectorised.train_clients`) train the same clients (FEMNIST-like writers, the CNN,
FedAvg defaults) on the same device, in this process and without Ray, so the ratios
compare training paths only. `scripts/gpu_check.sh` runs it on a GPU; it also runs on a CPU.

Prints one JSON line per path.

Usage:
    python scripts/bench_gpu_loop.py [--device cuda] [--clients 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from engine.population import ClientData, FemnistLikePopulation
from engine.training import (
    CNN,
    LocalTraining,
    flatten,
    init_parameters,
    train_client,
    train_clients,
)


def torch_loop(
    model: torch.nn.Module,
    params: torch.Tensor,
    datas: Sequence[ClientData],
    training: LocalTraining,
    seed: int,
) -> torch.Tensor:
    """The hand-written baseline: one client after another, `torch.optim.SGD`; the summed delta."""
    device = params.device
    total = torch.zeros_like(params)
    for index, data in enumerate(datas):
        vector_to_parameters(params.clone(), model.parameters())  # params stays as it is
        optimiser = torch.optim.SGD(model.parameters(), lr=training.lr)
        x = torch.from_numpy(data.x).to(device)
        y = torch.from_numpy(data.y).to(device)
        rng = np.random.default_rng([seed, index])
        for _ in range(training.epochs):
            order = torch.from_numpy(rng.permutation(len(data))).to(device)
            for batch in order.split(training.batch_size):
                optimiser.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                optimiser.step()
        total += parameters_to_vector(model.parameters()).detach() - params
    return total


def _median_s(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `work()` in seconds (device synchronised), after one warm-up."""

    def timed() -> float:
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()
    return statistics.median(timed() for _ in range(repeats))


def measure(device: torch.device, clients: int, repeats: int) -> list[dict[str, object]]:
    """One result per path: seconds per cohort, client updates per second, ratio to the loop."""
    population = FemnistLikePopulation(num_clients=max(clients, 1000), seed=0)
    datas = [population.client_data(i) for i in range(clients)]
    model = CNN(784, 62)
    init_parameters(model, 0)
    model.to(device)
    params = torch.from_numpy(flatten(model)).to(device)
    training = LocalTraining(lr=0.05)

    def rngs() -> list[np.random.Generator]:
        return [np.random.default_rng([0, i]) for i in range(clients)]

    def fedray_loop() -> list[object]:
        return [
            train_client(model, params, d, training, r) for d, r in zip(datas, rngs(), strict=True)
        ]

    paths: dict[str, Callable[[], object]] = {
        "torch_loop": lambda: torch_loop(model, params, datas, training, 0),
        "fedray_loop": fedray_loop,
        "fedray_vectorised": lambda: train_clients(model, params, datas, training, rngs()),
    }
    seconds = {name: _median_s(work, device, repeats) for name, work in paths.items()}
    examples = int(sum(len(d) for d in datas))
    return [
        {
            "bench": "gpu_loop",
            "device": str(device),
            "path": name,
            "clients": clients,
            "examples": examples,
            "cohort_s": round(s, 4),
            "client_updates_per_s": round(clients / s, 1),
            "speedup_vs_torch_loop": round(seconds["torch_loop"] / s, 3),
        }
        for name, s in seconds.items()
    ]


def main(argv: list[str] | None = None) -> None:
    """Prints one JSON line per training path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.repeats < 1:
        parser.error("--clients and --repeats must be >= 1")
    for line in measure(torch.device(args.device), args.clients, args.repeats):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
