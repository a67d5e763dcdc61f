"""Population-scale costs of the driver, as JSON lines: memory per client and time per round.

For each population size N, in its own fresh subprocess (so that its RSS is its own):

- memory: what the driver holds per client for a run (the population's registry, diurnal
  availability windows, the participation ledger and one availability mask), as RSS growth,
  peak RSS growth and the arrays' own bytes, each divided by N;
- time per round, for each policy (uniform and cyclic, both with a min separation of b rounds)
  and cohort size: availability mask, selection against the ledger, and the ledger's commit, at
  simulated times `--round-s` apart so that diurnal availability moves. The timed rounds start
  at `--start-h` UTC (22 h: the default 50 rounds span the population's night, when 50-95% are
  online; 12 h measures the trough, when almost nobody is). By default the ledger is first
  warmed up for b rounds before that, so that the timed rounds see the steady state in which
  the clients of the last b rounds are ineligible.

A round line's `meets_target` compares its wall-clock p90 with `target_ms`; its
`round_cpu_ms_mean` (process CPU time) is the figure to read on a machine shared with other load.

Usage:
    python scripts/bench_population.py [--num-clients 1000000 10000000] [--cohorts 1000 10000]
        [--rounds 50] [--warmup B] [--min-separation 100] [--round-s 600] [--start-h 22]
        [--seed 0]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psutil

from common.rng import Stream, generator
from engine.population import Availability, DiurnalAvailability, SyntheticPopulation
from engine.scheduling import CyclicParticipation, ParticipationLedger, UniformParticipation

TARGET_BYTES_PER_CLIENT = 64
TARGET_MS = 100.0
POLICIES = ("uniform_minsep", "cyclic_minsep")


def make_policy(name: str, cohort_size: int, min_separation: int) -> UniformParticipation:
    """The policy called `name` (one of `POLICIES`) with the given cohort and separation."""
    if name == "uniform_minsep":
        return UniformParticipation(cohort_size=cohort_size, min_separation=min_separation)
    return CyclicParticipation(cohort_size=cohort_size, min_separation=min_separation, num_groups=4)


def _arrays(obj: Any) -> Iterator[np.ndarray]:
    """The numpy arrays an object holds directly: attributes and cached tuples of arrays."""
    for value in vars(obj).values():
        items = value if isinstance(value, tuple) else (value,)
        yield from (item for item in items if isinstance(item, np.ndarray))


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    """Peak RSS of this process in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_memory(num_clients: int, seed: int) -> tuple[dict[str, Any], Availability]:
    """Builds the driver's per-client state and measures it.

    Everything is imported before the first reading. `np.zeros` maps its pages lazily, so every
    column is written once (as a long run eventually does) before the second reading.

    Returns:
        The memory line, and the availability model (kept for the timing cases).
    """
    gc.collect()
    rss_before, peak_before = _rss(), _peak_rss()
    registry = SyntheticPopulation(num_clients=num_clients, seed=seed).registry()
    availability = DiurnalAvailability(num_clients=num_clients, seed=seed)
    mask = availability.available(0.0)
    ledger = ParticipationLedger(num_clients)
    columns = [registry.num_examples, *_arrays(availability), *_arrays(ledger), mask]
    for column in columns:
        pages = column.view(np.uint8)[::4096]
        pages += 0  # writes one byte per page, unchanged: every page is now resident
    gc.collect()
    rss_after, peak_after = _rss(), _peak_rss()
    per_client = (rss_after - rss_before) / num_clients
    peak_per_client = (peak_after - peak_before) / num_clients
    line = {
        "bench": "population",
        "num_clients": num_clients,
        "metric": "memory",
        "bytes_per_client": round(per_client, 2),
        "peak_bytes_per_client": round(peak_per_client, 2),
        "columns_bytes_per_client": round(sum(c.nbytes for c in columns) / num_clients, 2),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "target_bytes_per_client": TARGET_BYTES_PER_CLIENT,
        "meets_target": max(per_client, peak_per_client) <= TARGET_BYTES_PER_CLIENT,
    }
    return line, availability


def time_rounds(
    availability: Availability,
    policy: UniformParticipation,
    rounds: int,
    warmup: int,
    round_s: float,
    start_h: float,
    seed: int,
) -> dict[str, Any]:
    """Runs `warmup` + `rounds` rounds on a fresh ledger and times the last `rounds`.

    Round r starts at `start_h` hours + (r - warmup) * `round_s` seconds: the first timed round
    at `start_h`, the warm-up before it.

    A round is the driver's availability -> selection -> commit, as `engine.scheduling` runs it
    (every selected client commits: no dropouts).
    """
    num_clients = availability.num_clients
    ledger = ParticipationLedger(num_clients)
    steps: list[tuple[float, float, float]] = []
    selected, available, cpu = [], [], []
    for r in range(warmup + rounds):
        t = start_h * 3600.0 + (r - warmup) * round_s
        cpu_start, start = time.process_time(), time.perf_counter()
        mask = availability.available(t)
        picked = time.perf_counter()
        rng = generator(seed, Stream.SELECTION, r, 0)
        ids = policy.select(r, t, mask, ledger, rng, policy.cohort_size)
        chosen = time.perf_counter()
        ledger.record(r, t, ids)
        done, cpu_done = time.perf_counter(), time.process_time()
        if r >= warmup:
            cpu.append(cpu_done - cpu_start)
            steps.append((picked - start, chosen - picked, done - chosen))
            selected.append(len(ids))
            available.append(np.count_nonzero(mask) / num_clients)
    ms = 1e3 * np.asarray(steps)
    total = ms.sum(axis=1)
    last = ledger.last_round
    recent = np.count_nonzero((last >= 0) & (warmup + rounds - last < policy.min_separation))
    return {
        "round_ms_mean": round(float(total.mean()), 3),
        "round_ms_p50": round(float(np.percentile(total, 50)), 3),
        "round_ms_p90": round(float(np.percentile(total, 90)), 3),
        "availability_ms": round(float(ms[:, 0].mean()), 3),
        "select_ms": round(float(ms[:, 1].mean()), 3),
        "ledger_ms": round(float(ms[:, 2].mean()), 3),
        "round_cpu_ms_mean": round(1e3 * float(np.mean(cpu)), 3),
        "selected_mean": round(float(np.mean(selected)), 1),
        "available_fraction_mean": round(float(np.mean(available)), 4),
        "available_fraction_min": round(float(np.min(available)), 4),
        "ineligible_fraction_end": round(recent / num_clients, 4),
    }


def run_case(args: argparse.Namespace, num_clients: int) -> None:
    """Measures one population size in this process, printing one JSON line per measurement."""
    memory, availability = measure_memory(num_clients, args.seed)
    print(json.dumps(memory), flush=True)
    warmup = args.min_separation if args.warmup is None else args.warmup
    for name in POLICIES:
        for cohort in args.cohorts:
            print(f"N={num_clients} {name} cohort={cohort}", file=sys.stderr, flush=True)
            policy = make_policy(name, cohort, args.min_separation)
            gc.collect()
            stats = time_rounds(
                availability, policy, args.rounds, warmup, args.round_s, args.start_h, args.seed
            )
            line = {
                "bench": "population",
                "num_clients": num_clients,
                "metric": "round",
                "policy": name,
                "cohort_size": cohort,
                "min_separation": args.min_separation,
                "rounds": args.rounds,
                "warmup": warmup,
                "start_h": args.start_h,
                **stats,
                "target_ms": TARGET_MS,
                "meets_target": stats["round_ms_p90"] <= TARGET_MS,
            }
            print(json.dumps(line), flush=True)


def run_all(args: argparse.Namespace) -> None:
    """Runs each population size in a fresh interpreter and relays its JSON lines."""
    common = [
        *("--cohorts", *map(str, args.cohorts), "--rounds", str(args.rounds)),
        *("--min-separation", str(args.min_separation), "--round-s", str(args.round_s)),
        *("--start-h", str(args.start_h), "--seed", str(args.seed)),
        *(() if args.warmup is None else ("--warmup", str(args.warmup))),
    ]
    for i, num_clients in enumerate(args.num_clients, 1):
        print(f"[{i}/{len(args.num_clients)}] N={num_clients}", file=sys.stderr, flush=True)
        argv = [sys.executable, __file__, "--case", str(num_clients), *common]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, argv)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-clients", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--rounds", type=int, default=50, help="timed rounds per case")
    parser.add_argument("--warmup", type=int, default=None, help="default: --min-separation")
    parser.add_argument("--min-separation", type=int, default=100)
    parser.add_argument("--round-s", type=float, default=600.0, help="simulated s per round")
    parser.add_argument("--start-h", type=float, default=22.0, help="first timed round, UTC h")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, metavar="N", help="internal: run one N here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.warmup is not None and args.warmup < 0):
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    if min(args.num_clients) < 1 or min(args.cohorts) < 1 or args.min_separation < 1:
        parser.error("--num-clients, --cohorts and --min-separation must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark, or, with `--case N`, one population size in this process."""
    args = parse_args(argv)
    if args.case is None:
        run_all(args)
    else:
        run_case(args, args.case)


if __name__ == "__main__":
    main()
