"""What every peer workload shares: fedray's data and model, plain torch SGD, timing, output.

Peer workloads run under the peer's own venv (see `scripts/bench_peers.py`), which holds torch,
numpy and scipy but neither ray (Flower's pinned one aside), hydra nor wandb. They import
fedray's population and models only, so that every system trains on the same clients, from the
same initial weights, with the same local loop as `engine.training.client.train_client`: per epoch a
permutation of the client's examples, batches of `batch_size`, mean cross-entropy, one SGD step
per batch. The permutations come from fedray's own stream of the client and round
(`client_rng`), and when the spec carries fedray's cohorts (`Spec.cohorts`, read from its
participation log) the peer trains exactly those clients in each round: then every system runs
the same computation, up to float rounding.

A workload reads its case from a JSON file (`--spec`), the one `scripts/bench_peers.py` writes,
and prints one JSON line (`RESULT_PREFIX`...) with its measurements.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from common.rng import Stream, generator  # noqa: E402
from engine.population import ClientData, Population  # noqa: E402
from engine.training import init_parameters  # noqa: E402

RESULT_PREFIX = '{"bench": "peers"'

# One intra-op thread per training process, as fedray's client workers run
# (`engine.runtime.workers`): on a shared machine more threads only contend.
torch.set_num_threads(1)


@dataclass(frozen=True)
class Spec:
    """One case, as every system runs it.

    Attributes:
        model: Model name in the benchmark's table (e.g. "logreg").
        model_target: Import path of the model class.
        model_kwargs: Keyword arguments of the model besides (num_features, num_classes).
        population_target: Import path of the population class.
        population_kwargs: Its keyword arguments (num_clients and seed included).
        cohort: Clients per round.
        rounds: Rounds to run.
        epochs: Local epochs.
        batch_size: Local batch size.
        lr: Local SGD learning rate.
        seed: Run seed (initial weights, shuffling).
        eval_clients: Held-out clients for the final evaluation.
        cohorts: The client ids each round trains (round 0 first), fedray's; None: the peer
            samples its own cohorts.
    """

    model: str
    model_target: str
    population_target: str
    cohort: int
    rounds: int
    epochs: int
    batch_size: int
    lr: float
    seed: int
    eval_clients: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    population_kwargs: dict[str, Any] = field(default_factory=dict)
    cohorts: list[list[int]] | None = None

    def __post_init__(self) -> None:
        """Checks that given cohorts are `rounds` rounds of `cohort` clients each.

        Raises:
            ValueError: If they are not.
        """
        if self.cohorts is None:
            return
        sizes = [len(ids) for ids in self.cohorts]
        if sizes != [self.cohort] * self.rounds:
            raise ValueError(
                f"cohorts must be {self.rounds} rounds of {self.cohort} clients, got sizes {sizes}"
            )

    @property
    def num_clients(self) -> int:
        """Population size N."""
        return int(self.population_kwargs["num_clients"])


def parse_spec(argv: list[str] | None = None) -> Spec:
    """Reads the case from the JSON file `--spec` of the command line."""
    parser = argparse.ArgumentParser(description="one peer benchmark case")
    parser.add_argument("--spec", required=True, type=Path, help="the case's JSON file")
    path: Path = parser.parse_args(argv).spec
    return Spec(**json.loads(path.read_text(encoding="utf-8")))


def _resolve(target: str) -> Any:
    """The object at import path `target` ("package.module.Name")."""
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_population(spec: Spec) -> Population:
    """The case's population, as fedray builds it."""
    population: Population = _resolve(spec.population_target)(**spec.population_kwargs)
    return population


def build_model(spec: Spec, population: Population) -> nn.Module:
    """The case's model, with fedray's initial weights for the run seed."""
    model: nn.Module = _resolve(spec.model_target)(
        population.num_features, population.num_classes, **spec.model_kwargs
    )
    init_parameters(model, seed=int(generator(spec.seed, Stream.MODEL_INIT).integers(2**62)))
    return model


def client_rng(seed: int, round_idx: int, client_id: int) -> np.random.Generator:
    """The shuffling stream of one client in one round: fedray's own (`engine.runtime.workers`)."""
    return generator(seed, Stream.CLIENT_TRAIN, round_idx, client_id)


def train_local(model: nn.Module, data: ClientData, spec: Spec, rng: np.random.Generator) -> float:
    """Local SGD on `data`, in place, as `engine.training.train_client` does; returns the loss sum.

    Args:
        model: The model, already holding the global weights.
        data: The client's examples.
        spec: The case (epochs, batch size, learning rate).
        rng: The client's stream for this round: it decides the shuffling.
    """
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    optimiser = torch.optim.SGD(model.parameters(), lr=spec.lr)
    loss_sum = 0.0
    model.train()
    for _ in range(spec.epochs):
        order = torch.from_numpy(rng.permutation(len(data)))
        for batch in order.split(spec.batch_size):
            optimiser.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.item()) * len(batch)
    return loss_sum


def evaluate(model: nn.Module, population: Population, count: int) -> float:
    """Top-1 accuracy over all examples of `count` held-out clients (fedray's eval/accuracy)."""
    correct, total = 0, 0
    model.eval()
    with torch.no_grad():
        for client_id in population.held_out_ids(count):
            data = population.client_data(int(client_id))
            logits = model(torch.from_numpy(data.x))
            correct += int((logits.argmax(dim=-1) == torch.from_numpy(data.y)).sum())
            total += len(data)
    return correct / max(total, 1)


def peak_rss_mib() -> float:
    """Peak resident set size of this process (the driver), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of `packages` (and torch, numpy), by distribution name."""
    found = {}
    for name in (*packages, "torch", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


@dataclass
class RoundTimer:
    """Per-round wall times of a run, and its cold start (setup + round 0).

    Attributes:
        start: perf_counter() before the system was built.
        round_begin: perf_counter() at the start of the current round.
        durations: Seconds of each finished round.
        first_end: perf_counter() at the end of the first round.
    """

    start: float = field(default_factory=time.perf_counter)
    round_begin: float = 0.0
    durations: list[float] = field(default_factory=list)
    first_end: float | None = None

    def begin(self) -> None:
        """Marks the start of a round."""
        self.round_begin = time.perf_counter()

    def end(self) -> None:
        """Marks the end of a round."""
        now = time.perf_counter()
        self.durations.append(now - self.round_begin)
        if self.first_end is None:
            self.first_end = now


def emit(
    system: str, spec: Spec, timer: RoundTimer, accuracy: float, found: dict[str, str]
) -> None:
    """Prints the case's result line: steady time (mean of rounds 1..R-1), cold start, RSS."""
    steady = timer.durations[1:] or timer.durations
    first_end = timer.first_end if timer.first_end is not None else time.perf_counter()
    result = {
        "bench": "peers",
        "system": system,
        "versions": found,
        "rounds_completed": len(timer.durations),
        "steady_s_per_round": statistics.fmean(steady),
        "steady_s_per_round_median": statistics.median(steady),
        "cold_start_s": first_end - timer.start,
        "total_s": time.perf_counter() - timer.start,
        "driver_peak_rss_mib": round(peak_rss_mib(), 1),
        "final_accuracy": accuracy,
    }
    print(json.dumps(result), flush=True)
