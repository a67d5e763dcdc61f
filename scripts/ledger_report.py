"""Ledger analytics of a run, or of every job of a sweep, from its participation log.

Reads `participation.parquet/` (written with `tracking.participation_log=true`) and prints one
JSON line per run: clients seen and the fraction of the population, mean and max participations
of the clients seen, the gaps between a client's participations in rounds and in simulated hours
(count, min, median, p90, max, mean), clients by number of participations, committed clients by
hour of day of the round's start, the seconds taken and the path of `ledger_report.png` (drawn
in the run dir unless `--no-plot`). See `reports/ledger.py`.

DIR is a run dir, or a sweep dir: any directory holding job dirs (those with
`.hydra/overrides.yaml`, at any depth), each reported with its path relative to DIR as `job`
(`.` for a run dir). Jobs without a log are said on stderr and skipped; it is an error when none
has one.

Usage:
    python scripts/ledger_report.py DIR [--no-plot]

Example:
    fedray tracking.participation_log=true rounds=50 hydra.run.dir=/tmp/run
    python scripts/ledger_report.py /tmp/run
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.ledger import LOG_NAME, RERUN_HINT, LedgerReportError, report_run
from reports.sweep import find_jobs

PROG = "ledger_report"


def warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Participation analytics of a run or a sweep from its ledger log."
    )
    parser.add_argument("dir", type=Path, help="a run dir or a sweep dir")
    parser.add_argument("--no-plot", action="store_true", help="do not draw ledger_report.png")
    return parser.parse_args(argv)


def emit(job: str, line: dict[str, Any]) -> None:
    print(json.dumps({"job": job, **line}), flush=True)


def report_sweep(sweep: Path, jobs: list[Path], plot: bool) -> None:
    """One JSON line per job with a readable log; progress and skipped jobs on stderr.

    Raises:
        LedgerReportError: No job has a readable log.
    """
    done = 0
    for i, job in enumerate(jobs, 1):
        name = job.relative_to(sweep).as_posix()
        if not (job / LOG_NAME).exists():
            warn(f"[{i}/{len(jobs)}] {name}: no participation log, skipped")
            continue
        try:
            _, line = report_run(job, plot, warn)
        except LedgerReportError as err:
            warn(f"[{i}/{len(jobs)}] {name}: skipped: {err}")
            continue
        emit(name, line)
        warn(f"[{i}/{len(jobs)}] {name}: {line['seconds']:.2f} s")
        done += 1
    if not done:
        raise LedgerReportError(f"{sweep}: no job has a readable participation log; {RERUN_HINT}")


def run(args: argparse.Namespace) -> None:
    """Reports the run or sweep of `args.dir`.

    Raises:
        LedgerReportError: A missing directory, or no participation log to report.
    """
    root: Path = args.dir
    if not root.is_dir():
        raise LedgerReportError(f"{root}: no such directory")
    is_run = (root / ".hydra" / "overrides.yaml").is_file() or (root / LOG_NAME).exists()
    jobs = [] if is_run else find_jobs(root)
    if jobs:
        report_sweep(root, jobs, not args.no_plot)
    else:
        emit(".", report_run(root, not args.no_plot, warn)[1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except LedgerReportError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
