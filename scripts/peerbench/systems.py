"""Running one seed of a case in one system, in a fresh subprocess with a time limit.

fedray runs through its CLI (`python -m engine.app.run`) with its participation log on, and the
cohorts it trained are read back from that log (`read_cohorts`). Each peer runs
`scripts/peers/<peer>_workload.py` with the python of its venv, on a spec file that carries
those cohorts when fedray ran first.

Measurements follow `scripts/bench_overhead.py`: `steady_s_per_round` is the mean wall time of
rounds 1..R-1 (round 0 is the warm-up); `cold_start_s` runs from before the system is built
(before Ray starts) to the end of round 0; `driver_peak_rss_mib` is the peak RSS of the driver
process (not of Ray's workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from peerbench.cases import MODEL_TABLE, PEERS_DIR, REPO_ROOT, Case, Cohorts, Peer, workload_spec

RESULT_PREFIX = '{"bench": "peers"'
MEASUREMENTS = (
    "versions",
    "rounds_completed",
    "steady_s_per_round",
    "steady_s_per_round_median",
    "cold_start_s",
    "total_s",
    "driver_peak_rss_mib",
    "final_accuracy",
)


class CaseTimeoutError(RuntimeError):
    """A system did not finish a case within the time limit."""


def run_command(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Runs `argv` in the repository root and returns its stdout; stderr passes through.

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


# --- fedray -----------------------------------------------------------------------------------


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
        "tracking.participation_log=true",  # the cohorts the peers replay
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
    found = {}
    for name in ("fedray", "ray", "torch", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def read_cohorts(log_path: Path, rounds: int) -> Cohorts:
    """The clients each of `rounds` rounds committed, from a participation log (`read_log`).

    Args:
        log_path: The run's `participation.parquet`.
        rounds: Rounds of the run (a round that committed nobody has no rows).
    """
    from engine.scheduling import read_log

    round_ids, client_ids = read_log(log_path)  # in commit order: rounds ascending
    bounds = np.searchsorted(round_ids, np.arange(1, rounds), side="left")
    return [[int(c) for c in part] for part in np.split(client_ids, bounds)]


def run_fedray(case: Case, timeout: float) -> tuple[dict[str, Any], Cohorts]:
    """Runs `case` through fedray's CLI in a subprocess; returns its measurements and cohorts."""
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        run_dir = Path(tmp) / "run"
        argv = [sys.executable, "-m", "engine.app.run", *fedray_overrides(case, run_dir)]
        env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
        run_command(argv, timeout, env)
        measured = {"versions": fedray_versions(), **fedray_measurements(run_dir)}
        return measured, read_cohorts(run_dir / "participation.parquet", case.rounds)


# --- peers ------------------------------------------------------------------------------------


def parse_result(stdout: str) -> dict[str, Any]:
    """The last result line (`RESULT_PREFIX`...) of a peer workload's stdout."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError("the workload printed no result line")


def run_peer(
    python: Path, peer: Peer, case: Case, timeout: float, cohorts: Cohorts | None = None
) -> dict[str, Any]:
    """Runs `case` with `peer`'s workload script in its venv; returns its measurements.

    Args:
        python: The python of the peer's venv.
        peer: The peer.
        case: The case.
        timeout: Seconds before the run is killed.
        cohorts: The cohorts it must train (fedray's); None lets it sample its own.
    """
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps(workload_spec(case, cohorts)), encoding="utf-8")
        argv = [str(python), str(PEERS_DIR / f"{peer.script}_workload.py"), "--spec", str(spec)]
        path = os.pathsep.join([str(PEERS_DIR), str(REPO_ROOT)])
        env = {**os.environ, "PYTHONPATH": path, "RAY_DEDUP_LOGS": "0"}
        result = parse_result(run_command(argv, timeout, env))
    return {key: result[key] for key in MEASUREMENTS}
