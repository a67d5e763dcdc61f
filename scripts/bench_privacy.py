"""Costs of the noise mechanisms, as JSON lines: time and memory per round, sensitivity, optimising.

Every case runs in its own fresh subprocess (clean memory figures, cold caches of its own):

- `tree_sensitivity`: the time of `tree_sensitivity_squared(n, k, b)`, once, and its value;
- `optimise`: the time to optimise banded_mf (bands = min(b, n)) and a BLT of `--buffers`
  buffers with an empty cache (a fresh temporary `FEDRAY_CACHE_DIR` each); the factorisation's
  mean squared prefix-sum error per coordinate at sigma = 1, its sens^2, and their product (the
  error at equal rho, which BLT minimises; banded minimises the error, with sens^2 = k);
- `noise_round`: per mechanism and dimension d, privatize on one torch thread: wall time per
  round (mean, p50, p90 after `--warmup` rounds), CPU time, the ratio to gaussian at the same d;
  memory in bytes and in d-vectors (bytes / 4d): the state (tensor bytes of the `NoiseState`
  after the rounds), RSS growth (raw, and after `malloc_trim` hands back freed heap; both from a
  trimmed start) and peak RSS growth (VmHWM). Factorisations come from the cache that
  `optimise` filled; preparing the mechanism with it is `factorisation_s`.

Usage:
    python scripts/bench_privacy.py [--dims 1000000 10000000] [--rounds 20] [--warmup 2]
        [--n 2000] [--max-participations 6] [--min-separation 314] [--buffers 3]
        [--mechanisms gaussian tree tree_efficient banded_mf blt] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

if TYPE_CHECKING:  # torch and the mechanisms load in the cases only: the parent starts fast
    from mechanisms.base import Mechanism

MECHANISMS = ("gaussian", "tree", "tree_efficient", "banded_mf", "blt")


def make_mechanism(name: str, args: argparse.Namespace) -> Mechanism:
    """The mechanism called `name` (one of `MECHANISMS`), sigma = 1, not yet prepared."""
    from mechanisms.banded import BandedMechanism
    from mechanisms.blt import BltMechanism
    from mechanisms.gaussian import GaussianMechanism
    from mechanisms.tree import TreeMechanism

    if name == "gaussian":
        return GaussianMechanism(seed=args.seed)
    if name in ("tree", "tree_efficient"):
        return TreeMechanism(seed=args.seed, efficient=name == "tree_efficient")
    if name == "banded_mf":
        return BandedMechanism(seed=args.seed)
    return BltMechanism(seed=args.seed, buffers=args.buffers)


def prepare(mechanism: Mechanism, args: argparse.Namespace) -> Mechanism:
    """`mechanism` prepared for the bound of `args` (its factorisation optimised, or read)."""
    return mechanism.prepare(args.n, args.max_participations, args.min_separation)


def first_column(mechanism: Mechanism, n: int) -> np.ndarray:
    """The first column of a prepared banded or BLT mechanism's (Toeplitz) C over n rounds."""
    from mechanisms.banded import BandedMechanism
    from mechanisms.blt import BltMechanism

    if isinstance(mechanism, BandedMechanism):
        return mechanism.coefficients
    assert isinstance(mechanism, BltMechanism) and mechanism.factorisation is not None
    return mechanism.factorisation.coefficients(n)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors (and arrays) in `obj`, looking into dicts, lists and tuples."""
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return int(getattr(obj, "nbytes", 0))


def _rss(trim: bool = False) -> int:
    """RSS in bytes; with `trim`, after glibc's `malloc_trim(0)` has handed back freed heap."""
    if trim:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(psutil.Process().memory_info().rss)


def _reset_peak() -> None:
    """Resets VmHWM, the peak RSS, to the current RSS (Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak() -> int:
    """Peak RSS in bytes since `_reset_peak` (VmHWM, Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def _ms(seconds: list[float], q: float | None = None) -> float:
    values = 1e3 * np.asarray(seconds)
    return round(float(values.mean() if q is None else np.percentile(values, q)), 3)


def _line(metric: str, args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    """A JSON line: the bench, `metric`, the (n, k, b) of `args`, then `fields`."""
    bound = {"n": args.n, "max_participations": args.max_participations}
    bound["min_separation"] = args.min_separation
    return {"bench": "privacy", "metric": metric, **bound, **fields}


def noise_case(args: argparse.Namespace, name: str, dim: int) -> dict[str, Any]:
    """Times `--warmup` + `--rounds` rounds of privatize at dimension `dim` and measures memory.

    A throwaway stream first runs the same rounds at d = 16, so that the pages of library code
    and the allocator's small pools that the first rounds touch are not counted; the measured
    stream's state is started after the memory baseline, so its buffers count.
    """
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    mechanism = prepare(make_mechanism(name, args), args)
    factorisation_s = time.perf_counter() - start
    rounds = range(args.warmup + args.rounds)
    spare = mechanism.init_state(16)
    for r in rounds:
        _, spare = mechanism.privatize(torch.zeros(16), r, spare)
    total = torch.randn(dim, generator=torch.Generator().manual_seed(args.seed))
    gc.collect()
    rss_before = _rss(trim=True)
    _reset_peak()
    state = mechanism.init_state(dim)
    wall, cpu = [], []
    for r in rounds:
        cpu_start, start = time.process_time(), time.perf_counter()
        released, state = mechanism.privatize(total, r, state)
        done, cpu_done = time.perf_counter(), time.process_time()
        del released
        if r >= args.warmup:
            wall.append(done - start)
            cpu.append(cpu_done - cpu_start)
    gc.collect()
    rss, peak = _rss() - rss_before, _peak() - rss_before
    trimmed = _rss(trim=True) - rss_before
    state_bytes, vector = tensor_bytes(state.as_dict()), 4 * dim
    return _line(
        "noise_round", args, mechanism=name, dim=dim, rounds=args.rounds, warmup=args.warmup,
        buffers=args.buffers, torch_threads=torch.get_num_threads(),
        round_ms_mean=_ms(wall), round_ms_p50=_ms(wall, 50), round_ms_p90=_ms(wall, 90),
        round_cpu_ms_mean=_ms(cpu), factorisation_s=round(factorisation_s, 4),
        state_bytes=state_bytes, state_d=round(state_bytes / vector, 3),
        rss_growth_bytes=rss, rss_growth_d=round(rss / vector, 3),
        rss_growth_trimmed_d=round(trimmed / vector, 3), peak_rss_growth_d=round(peak / vector, 3),
    )  # fmt: skip


def sensitivity_case(args: argparse.Namespace) -> dict[str, Any]:
    """Times one call of `tree_sensitivity_squared(n, k, b)`."""
    from mechanisms.tree_sensitivity import tree_sensitivity_squared

    cpu_start, start = time.process_time(), time.perf_counter()
    value = tree_sensitivity_squared(args.n, args.max_participations, args.min_separation)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return _line(
        "tree_sensitivity", args, seconds=round(seconds, 4), cpu_seconds=round(cpu, 4), value=value
    )


def optimise_case(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Times the optimisation of `name`'s factorisation (`FEDRAY_CACHE_DIR` is empty)."""
    from mechanisms.toeplitz import prefix_error

    unprepared = make_mechanism(name, args)
    cpu_start, start = time.process_time(), time.perf_counter()
    mechanism = prepare(unprepared, args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    n, k, b = args.n, args.max_participations, args.min_separation
    error = prefix_error(first_column(mechanism, n), n)[0] / n
    sens = mechanism.sensitivity_squared(n, k, b)
    size = {"bands": min(b, n)} if name == "banded_mf" else {"buffers": args.buffers}
    return _line(
        "optimise", args, mechanism=name, **size, seconds=round(seconds, 3),
        cpu_seconds=round(cpu, 3), mean_sq_prefix_error=round(error, 6),
        sensitivity_squared=round(sens, 6), error_at_equal_rho=round(error * sens, 6),
    )  # fmt: skip


def run_case(args: argparse.Namespace) -> None:
    """Runs the one case of `--case` in this process and prints its JSON line."""
    kind, *params = args.case
    if kind == "noise":
        line = noise_case(args, params[0], int(params[1]))
    elif kind == "optimise":
        line = optimise_case(args, params[0])
    else:
        line = sensitivity_case(args)
    print(json.dumps(line), flush=True)


def child(args: argparse.Namespace, case: Sequence[str], cache: Path) -> dict[str, Any]:
    """Runs one case in a fresh interpreter with `FEDRAY_CACHE_DIR=cache`; returns its line."""
    print(f"case {' '.join(case)}", file=sys.stderr, flush=True)
    keys = ("n", "rounds", "warmup", "max_participations", "min_separation", "buffers", "seed")
    common = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in keys]
    argv = [sys.executable, __file__, *common, "--case", *case]
    env = {**os.environ, "FEDRAY_CACHE_DIR": str(cache)}
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True, env=env)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run_all(args: argparse.Namespace) -> None:
    """Runs every case in a fresh interpreter: sensitivity, optimising, then noise rounds."""
    with tempfile.TemporaryDirectory(prefix="bench_privacy_") as tmp:
        shared = Path(tmp, "shared")
        shared.mkdir()
        print(json.dumps(child(args, ["sensitivity"], shared)), flush=True)
        for name in (m for m in ("banded_mf", "blt") if m in args.mechanisms):
            fresh = Path(tmp, name)
            fresh.mkdir()
            print(json.dumps(child(args, ["optimise", name], fresh)), flush=True)
            for file in fresh.glob("*.json"):
                shutil.copy(file, shared)
        for dim in args.dims:
            baseline: dict[str, Any] | None = None
            for name in (m for m in MECHANISMS if m in args.mechanisms):
                line = child(args, ["noise", name, str(dim)], shared)
                baseline = line if name == "gaussian" else baseline
                if baseline is not None:
                    for stat in ("mean", "p50"):
                        ratio = line[f"round_ms_{stat}"] / baseline[f"round_ms_{stat}"]
                        line[f"ratio_to_gaussian_{stat}"] = round(ratio, 3)
                print(json.dumps(line), flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--n", type=int, default=2000, help="planned rounds of banded/BLT")
    parser.add_argument("--max-participations", type=int, default=6)
    parser.add_argument("--min-separation", type=int, default=314)
    parser.add_argument("--buffers", type=int, default=3, help="BLT buffers")
    parser.add_argument("--mechanisms", nargs="+", choices=MECHANISMS, default=list(MECHANISMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", nargs="+", metavar="ARG", help="internal: run one case here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or min(args.dims) < 1:
        parser.error("--rounds and --dims must be >= 1, --warmup >= 0")
    if min(args.n, args.max_participations, args.min_separation, args.buffers) < 1:
        parser.error("--n, --max-participations, --min-separation and --buffers must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark, or, with `--case`, one case in this process."""
    args = parse_args(argv)
    if args.case is None:
        run_all(args)
    else:
        run_case(args)


if __name__ == "__main__":
    main()
