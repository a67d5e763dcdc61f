"""fedray against Flower and pfl-research on one identical workload, as JSON lines.

Every system trains the same FedAvg workload: fedray's own population (same seed, hence the same
clients and held-out clients) and model (same initial weights), the same local SGD (epochs,
batch size, learning rate), cohort and rounds; each evaluates its final model on the same
held-out clients (fedray's round deadline is lifted, so that, like the peers, it waits for the
whole cohort). fedray runs through its CLI (`python -m engine.run`); each peer runs
`scripts/peers/<peer>_workload.py` with the python of its own venv under `.bench/`
(`venv-flower`: `flwr[simulation]`, which pins its own ray; `venv-pfl`: `pfl`, which pins an
older dp-accounting), created here once with `python -m venv` and pip, never in `.venv`.

Each (system, case) runs in a fresh subprocess, at most `--timeout` seconds (a case a system
cannot finish in time prints a "skipped" line). Measurements follow `scripts/bench_overhead.py`:

- `steady_s_per_round`: mean wall time of rounds 1..R-1 (round 0 is the warm-up);
- `cold_start_s`: from before the system is built (before Ray starts) to the end of round 0;
- `driver_peak_rss_mib`: peak RSS of the driver process (not of Ray's workers).

fedray's line carries `speedup_vs_<peer>` (the peer's steady s/round over fedray's) and
`accuracy_agrees_<peer>`: |accuracy difference| <= max(`--accuracy-tolerance`, 3 x seed std)
(the std when `--seeds` > 1). A case whose accuracies disagree prints a "void" line: its timings
compare different computations.

Usage:
    python scripts/bench_peers.py [--systems fedray,flower,pfl] [--models logreg,cnn]
        [--cohorts 10,100] [--populations 1000,100000,1000000] [--rounds 20] [--seed 0]
        [--seeds 1] [--timeout 600] [--bench-dir .bench]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = REPO_ROOT / "scripts" / "peers"
RESULT_PREFIX = '{"bench": "peers"'
SYSTEMS = ("flower", "pfl", "fedray")  # peers first: fedray's line carries the ratios
PEERS = ("flower", "pfl")
TORCH_PIN = "torch==2.13.0"


@dataclass(frozen=True)
class Peer:
    """A peer system: its venv, what it needs installed and how to check it.

    Attributes:
        name: System name.
        requirement: The peer's own pip requirement.
        imports: Modules that must import in its venv.
        script: Its workload script under `scripts/peers/`.
    """

    name: str
    requirement: str
    imports: tuple[str, ...]
    script: str


PEER_TABLE = {
    "flower": Peer("flower", "flwr[simulation]", ("flwr", "ray", "torch", "scipy"), "flower"),
    "pfl": Peer("pfl", "pfl", ("pfl", "torch", "scipy"), "pfl"),
}


@dataclass(frozen=True)
class ModelCase:
    """A model of the benchmark and the population it trains on, by fedray config name.

    Attributes:
        name: Name on the command line.
        model: `conf/model/<model>.yaml`.
        population: `conf/population/<population>.yaml`.
    """

    name: str
    model: str
    population: str


MODEL_TABLE = {
    "logreg": ModelCase("logreg", "logreg", "synthetic"),
    "cnn": ModelCase("cnn", "cnn", "femnist"),
}


@dataclass(frozen=True)
class Case:
    """One benchmark case, the same for every system.

    Attributes:
        model: Key of `MODEL_TABLE`.
        num_clients: Population size.
        cohort: Clients per round.
        rounds: Rounds (round 0 is excluded from the steady statistics).
        seed: Run seed.
        epochs: Local epochs.
        batch_size: Local batch size.
        lr: Local learning rate.
        eval_clients: Held-out clients of the final evaluation.
    """

    model: str
    num_clients: int
    cohort: int
    rounds: int
    seed: int = 0
    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.1
    eval_clients: int = 100

    def describe(self) -> dict[str, Any]:
        """The case's fields of a result line."""
        return {
            "model": self.model,
            "population": self.num_clients,
            "cohort": self.cohort,
            "rounds": self.rounds,
            "seed": self.seed,
        }


class UnavailableError(RuntimeError):
    """A model or population of the table that this checkout does not have (yet)."""


def _conf(group: str, name: str) -> tuple[str, dict[str, Any]]:
    """The `_target_` and the literal keyword arguments of `conf/<group>/<name>.yaml`."""
    path = REPO_ROOT / "conf" / group / f"{name}.yaml"
    if not path.exists():
        raise UnavailableError(f"no {path.relative_to(REPO_ROOT)}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    kwargs = {
        key: value
        for key, value in raw.items()
        if not key.startswith("_")
        and key != "defaults"
        and not (isinstance(value, str) and "${" in value)
    }
    return str(raw.get("_target_", "")), kwargs


def _check_target(target: str) -> None:
    """Raises `UnavailableError` unless `target` ("pkg.module.Name") imports here."""
    module, _, name = target.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise UnavailableError(f"{target} is not importable ({error})") from None


def workload_spec(case: Case) -> dict[str, Any]:
    """The peer workloads' JSON spec of `case` (see `scripts/peers/peer_common.Spec`).

    Raises:
        UnavailableError: If the model or population of the case is not in this checkout.
    """
    entry = MODEL_TABLE[case.model]
    model_target, model_kwargs = _conf("model", entry.model)
    population_target, population_kwargs = _conf("population", entry.population)
    for target in (model_target, population_target):
        _check_target(target)
    population_kwargs.update(num_clients=case.num_clients, seed=case.seed)
    return {
        "model": case.model,
        "model_target": model_target,
        "model_kwargs": model_kwargs,
        "population_target": population_target,
        "population_kwargs": population_kwargs,
        "cohort": case.cohort,
        "rounds": case.rounds,
        "epochs": case.epochs,
        "batch_size": case.batch_size,
        "lr": case.lr,
        "seed": case.seed,
        "eval_clients": case.eval_clients,
    }


# --- peer venvs -------------------------------------------------------------------------------


def venv_python(bench_dir: Path, peer: str) -> Path:
    """The python of `peer`'s venv."""
    return bench_dir / f"venv-{peer}" / "bin" / "python"


def venv_works(python: Path, imports: Sequence[str]) -> bool:
    """Whether `python` exists and imports every module of `imports`."""
    if not python.exists():
        return False
    check = subprocess.run(
        [str(python), "-c", f"import {', '.join(imports)}"], capture_output=True, check=False
    )
    return check.returncode == 0


def ensure_venv(bench_dir: Path, peer: Peer, log: Callable[[str], None]) -> Path:
    """Creates `peer`'s venv with pip unless it already works; returns its python.

    torch is pinned to `TORCH_PIN`; if pip cannot resolve that with the peer's own pins, the
    install is retried with whatever torch pip resolves (the result lines record the versions).

    Raises:
        RuntimeError: If the venv still does not work after installing.
    """
    python = venv_python(bench_dir, peer.name)
    if venv_works(python, peer.imports):
        return python
    venv = python.parent.parent
    log(f"creating {venv} ({peer.requirement}, {TORCH_PIN}, numpy, scipy)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    pinned = subprocess.run([*pip, peer.requirement, TORCH_PIN, "numpy", "scipy"], check=False)
    if pinned.returncode != 0:
        log(f"{peer.name}: {TORCH_PIN} conflicts with its pins; taking the torch pip resolves")
        subprocess.run([*pip, peer.requirement, "torch", "numpy", "scipy"], check=True)
    if not venv_works(python, peer.imports):
        raise RuntimeError(f"{venv} was installed but cannot import {peer.imports}")
    return python


# --- running one (system, case) ---------------------------------------------------------------


class CaseTimeoutError(RuntimeError):
    """A system did not finish a case within the time limit."""


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Runs `argv` and returns its stdout; stderr passes through.

    Raises:
        CaseTimeoutError: After `timeout` seconds (the process is killed).
        RuntimeError: If it fails.
    """
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT, start_new_session=True
    )
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CaseTimeoutError(f"did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {' '.join(argv[:3])} ...")
    return stdout


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kills `proc` and its process group (its Ray workers included), then reaps it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def fedray_overrides(case: Case, run_dir: Path) -> list[str]:
    """The fedray command-line overrides that run `case`, writing to `run_dir`."""
    entry = MODEL_TABLE[case.model]
    return [
        f"model={entry.model}",
        f"population={entry.population}",
        f"population.num_clients={case.num_clients}",
        "availability=always",
        "participation=uniform",
        f"participation.cohort_size={case.cohort}",
        f"rounds={case.rounds}",
        f"seed={case.seed}",
        f"training.epochs={case.epochs}",
        f"training.batch_size={case.batch_size}",
        f"training.lr={case.lr}",
        "clock.deadline_s=1000000000.0",  # no stragglers: the peers wait for every client
        "tracking.mode=disabled",
        "tracking.progress=false",
        "eval.every=0",
        f"eval.num_clients={case.eval_clients}",
        f"hydra.run.dir={run_dir}",
    ]


def fedray_measurements(run_dir: Path) -> dict[str, Any]:
    """Reads a finished fedray run's metrics.jsonl and summary.json into a result's fields."""
    rounds = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    durations = [r["system/round_s"] for r in rounds if "system/round_s" in r]
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    steady = durations[1:] or durations
    return {
        "rounds_completed": len(durations),
        "steady_s_per_round": statistics.fmean(steady),
        "steady_s_per_round_median": statistics.median(steady),
        "cold_start_s": summary["system/cold_start_s"] + durations[0],
        "total_s": summary["system/total_s"],
        "driver_peak_rss_mib": round(summary["system/driver_peak_rss_mib"], 1),
        "final_accuracy": summary["final/eval_accuracy"],
    }


def fedray_versions() -> dict[str, str]:
    """Versions of fedray and its main dependencies, in this interpreter."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("fedray", "ray", "torch", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def run_fedray(case: Case, timeout: float) -> dict[str, Any]:
    """Runs `case` through fedray's CLI in a subprocess; returns its measurements."""
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        run_dir = Path(tmp) / "run"
        argv = [sys.executable, "-m", "engine.run", *fedray_overrides(case, run_dir)]
        env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
        _run(argv, timeout, env)
        return {"versions": fedray_versions(), **fedray_measurements(run_dir)}


def parse_result(stdout: str) -> dict[str, Any]:
    """The last result line (`RESULT_PREFIX`...) of a peer workload's stdout."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError("the workload printed no result line")


def run_peer(python: Path, peer: Peer, case: Case, timeout: float) -> dict[str, Any]:
    """Runs `case` with `peer`'s workload script in its venv; returns its measurements."""
    script = PEERS_DIR / f"{peer.script}_workload.py"
    argv = [str(python), str(script), "--spec", json.dumps(workload_spec(case))]
    path = os.pathsep.join([str(PEERS_DIR), str(REPO_ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "RAY_DEDUP_LOGS": "0"}
    result = parse_result(_run(argv, timeout, env))
    keep = (
        "versions",
        "rounds_completed",
        "steady_s_per_round",
        "steady_s_per_round_median",
        "cold_start_s",
        "total_s",
        "driver_peak_rss_mib",
        "final_accuracy",
    )
    return {key: result[key] for key in keep}


# --- result lines -----------------------------------------------------------------------------


def result_line(system: str, case: Case, measured: dict[str, Any]) -> dict[str, Any]:
    """A finished case's JSON line."""
    return {"bench": "peers", "system": system, "status": "ok", **case.describe(), **measured}


def skipped_line(system: str, case: Case, reason: str) -> dict[str, Any]:
    """The JSON line of a case that `system` did not run or finish."""
    return {
        "bench": "peers",
        "system": system,
        "status": "skipped",
        **case.describe(),
        "reason": reason,
    }


def agrees(accuracy: float, other: float, tolerance: float, seed_std: float | None) -> bool:
    """Whether two final accuracies agree within noise: |diff| <= max(tolerance, 3 x std)."""
    bound = max(tolerance, 3.0 * seed_std) if seed_std is not None else tolerance
    return abs(accuracy - other) <= bound


def compare(
    fedray: dict[str, Any], peers: dict[str, dict[str, Any]], tolerance: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fedray line with a speedup and agreement per finished peer, and the void lines.

    Args:
        fedray: fedray's result line (status "ok").
        peers: The peers' result lines of the same case, by system.
        tolerance: Smallest accuracy difference that voids a comparison.

    Returns:
        fedray's line with `speedup_vs_<peer>` and `accuracy_agrees_<peer>` for each peer that
        finished, and one "void" line per peer whose accuracy disagrees with fedray's.
    """
    line, voids = dict(fedray), []
    for name, peer in peers.items():
        if peer.get("status") != "ok":
            line[f"speedup_vs_{name}"] = None
            continue
        speedup = peer["steady_s_per_round"] / fedray["steady_s_per_round"]
        line[f"speedup_vs_{name}"] = round(speedup, 3)
        stds = [s for s in (fedray.get("accuracy_std"), peer.get("accuracy_std")) if s is not None]
        ok = agrees(
            fedray["final_accuracy"], peer["final_accuracy"], tolerance, max(stds, default=None)
        )
        line[f"accuracy_agrees_{name}"] = ok
        if not ok:
            voids.append(
                {
                    "bench": "peers",
                    "status": "void",
                    "systems": ["fedray", name],
                    **{k: v for k, v in fedray.items() if k in ("model", "population", "cohort")},
                    "reason": (
                        f"final accuracies disagree: fedray {fedray['final_accuracy']:.4f}, "
                        f"{name} {peer['final_accuracy']:.4f}; the speed comparison is void"
                    ),
                }
            )
    return line, voids


# --- planning and the main loop ---------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Case]:
    """Every model x population x cohort of the command line, in that order."""
    return [
        Case(model, num_clients, cohort, args.rounds, args.seed)
        for model in _csv(args.models, str)
        for num_clients in _csv(args.populations, int)
        for cohort in _csv(args.cohorts, int)
    ]


def why_not(case: Case) -> str | None:
    """Why `case` cannot run in any system, or None if it can."""
    if case.cohort > case.num_clients:
        return f"cohort {case.cohort} > population {case.num_clients}"
    try:
        workload_spec(case)
    except UnavailableError as error:
        return f"{case.model} not available in this checkout: {error}"
    return None


Runner = Callable[[str, Case, int], dict[str, Any]]


def with_seeds(run: Callable[[Case], dict[str, Any]], case: Case, seeds: int) -> dict[str, Any]:
    """Runs `case` with seeds seed..seed+seeds-1; timings of the first, accuracy mean and std."""
    first = run(case)
    if seeds <= 1:
        return first
    accuracies = [first["final_accuracy"]]
    for offset in range(1, seeds):
        other = Case(**{**asdict(case), "seed": case.seed + offset})
        accuracies.append(run(other)["final_accuracy"])
    return {
        **first,
        "final_accuracy": statistics.fmean(accuracies),
        "accuracy_std": statistics.stdev(accuracies),
        "seeds": seeds,
    }


def run_system(
    system: str, case: Case, pythons: dict[str, Path], args: argparse.Namespace
) -> dict[str, Any]:
    """Runs `case` in `system` (all its seeds); returns its result or skipped line."""

    def once(one: Case) -> dict[str, Any]:
        if system == "fedray":
            return run_fedray(one, args.timeout)
        return run_peer(pythons[system], PEER_TABLE[system], one, args.timeout)

    try:
        return result_line(system, case, with_seeds(once, case, args.seeds))
    except CaseTimeoutError as error:
        return skipped_line(system, case, f"{system} {error} (--timeout {args.timeout:.0f})")
    except RuntimeError as error:
        return skipped_line(system, case, f"{system} failed: {error}")


def emit(line: dict[str, Any]) -> None:
    """Prints one JSON line, and a readable note on stderr for skipped and void lines."""
    print(json.dumps(line), flush=True)
    if line.get("status") in ("skipped", "void"):
        print(f"NOTE: {line['reason']}", file=sys.stderr, flush=True)


def run_case(
    case: Case, systems: Sequence[str], pythons: dict[str, Path], args: argparse.Namespace
) -> None:
    """Runs `case` in every system (peers first) and prints its lines."""
    reason = why_not(case)
    if reason is not None:
        for system in systems:
            emit(skipped_line(system, case, reason))
        return
    peers: dict[str, dict[str, Any]] = {}
    for system in systems:
        print(f"[{system}] {case}", file=sys.stderr, flush=True)
        line = run_system(system, case, pythons, args)
        if system != "fedray":
            peers[system] = line
            emit(line)
        elif line["status"] == "ok":
            line, voids = compare(line, peers, args.accuracy_tolerance)
            emit(line)
            for void in voids:
                emit(void)
        else:
            emit(line)


def _csv(text: str, kind: type[Any]) -> list[Any]:
    return [kind(item) for item in text.split(",") if item]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--models", default=",".join(MODEL_TABLE))
    parser.add_argument("--cohorts", default="10,100")
    parser.add_argument("--populations", default="1000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per case, for accuracy std")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per system/case")
    parser.add_argument("--accuracy-tolerance", type=float, default=0.02)
    parser.add_argument("--bench-dir", type=Path, default=REPO_ROOT / ".bench")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: round 0 is excluded from the steady statistics")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    for flag, chosen, known in (
        ("--systems", _csv(args.systems, str), SYSTEMS),
        ("--models", _csv(args.models, str), tuple(MODEL_TABLE)),
    ):
        unknown = set(chosen) - set(known)
        if unknown or not chosen:
            parser.error(f"{flag}: unknown or empty {sorted(unknown)}; choose from {known}")
    try:
        _csv(args.cohorts, int), _csv(args.populations, int)
    except ValueError as error:
        parser.error(str(error))
    return args


def prepare_peers(systems: Sequence[str], bench_dir: Path) -> dict[str, Path]:
    """Each selected peer's venv python, creating the venvs that do not work yet."""
    pythons = {}
    for system in systems:
        if system in PEER_TABLE:
            started = time.perf_counter()
            pythons[system] = ensure_venv(bench_dir, PEER_TABLE[system], _log)
            _log(f"{system} venv ready ({time.perf_counter() - started:.1f} s)")
    return pythons


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark."""
    args = parse_args(argv)
    systems = sorted(_csv(args.systems, str), key=SYSTEMS.index)
    pythons = prepare_peers(systems, args.bench_dir.resolve())
    for case in plan(args):
        run_case(case, systems, pythons, args)


if __name__ == "__main__":
    main()
