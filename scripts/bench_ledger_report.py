"""Time of the ledger report (scripts/ledger_report.py) on a synthetic run, as JSON lines.

Builds a run dir in a temporary directory: a participation log written through
`ParticipationLedger` (N clients, R rounds of a cohort of C; round r draws C distinct clients
uniformly from those with id mod K == r mod K, K = `--groups`, 1 for uniform sampling; rounds
start `--round-s` simulated seconds apart), a metrics.jsonl with each round's `round` and
`system/sim_time_h`, and a summary.json with `population/num_clients`. Then times the report,
reading included, without and with the figure. Each line says whether the report's counts, clients
seen, max participations and min separation equal the ledger's own (`counts_equal_ledger`).

Lines: `{"bench": "ledger_report", "phase": "build" | "report" | "report_plot", "num_clients",
"rounds", "cohort", "groups", "rows", "seconds", "counts_equal_ledger", ...}`.

Usage:
    python scripts/bench_ledger_report.py [--clients 1000000] [--rounds 2000] [--cohort 1000]
        [--groups 1] [--round-s 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.rng import Stream, generator
from engine.scheduling.ledger import ParticipationLedger
from reports.ledger import LOG_NAME, LedgerReport, report_run

PROG = "bench_ledger_report"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1_000_000, help="population size N")
    parser.add_argument("--rounds", type=int, default=2000, help="rounds R")
    parser.add_argument("--cohort", type=int, default=1000, help="clients per round C")
    parser.add_argument("--groups", type=int, default=1, help="cyclic groups K (1: uniform)")
    parser.add_argument("--round-s", type=float, default=600.0, help="simulated s per round")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cohorts")
    args = parser.parse_args(argv)
    if min(args.clients, args.rounds, args.cohort, args.groups) < 1:
        parser.error("--clients, --rounds, --cohort and --groups must be >= 1")
    if args.cohort > args.clients // args.groups:
        parser.error("--cohort must be at most --clients // --groups")
    return args


def cohort(
    rng: np.random.Generator, num_clients: int, groups: int, round_idx: int, size: int
) -> np.ndarray:
    """`size` distinct clients drawn uniformly from those with id mod groups == round mod groups."""
    offset = round_idx % groups
    members = (num_clients - offset + groups - 1) // groups
    return offset + groups * rng.choice(members, size=size, replace=False)


def build_run(
    run_dir: Path, args: argparse.Namespace, rng: np.random.Generator
) -> ParticipationLedger:
    """Writes the synthetic run's log, metrics.jsonl and summary.json; returns its ledger."""
    ledger = ParticipationLedger(args.clients, run_dir / LOG_NAME)
    with (run_dir / "metrics.jsonl").open("w", encoding="utf-8") as metrics:
        for r in range(args.rounds):
            start_s = r * args.round_s
            ledger.record(r, start_s, cohort(rng, args.clients, args.groups, r, args.cohort))
            metrics.write(json.dumps({"round": r, "system/sim_time_h": start_s / 3600.0}) + "\n")
    ledger.close()
    summary = {"population/num_clients": args.clients}
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return ledger


def equals_ledger(report: LedgerReport, ledger: ParticipationLedger) -> bool:
    """Whether the report's counts and bounds are the ledger's own."""
    observed = ledger.observed()
    return (
        bool(np.array_equal(report.counts, ledger.count))
        and report.clients_seen == observed.clients
        and report.rows == observed.contributions
        and report.max_participations == observed.max_participations
        and report.min_separation == observed.min_separation
    )


def bench(args: argparse.Namespace, run_dir: Path) -> list[dict[str, Any]]:
    """The build line and the two timed report lines."""
    common = {
        "bench": "ledger_report",
        "num_clients": args.clients,
        "rounds": args.rounds,
        "cohort": args.cohort,
        "groups": args.groups,
        "seed": args.seed,
    }
    start = time.perf_counter()
    ledger = build_run(run_dir, args, generator(args.seed, Stream.SELECTION))
    rows = args.rounds * args.cohort
    lines = [{**common, "phase": "build", "rows": rows, "seconds": time.perf_counter() - start}]
    for phase, plot in (("report", False), ("report_plot", True)):
        report, line = report_run(run_dir, plot, warn=lambda m: print(m, file=sys.stderr))
        figures = {k: line[k] for k in ("clients_seen", "fraction_seen", "max_participations")}
        lines.append(
            {
                **common,
                "phase": phase,
                "rows": report.rows,
                "seconds": line["seconds"],
                "counts_equal_ledger": equals_ledger(report, ledger),
                **figures,
                "min_separation": line["min_separation"],
                "gap_rounds_median": line["gap_rounds_median"],
                "gap_hours_median": line["gap_hours_median"],
            }
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_ledger_") as tmp:
        for line in bench(args, Path(tmp)):
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
