"""Collect a Hydra multirun sweep into one table, a markdown summary and two plots.

Every job of SWEEP_DIR (any dir holding `.hydra/overrides.yaml`, at any depth) with a
`summary.json` is one row of the table (`reports.sweep`: its overrides, config choices, config
and summary); a job without one is said on stderr and skipped. The jobs are grouped by what the
sweep varied: the overrides whose value differs across jobs, the seed excepted (seeds give the
spread), e.g. `mechanism=blt participation=cyclic`; `(all)` when only the seed varies;
`--by COLUMN` groups by a column instead.

Written to OUT (default: SWEEP_DIR):

- `sweep.csv` and `sweep.parquet` (when pyarrow is importable): the table, with a `group` column;
- `sweep.md`: one line per group: jobs, planned epsilon, noise multiplier, declared (k, b),
  clients seen, mean and max participations per client, Y mean and min-max over seeds;
- `privacy_utility.png`: Y against X. When all jobs' X lie within 1% (a sweep at one target
  epsilon), a dot chart: a dot per job, the mean and range per group. Otherwise one line per
  group, seeds as mean and min-max, numeric overrides that move X (noise multipliers) along the
  x axis, non-private jobs as dashed reference lines;
- `accuracy_by_round.png`: each group's `eval/<name>` (for Y = `final/eval_<name>`) against the
  round, from the jobs' `metrics.jsonl`: mean and min-max band;
- `audit_epsilon.png`, when a job has `audit/epsilon_estimate` (`audit=canaries`): each job's
  empirical epsilon estimates (final model and all iterates, 95% intervals) against its accounted
  epsilon, with y = x (`reports.audit`; `scripts/audit_report.py` gives the verdicts).

One JSON line goes to stdout: `{"jobs", "failed", "csv", "parquet" (or null), "png",
"png_rounds", "markdown", "groups"}` (`groups`: the swept override keys), and `"png_audit"` when
`audit_epsilon.png` was drawn.

Usage:
    python scripts/collect_sweep.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--x privacy/epsilon]
        [--y final/eval_accuracy] [--by auto]

More SWEEP_DIRs (other sweeps, or single runs) join the first one's table, e.g. a central run
as the reference line of a sweep over bits:
    python scripts/collect_sweep.py multirun/ddp_bits/<date> outputs/central/<date>
        --x override/mechanism.bits

The default X, `privacy/epsilon`, is each run's planned guarantee (from its policy's declared
participation bound); `--x privacy/epsilon_observed` plots the ledger's after-the-fact figure.

Example:
    fedray -m mechanism=gaussian,tree seed=0,1 rounds=5 hydra.sweep.dir=/tmp/sweep/out
    python scripts/collect_sweep.py /tmp/sweep/out --out /tmp/sweep/collected
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.audit import AUDIT_PNG_NAME, draw_audit_epsilon, has_audit
from reports.sweep import (
    CollectError,
    check_column,
    collect,
    columns,
    find_jobs,
    markdown_table,
    swept_keys,
    write_csv,
    write_parquet,
)
from reports.sweep_plots import (
    Labels,
    delta_note,
    draw_privacy_utility,
    full_group,
    privacy_utility,
)
from reports.sweep_rounds import draw_rounds, round_column, round_series

PROG = "collect_sweep"
CSV_NAME = "sweep.csv"
PARQUET_NAME = "sweep.parquet"
MARKDOWN_NAME = "sweep.md"
PNG_NAME = "privacy_utility.png"
ROUNDS_PNG_NAME = "accuracy_by_round.png"
AUTO = "auto"


def warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Collect a Hydra multirun sweep into one table and plots."
    )
    parser.add_argument(
        "sweep_dirs",
        type=Path,
        nargs="+",
        metavar="SWEEP_DIR",
        help="the sweep directory (hydra.sweep.dir); more sweeps or runs join its table",
    )
    parser.add_argument("--out", type=Path, help="output directory (default: the first SWEEP_DIR)")
    parser.add_argument(
        "--x", default="privacy/epsilon", help="column on the x axis (default: planned epsilon)"
    )
    parser.add_argument("--y", default="final/eval_accuracy", help="column on the y axis")
    parser.add_argument(
        "--by",
        default=AUTO,
        help="group by this column (default: auto, the overrides that vary across the sweep)",
    )
    return parser.parse_args(argv)


def sweep_title(sweep: Path, jobs: int, failed: int) -> str:
    name = "/".join(sweep.resolve().parts[-2:])
    return f"{name}: {jobs} jobs" + (f", {failed} failed" if failed else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Collects, writes and plots; returns the stdout summary. Raises CollectError."""
    sweeps: list[Path] = args.sweep_dirs
    for sweep in sweeps:
        if not sweep.is_dir():
            raise CollectError(f"sweep dir not found: {sweep}")
    # Jobs are named relative to the sweeps' common parent (the sweep itself when alone).
    root = Path(os.path.commonpath([s.resolve() for s in sweeps])) if len(sweeps) > 1 else sweeps[0]
    jobs = [job.resolve() if len(sweeps) > 1 else job for s in sweeps for job in find_jobs(s)]
    named = " ".join(map(str, sweeps))
    if not jobs:
        raise CollectError(f"no Hydra job (a dir with .hydra/overrides.yaml) under {named}")
    rows, failed = collect(root, jobs, warn)
    if not rows:
        raise CollectError(f"none of the {len(jobs)} jobs under {named} has a summary.json")
    sweep = sweeps[0]
    header = columns(rows)
    by = None if args.by == AUTO else args.by
    for option, name in (("--x", args.x), ("--y", args.y), ("--by", by)):
        if name is not None:
            check_column(option, name, header)
    swept = swept_keys(rows)
    chart = privacy_utility(rows, (args.x, args.y), by, swept, warn)  # fails before any write
    out: Path = args.out or sweep
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, header, out / CSV_NAME)
    parquet = write_parquet(rows, header, out / PARQUET_NAME, warn)
    group = full_group(by)
    (out / MARKDOWN_NAME).write_text(
        markdown_table(rows, group, by or "group", args.y), encoding="utf-8"
    )
    title = sweep_title(sweep, len(rows), len(failed))
    note = delta_note(args.x, rows)
    draw_privacy_utility(chart, (args.x, args.y), note, title, out / PNG_NAME)
    column = round_column(args.y)
    lines = round_series(root, rows, column, group, warn)
    labels = Labels("round", f"{column} (mean, min-max)", title)
    draw_rounds(lines, labels, by or "group", out / ROUNDS_PNG_NAME)
    result = {
        "jobs": len(rows),
        "failed": len(failed),
        "csv": str(out / CSV_NAME),
        "parquet": str(out / PARQUET_NAME) if parquet else None,
        "png": str(out / PNG_NAME),
        "png_rounds": str(out / ROUNDS_PNG_NAME),
        "markdown": str(out / MARKDOWN_NAME),
        "groups": swept,
    }
    if has_audit(rows):
        draw_audit_epsilon(rows, group, by or "group", title, out / AUDIT_PNG_NAME)
        result["png_audit"] = str(out / AUDIT_PNG_NAME)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except CollectError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
