"""One case in every selected system: fedray first, then each peer on fedray's cohorts.

fedray's run records the cohorts it trained, by seed; each peer then replays them, so that every
system trains the same clients with the same batches. Without fedray (or if it did not finish)
the peers sample their own cohorts and their lines say `"same_cohorts": false`. Peer lines are
printed as they finish, fedray's last (it carries the speed ratios), then any "void" lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peerbench.cases import PEER_TABLE, Case, Cohorts, why_not
from peerbench.compare import fedray_lines, result_line, skipped_line
from peerbench.systems import CaseTimeoutError, run_fedray, run_peer

Runner = Callable[[Case], dict[str, Any]]


def log(message: str) -> None:
    """Prints a progress message on stderr."""
    print(message, file=sys.stderr, flush=True)


def emit(line: dict[str, Any]) -> None:
    """Prints one JSON line, and a readable note on stderr for skipped and void lines."""
    print(json.dumps(line), flush=True)
    if line.get("status") in ("skipped", "void"):
        log(f"NOTE: {line['reason']}")


def with_seeds(run: Runner, case: Case, seeds: int) -> dict[str, Any]:
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


def runner(
    system: str, pythons: dict[str, Path], timeout: float, shared: dict[int, Cohorts]
) -> Runner:
    """One seed of `system`: fedray stores its cohorts in `shared` by seed, a peer replays them."""

    def once(case: Case) -> dict[str, Any]:
        if system == "fedray":
            measured, shared[case.seed] = run_fedray(case, timeout)
            return measured
        cohorts = shared.get(case.seed)
        return run_peer(pythons[system], PEER_TABLE[system], case, timeout, cohorts)

    return once


def run_system(
    system: str, case: Case, run: Runner, args: argparse.Namespace, same_cohorts: bool
) -> dict[str, Any]:
    """Runs `case` in `system` (all its seeds) with `run`; returns its result or skipped line."""
    log(f"[{system}] {case}")
    try:
        return result_line(system, case, with_seeds(run, case, args.seeds), same_cohorts)
    except CaseTimeoutError as error:
        return skipped_line(system, case, f"{system} {error} (--timeout {args.timeout:.0f})")
    except RuntimeError as error:
        return skipped_line(system, case, f"{system} failed: {error}")


def run_case(
    case: Case, systems: Sequence[str], pythons: dict[str, Path], args: argparse.Namespace
) -> None:
    """Runs `case` in every system (fedray first, the peers on its cohorts); prints its lines."""
    reason = why_not(case)
    if reason is not None:
        for system in systems:
            emit(skipped_line(system, case, reason))
        return
    peers = [system for system in systems if system != "fedray"]
    shared: dict[int, Cohorts] = {}
    fedray = None
    if "fedray" in systems:
        run = runner("fedray", pythons, args.timeout, shared)
        fedray = run_system("fedray", case, run, args, same_cohorts=bool(peers))
        if fedray["status"] != "ok":
            shared.clear()  # all seeds replayed, or none
    lines = {}
    for peer in peers:
        run = runner(peer, pythons, args.timeout, shared)
        lines[peer] = run_system(peer, case, run, args, same_cohorts=bool(shared))
        emit(lines[peer])
    if fedray is not None:
        for line in fedray_lines(fedray, lines, args.accuracy_tolerance):
            emit(line)
