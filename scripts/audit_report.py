"""Empirical privacy audits of a run, or of every run of a sweep, against the accounted epsilon.

Reads each `summary.json` under DIR (a run dir, or a sweep dir: runs at any depth) and prints
one line per run: the accounted epsilon, the canaries' one-run epsilon estimate (Andrew et al.
2024) for the final model and for all iterates with their bootstrap 95% intervals, each
estimate / accounted, the Secret Sharer exposures when the run has secrets, and the verdict:
`not audited`, `no accountant (noise off): estimate E`, `consistent`, or `VIOLATION` (an
interval wholly above the accounted epsilon), with a `weak audit` note when no estimate
detected the canaries. See `reports/audit.py`.

With `--json`, one JSON line per run instead (infinities as the string "inf"). Runs whose
summary cannot be read are said on stderr and skipped; it is an error when none can be read.

Usage:
    python scripts/audit_report.py DIR [--json]

Exit status: 0 when no run has a VIOLATION, 2 when one has (for CI), 1 on an error.

Example:
    fedray audit=canaries mechanism=gaussian clipping=fixed rounds=50 hydra.run.dir=/tmp/run
    python scripts/audit_report.py /tmp/run
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from reports.audit import VIOLATION, AuditRow, read_audits
from reports.sweep import CollectError, fmt

PROG = "audit_report"
HEADER = ("job", "accounted eps", "estimate [95%]", "all-iterates [95%]", "ratio", "ratio all")


def warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Empirical privacy audits of a run or a sweep, with a verdict."
    )
    parser.add_argument("dir", type=Path, help="a run dir or a sweep dir")
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    return parser.parse_args(argv)


def table(rows: Sequence[AuditRow]) -> str:
    """One aligned line per run: accounted epsilon, estimates, ratios, exposures, verdict."""
    exposures = any(row.exposures for row in rows)
    lines = [[*HEADER, *(["exposure (bits)"] if exposures else []), "verdict"]]
    for row in rows:
        cells = [row.job, fmt(row.epsilon) or "-", *(e.text() for e in row.estimates)]
        cells += [fmt(ratio) or "-" for ratio in row.ratios()]
        cells += [exposure_text(row)] if exposures else []
        lines.append([*cells, "; ".join((row.verdict.text, *row.verdict.notes))])
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    widths += [max(len(line[-2]) for line in lines)] if exposures else []
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]])
        for line in lines
    )


def exposure_text(row: AuditRow) -> str:
    """`r1 2.1, r4 9.8 (max 20)`; `-` without exposures."""
    if not row.exposures:
        return "-"
    out_of = f" (max {fmt(row.exposure_max)})" if row.exposure_max is not None else ""
    return ", ".join(f"r{r} {fmt(bits) or '-'}" for r, bits in row.exposures) + out_of


def run(args: argparse.Namespace) -> list[AuditRow]:
    """Prints the audits of `args.dir` and returns them.

    Raises:
        CollectError: When it is not a directory or holds no summary.
    """
    root: Path = args.dir
    if not root.is_dir():
        raise CollectError(f"{root}: not a directory")
    rows = read_audits(root, warn)
    if args.json:
        for row in rows:
            print(json.dumps(row.as_json(), allow_nan=False), flush=True)
    else:
        print(table(rows), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """0: every run consistent (or not audited); 1: an error; 2: a run has a VIOLATION."""
    args = parse_args(argv)
    try:
        rows = run(args)
    except CollectError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 2 if any(row.verdict.status == VIOLATION for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
