"""Per-round overhead of fedray above a compute floor, as JSON lines.

Runs the same FedAvg workload (logistic regression on the synthetic population) three ways:

- ``floor``: one process, no Ray: the same cohort selection, client training, chunk-wise
  summation and FedAvg step as a fedray round, calling the engine's functions directly;
- ``fedray_w1``: fedray with 1 client worker;
- ``fedray_w2``: fedray with 2 client workers.

Each fedray line also splits its own steady rounds, measured inside the run: `inrun_train_ms`
(the slowest worker's training and summing), `inrun_server_ms` (the server's step) and
`inrun_overhead_ms`, the round's wall time above those two: what Ray and the driver add, free of
the noise between two processes. `ray_call_ms` is a no-op Ray actor call (submit and wait) in
the same run, for scale: a round needs two actor calls, one to the workers and one to the server.

Each runs with the vectorised client path (`training.vectorise=on`, a chunk's clients as one
batched computation) and with the per-client loop (`off`). Every (system, population, cohort,
path) case runs in its own fresh subprocess, so that its cold start and the driver's peak RSS are
its own and Ray starts clean. Floor cases run first; each fedray line then carries its overhead
above the floor of the same population, cohort and path, and each vectorised line its speed-up
over the loop (`speedup_vs_loop`, the loop's steady round time over its own).

Usage:
    python scripts/bench_overhead.py [--populations 1000,100000,1000000] [--cohorts 10,100]
        [--rounds 30] [--systems floor,fedray_w1,fedray_w2] [--vectorise on,off] [--seed 0]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import psutil
import ray

from engine.aggregation import DenseAggregator
from engine.app.runner import peak_rss_mib, sha256_of, start_ray
from engine.plan import Cluster, Evaluation, Experiment, Privacy
from engine.population import AlwaysAvailable, LognormalDevices, SyntheticPopulation
from engine.runtime import (
    ClientWorker,
    ParameterServer,
    Simulation,
    initial_weights,
    make_scheduler,
)
from engine.runtime.backends import server_args
from engine.runtime.chunks import split_chunks
from engine.scheduling import RoundClock, UniformParticipation
from engine.training import LocalTraining, LogisticRegression
from mechanisms.clipping import NoClipping
from mechanisms.noiseless import NoNoise
from strategies.fedavg import FedAvg

SYSTEMS = ("floor", "fedray_w1", "fedray_w2")
VECTORISE = ("off", "on")
WORKERS = {"floor": 1, "fedray_w1": 1, "fedray_w2": 2}
EVAL_CLIENTS = 100


def build_experiment(
    num_clients: int,
    cohort_size: int,
    rounds: int,
    seed: int,
    num_workers: int = 1,
    vectorise: str = "auto",
) -> Experiment:
    """The benchmark's FedAvg experiment on logistic regression, built without Hydra.

    Args:
        num_clients: Population size N.
        cohort_size: Clients per round.
        rounds: Rounds to run.
        seed: Run seed (also the population's seed).
        num_workers: fedray client workers (ignored by the floor).
        vectorise: The client path (`LocalTraining.vectorise`).
    """
    return Experiment(
        name="bench_overhead",
        seed=seed,
        rounds=rounds,
        population=SyntheticPopulation(num_clients=num_clients, seed=seed),
        availability=AlwaysAvailable(num_clients),
        participation=UniformParticipation(cohort_size),
        clock=RoundClock(),
        clipping=NoClipping(),
        privacy=Privacy(),
        devices=LognormalDevices(seed=seed),
        model_factory=functools.partial(LogisticRegression, 60, 10),
        training=LocalTraining(vectorise=vectorise),
        aggregation=DenseAggregator(),
        strategy=FedAvg(),
        mechanism=NoNoise(),
        evaluation=Evaluation(every=0, num_clients=EVAL_CLIENTS),
        cluster=Cluster(num_workers=num_workers, num_cpus=2),
    )


class RoundRunner(Protocol):
    """Anything that runs rounds: the floor or `engine.runtime.Simulation`."""

    def run_round(self, round_idx: int) -> Any:
        """Runs round `round_idx` to completion."""

    def weights(self) -> np.ndarray:
        """The current weights."""


class Floor:
    """fedray's round as a plain single-process loop: no Ray, no actors, no object store.

    The same `ClientWorker` and `ParameterServer` classes that fedray runs as Ray actors are
    called here as ordinary objects, on the same cohorts and chunks: the same arithmetic as
    fedray, hence the same weights, with none of the distribution.

    Args:
        experiment: The experiment to run.
    """

    def __init__(self, experiment: Experiment) -> None:
        exp = experiment
        self._exp = exp
        self.registry = exp.population.registry()
        self._worker = ClientWorker(
            exp.population, exp.model_factory, exp.training, exp.aggregation, exp.seed
        )
        initial = initial_weights(exp)
        self._scheduler = make_scheduler(exp, self.registry, initial.nbytes)
        self._now_s = self._scheduler.start_s
        self._server = ParameterServer(*server_args(exp, initial))
        self._weights = self._server.weights()

    def run_round(self, round_idx: int) -> None:
        """Selects, trains and sums the cohort of round `round_idx`, then steps the strategy."""
        plan = self._scheduler.plan(round_idx, self._now_s)
        partials = self._worker.train(
            self._weights,
            round_idx,
            split_chunks(plan.cohort, self._exp.cluster.chunk_size_for(len(plan.cohort))),
        )
        self._weights, _ = self._server.apply(round_idx, partials)
        self._scheduler.commit(plan)
        self._now_s = plan.end_s

    def weights(self) -> np.ndarray:
        """The current weights."""
        return self._weights.copy()


def floor_weights(experiment: Experiment) -> np.ndarray:
    """Runs `experiment.rounds` floor rounds and returns the final weights."""
    floor = Floor(experiment)
    for round_idx in range(experiment.rounds):
        floor.run_round(round_idx)
    return floor.weights()


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes:
        system: One of `SYSTEMS`.
        num_clients: Population size.
        cohort_size: Clients per round.
        rounds: Rounds to run, the first of which is excluded from the steady statistics.
        seed: Run seed.
        vectorise: "on" (the vectorised client path) or "off" (the per-client loop).
    """

    system: str
    num_clients: int
    cohort_size: int
    rounds: int
    seed: int
    vectorise: str = "on"

    def argv(self) -> list[str]:
        """The command line that runs this case in a fresh interpreter."""
        return [
            sys.executable,
            __file__,
            *("--case", self.system, str(self.num_clients), str(self.cohort_size)),
            *("--rounds", str(self.rounds), "--seed", str(self.seed)),
            *("--vectorise", self.vectorise),
        ]


def _start(case: Case, experiment: Experiment) -> RoundRunner:
    """Builds the case's system; for fedray, starts Ray first."""
    if case.system == "floor":
        return Floor(experiment)
    start_ray(experiment.cluster)
    return Simulation(experiment)


def _stop(case: Case) -> None:
    """Shuts down the Ray that `_start` started, if any."""
    if case.system != "floor":
        ray.shutdown()


def run_case(case: Case) -> dict[str, Any]:
    """Runs one case in this process and returns its measurements.

    `cold_start_s` runs from before building anything (before `ray.init`, or before the floor's
    registry) to the end of round 0; `cold_start_process_s` from the creation of this process
    (so interpreter start and imports included) to the same point. Steady statistics are over
    rounds 1..R-1. `model_sha256` hashes the final weights: the floor's equals fedray's.
    """
    start = time.perf_counter()
    since_process = time.time() - psutil.Process().create_time()
    experiment = build_experiment(
        case.num_clients,
        case.cohort_size,
        case.rounds,
        case.seed,
        WORKERS[case.system],
        case.vectorise,
    )
    runner = _start(case, experiment)
    ends, durations, metrics = [], [], []
    for round_idx in range(case.rounds):
        begin = time.perf_counter()
        metrics.append(runner.run_round(round_idx))
        ends.append(time.perf_counter())
        durations.append(ends[-1] - begin)
    peak_rss = peak_rss_mib()
    model_sha256 = sha256_of(np.ascontiguousarray(runner.weights()).tobytes())
    inrun = {} if case.system == "floor" else {**_inrun_split(metrics[1:]), **_ray_call_ms()}
    _stop(case)
    steady = durations[1:]
    return {
        "bench": "overhead",
        "system": case.system,
        "vectorise": case.vectorise,
        "num_clients": case.num_clients,
        "cohort_size": case.cohort_size,
        "rounds": case.rounds,
        "steady_round_s": statistics.median(steady),
        "steady_round_s_mean": statistics.fmean(steady),
        "steady_round_s_p90": float(np.percentile(steady, 90)),
        "cold_start_s": ends[0] - start,
        "cold_start_process_s": since_process + ends[0] - start,
        "driver_peak_rss_mib": round(peak_rss, 1),
        "model_sha256": model_sha256,
        **inrun,
    }


def _inrun_split(metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """Medians (ms) of a fedray run's own split of its steady rounds (`Simulation.run_round`)."""
    keys = {"train": "system/train_s", "server": "system/server_s", "overhead": "system/overhead_s"}
    return {
        f"inrun_{name}_ms": round(1e3 * statistics.median(m[key] for m in metrics), 3)
        for name, key in keys.items()
    }


class _Echo:
    """An actor that does nothing: the cost of a Ray actor call itself."""

    def echo(self, value: Any) -> Any:
        """Returns `value`."""
        return value


def _ray_call_ms(calls: int = 200) -> dict[str, float]:
    """Median ms of one no-op actor call, submitted and waited for (after a warm-up)."""
    echo: Any = ray.remote(num_cpus=0)(_Echo).remote()
    ray.get([echo.echo.remote(0) for _ in range(10)])
    times = []
    for _ in range(calls):
        begin = time.perf_counter()
        ray.get(echo.echo.remote(0))
        times.append(time.perf_counter() - begin)
    ray.kill(echo)
    return {"ray_call_ms": round(1e3 * statistics.median(times), 3)}


def _run_child(case: Case) -> dict[str, Any]:
    """Runs `case` in a fresh interpreter and returns its JSON result (its last JSON line)."""
    proc = subprocess.run(case.argv(), stdout=subprocess.PIPE, text=True, check=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"bench"'):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"case {case} printed no result; stdout was:\n{proc.stdout}")


def _with_floor(result: dict[str, Any], floor_s: float | None) -> dict[str, Any]:
    """Adds the floor's steady time, the overhead above it (ms) and the ratio to it."""
    steady = result["steady_round_s"]
    return {
        **result,
        "floor_steady_round_s": floor_s,
        "overhead_ms": None if floor_s is None else round(1e3 * (steady - floor_s), 3),
        "ratio_to_floor": None if floor_s is None else round(steady / floor_s, 3),
    }


def run_all(cases: Sequence[Case]) -> None:
    """Runs every case in a subprocess, printing one JSON line per case as it finishes."""
    floors: dict[tuple[int, int, str], float] = {}
    loops: dict[tuple[str, int, int], float] = {}
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case}", file=sys.stderr, flush=True)
        result = _run_child(case)
        key = (case.num_clients, case.cohort_size, case.vectorise)
        if case.system == "floor":
            floors[key] = result["steady_round_s"]
        same = (case.system, case.num_clients, case.cohort_size)
        if case.vectorise == "off":
            loops[same] = result["steady_round_s"]
        line = _with_floor(result, floors.get(key))
        if case.vectorise == "on" and same in loops:
            line["speedup_vs_loop"] = round(loops[same] / result["steady_round_s"], 3)
        print(json.dumps(line), flush=True)


def plan(args: argparse.Namespace) -> list[Case]:
    """The cases: every system x population x cohort x path; floors first, loops before."""
    systems = sorted(_csv(args.systems, str), key=SYSTEMS.index)
    modes = sorted(_csv(args.vectorise, str), key=VECTORISE.index)
    return [
        Case(system, num_clients, cohort, args.rounds, args.seed, mode)
        for system in systems
        for num_clients in _csv(args.populations, int)
        for cohort in _csv(args.cohorts, int)
        for mode in modes
    ]


def _csv(text: str, kind: type[Any]) -> list[Any]:
    return [kind(item) for item in text.split(",") if item]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", default="1000,100000,1000000")
    parser.add_argument("--cohorts", default="10,100")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--vectorise", default="on,off", help="client paths: on, off or both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", nargs=3, metavar=("SYSTEM", "N", "COHORT"), help="internal")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: the first round is excluded from steady statistics")
    unknown = set(_csv(args.systems, str)) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    if not set(_csv(args.vectorise, str)) <= set(VECTORISE) or not _csv(args.vectorise, str):
        parser.error(f"--vectorise must list some of {VECTORISE}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark, or, with `--case`, one case in this process."""
    args = parse_args(argv)
    if args.case is None:
        run_all(plan(args))
        return
    system, num_clients, cohort = args.case
    case = Case(system, int(num_clients), int(cohort), args.rounds, args.seed, args.vectorise)
    print(json.dumps(run_case(case)), flush=True)


if __name__ == "__main__":
    main()
