"""Collect a Hydra multirun sweep into one table and draw its privacy-utility plot.

A job is any directory under SWEEP_DIR (at any depth, so custom `hydra.sweep.subdir`s work)
that holds `.hydra/overrides.yaml`; jobs are taken in natural path order (2 before 10). Each
job with a `summary.json` gives one row:

- `job`: the job directory relative to SWEEP_DIR; `overrides`: its overrides, space-joined;
- `choice/<group>`: the option chosen in each config group (`hydra.runtime.choices` of
  `.hydra/hydra.yaml`, Hydra's own `hydra/*` groups left out);
- `config/<key>`: `seed`, `rounds`, `name` and `mechanism.noise_multiplier` (when present)
  from `.hydra/config.yaml`, interpolations resolved;
- every key of `summary.json`, as it is.

A job without a readable `summary.json` (failed or killed) is reported on stderr and skipped;
if no job has one, the script fails.

Written to OUT (default: SWEEP_DIR): `sweep.csv`, `sweep.parquet` (when pyarrow is
importable) and `privacy_utility.png`: Y against X, one line per value of BY, points sorted by
X; jobs sharing (BY, X), e.g. seeds, are drawn as their mean with min-max error bars. Jobs whose
X is null (non-private runs) or not finite are drawn as dashed horizontal reference lines. X is
on a log scale when its positive values span more than 10x. One JSON line goes to stdout:
`{"jobs": N, "failed": M, "csv": ..., "parquet": ... or null, "png": ...}`.

Usage:
    python scripts/collect_sweep.py SWEEP_DIR [--out DIR] [--x privacy/epsilon]
        [--y final/eval_accuracy] [--by choice/mechanism]

The default X, `privacy/epsilon`, is each run's planned guarantee (from its policy's declared
participation bound); `--x privacy/epsilon_observed` plots the ledger's after-the-fact figure.

Example:
    fedray -m mechanism=gaussian,tree seed=0,1 rounds=5 hydra.sweep.dir=/tmp/sweep/out
    python scripts/collect_sweep.py /tmp/sweep/out --out /tmp/sweep/collected
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Row = dict[str, Any]

PROG = "collect_sweep"
CONFIG_KEYS = ("seed", "rounds", "name", "mechanism.noise_multiplier")
CSV_NAME = "sweep.csv"
PARQUET_NAME = "sweep.parquet"
PNG_NAME = "privacy_utility.png"
SUGGESTIONS = 8  # columns named in the error for an unknown --x/--y/--by


class CollectError(Exception):
    """A problem that stops the script: printed as one line, exit status 1."""


@dataclass(frozen=True)
class Stat:
    """Mean, min and max of Y over the jobs at one point (or one reference line)."""

    mean: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        """The statistics of `values` (not empty)."""
        return cls(sum(values) / len(values), min(values), max(values), len(values))


@dataclass(frozen=True)
class Series:
    """One value of BY: its points (finite X, sorted) and its reference lines (label, Y)."""

    group: str
    points: tuple[tuple[float, Stat], ...]
    references: tuple[tuple[str, Stat], ...]


def warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Collect a Hydra multirun sweep into one table and a plot."
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, help="output directory (default: SWEEP_DIR)")
    parser.add_argument(
        "--x", default="privacy/epsilon", help="column on the x axis (default: planned epsilon)"
    )
    parser.add_argument("--y", default="final/eval_accuracy", help="column on the y axis")
    parser.add_argument("--by", default="choice/mechanism", help="one line per value of this")
    return parser.parse_args(argv)


# --- reading the sweep -------------------------------------------------------------------------


def natural_key(path: str) -> list[Any]:
    """Sort key that orders the digit runs of `path` as numbers ("2" before "10")."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def find_jobs(sweep: Path) -> list[Path]:
    """The job directories under `sweep` (those holding `.hydra/overrides.yaml`), sorted."""
    jobs = {p.parent.parent for p in sweep.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    return sorted(jobs, key=lambda job: natural_key(job.relative_to(sweep).as_posix()))


def read_yaml(path: Path) -> Any:
    """The YAML document at `path`, None when the file does not exist."""
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def read_summary(job: Path) -> Row:
    """The job's `summary.json`; raises CollectError when it is missing or unreadable."""
    path = job / "summary.json"
    if not path.is_file():
        raise CollectError("no summary.json (the job failed or was killed)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CollectError(f"unreadable summary.json ({err})") from err
    if not isinstance(summary, dict):
        raise CollectError(f"summary.json is a {type(summary).__name__}, not an object")
    return summary


def read_choices(job: Path) -> Row:
    """`choice/<group>` for each config group chosen (Hydra's own `hydra/*` left out)."""
    hydra = read_yaml(job / ".hydra" / "hydra.yaml") or {}
    choices = hydra.get("hydra", {}).get("runtime", {}).get("choices") or {}
    return {f"choice/{g}": v for g, v in choices.items() if not str(g).startswith("hydra/")}


def read_config(job: Path) -> Row:
    """`config/<key>` for the keys of CONFIG_KEYS that the job's config holds, resolved."""
    path = job / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    config = OmegaConf.load(path)
    values = {
        key: OmegaConf.select(config, key, throw_on_resolution_failure=False) for key in CONFIG_KEYS
    }
    return {f"config/{k}": v for k, v in values.items() if v is not None and is_scalar(v)}


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def cell(value: Any) -> Any:
    """A table cell: scalars as they are, anything else as its JSON text."""
    return value if is_scalar(value) else json.dumps(value, sort_keys=True)


def job_row(sweep: Path, job: Path) -> Row:
    """The table row of one job; raises CollectError when it has no usable summary."""
    try:
        summary = read_summary(job)
        overrides = read_yaml(job / ".hydra" / "overrides.yaml") or []
        row: Row = {
            "job": job.relative_to(sweep).as_posix(),
            "overrides": " ".join(map(str, overrides)),
        }
        row.update(read_choices(job))
        row.update(read_config(job))
    except (OSError, yaml.YAMLError, OmegaConfBaseException, AttributeError, TypeError) as err:
        raise CollectError(f"unreadable .hydra files ({type(err).__name__}: {err})") from err
    for key, value in summary.items():
        row.setdefault(key, cell(value))
    return row


def collect(sweep: Path, jobs: Iterable[Path]) -> tuple[list[Row], list[Path]]:
    """The rows of the jobs with a summary, and the jobs skipped (each reported on stderr)."""
    rows: list[Row] = []
    failed: list[Path] = []
    for job in jobs:
        try:
            rows.append(job_row(sweep, job))
        except CollectError as err:
            warn(f"skipped {job}: {err}")
            failed.append(job)
    return rows, failed


def columns(rows: Iterable[Row]) -> list[str]:
    """All the columns of `rows`, in the order first seen."""
    return list(dict.fromkeys(key for row in rows for key in row))


def check_column(option: str, name: str, available: Sequence[str]) -> None:
    """Raises CollectError naming some similar columns when `name` is not in `available`."""
    if name in available:
        return
    prefix = name.split("/", 1)[0] + "/" if "/" in name else ""
    similar = [c for c in available if prefix and c.startswith(prefix)]
    if similar:
        what = f"columns starting with {prefix!r}"
    else:
        similar = [c for c in available if name in c] or difflib.get_close_matches(
            name, available, n=SUGGESTIONS, cutoff=0.5
        )
        what = "similar columns" if similar else "columns"
        similar = similar or list(available)
    more = f" (+{len(similar) - SUGGESTIONS} more)" if len(similar) > SUGGESTIONS else ""
    raise CollectError(
        f"{option} column {name!r} is not in the table; {what}: "
        f"{', '.join(similar[:SUGGESTIONS])}{more}"
    )


# --- writing the table -------------------------------------------------------------------------


def write_csv(rows: Sequence[Row], header: Sequence[str], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(rows)


def write_parquet(rows: Sequence[Row], header: Sequence[str], path: Path) -> Path | None:
    """Writes the table as Parquet; returns its path, None when pyarrow is not importable."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        warn("pyarrow is not importable: no Parquet written")
        return None
    table = pa.table({name: arrow_column(name, [row.get(name) for row in rows]) for name in header})
    pq.write_table(table, path)
    return path


def arrow_column(name: str, values: list[Any]) -> Any:
    """The values as a pyarrow array; as strings when their types do not mix (said on stderr)."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        warn(f"column {name!r} mixes types: stored as strings in the Parquet file")
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


# --- the plot ----------------------------------------------------------------------------------


def number(row: Row, column: str) -> float | None:
    """The row's value in `column` as a float (None when null); CollectError if not a number."""
    value = row.get(column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CollectError(f"column {column!r} is not numeric: {value!r} in job {row['job']}")
    return float(value)


def reference_label(x: str, value: float | None) -> str:
    """The label of a reference line: the jobs whose X is null or not finite."""
    if value is not None:
        return f"{x} = {value}"
    return "no DP" if x.startswith("privacy/") else f"{x} = null"


def build_series(rows: Sequence[Row], x: str, y: str, by: str) -> list[Series]:
    """One Series per value of `by`; jobs whose Y is null or not finite are said on stderr."""
    points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    references: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        group = "(none)" if row.get(by) is None else str(row[by])
        x_value, y_value = number(row, x), number(row, y)
        if y_value is None or not math.isfinite(y_value):
            warn(f"not plotted: job {row['job']} has {y} = {y_value}")
        elif x_value is not None and math.isfinite(x_value):
            points[group][x_value].append(y_value)
        else:
            references[group][reference_label(x, x_value)].append(y_value)
    return [
        Series(
            group,
            tuple((xv, Stat.of(ys)) for xv, ys in sorted(points[group].items())),
            tuple((label, Stat.of(ys)) for label, ys in sorted(references[group].items())),
        )
        for group in sorted(points.keys() | references.keys())
    ]


def draw_series(ax: Axes, series: Series, color: str) -> None:
    if series.points:
        xs = [xv for xv, _ in series.points]
        stats = [s for _, s in series.points]
        means = [s.mean for s in stats]
        yerr = None
        if any(s.count > 1 for s in stats):
            yerr = [[s.mean - s.low for s in stats], [s.high - s.mean for s in stats]]
        ax.errorbar(xs, means, yerr=yerr, fmt="o-", capsize=3, color=color, label=series.group)
    for label, stat in series.references:
        ax.axhline(stat.mean, linestyle="--", color=color, label=f"{label} ({series.group})")
        if stat.high > stat.low:
            ax.axhspan(stat.low, stat.high, color=color, alpha=0.12, linewidth=0)


def set_xscale(ax: Axes, xs: Sequence[float]) -> None:
    """Log scale when the positive X span more than 10x (symlog if some X are <= 0)."""
    positive = [v for v in xs if v > 0]
    if not positive or max(positive) <= 10 * min(positive):
        return
    if len(positive) == len(xs):
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=min(positive))


def axis_label(column: str, rows: Sequence[Row]) -> str:
    """The column's name, with the delta when it is an epsilon and all jobs share one delta."""
    deltas = {row.get("privacy/delta") for row in rows} - {None}
    if column.startswith("privacy/epsilon") and len(deltas) == 1:
        return f"{column} (delta = {deltas.pop():g})"
    return column


@dataclass(frozen=True)
class Labels:
    """The texts of the plot: axis labels, legend title (the BY column) and title."""

    x: str
    y: str
    by: str
    title: str


def plot(all_series: Sequence[Series], labels: Labels, path: Path) -> None:
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    for i, series in enumerate(all_series):
        draw_series(ax, series, colors[i % len(colors)])
    set_xscale(ax, [xv for s in all_series for xv, _ in s.points])
    spread = any(stat.count > 1 for s in all_series for _, stat in (*s.points, *s.references))
    ax.set_xlabel(labels.x)
    ax.set_ylabel(f"{labels.y} (mean, min-max)" if spread else labels.y)
    ax.set_title(labels.title)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=labels.by, fontsize="small")
    else:
        ax.text(0.5, 0.5, "nothing to plot", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=120)


# --- main --------------------------------------------------------------------------------------


def sweep_title(sweep: Path, jobs: int, failed: int) -> str:
    name = "/".join(sweep.resolve().parts[-2:])
    return f"{name}: {jobs} jobs" + (f", {failed} failed" if failed else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Collects, writes and plots; returns the stdout summary. Raises CollectError."""
    sweep: Path = args.sweep_dir
    if not sweep.is_dir():
        raise CollectError(f"sweep dir not found: {sweep}")
    jobs = find_jobs(sweep)
    if not jobs:
        raise CollectError(f"no Hydra job (a dir with .hydra/overrides.yaml) under {sweep}")
    rows, failed = collect(sweep, jobs)
    if not rows:
        raise CollectError(f"none of the {len(jobs)} jobs under {sweep} has a summary.json")
    header = columns(rows)
    for option in ("x", "y", "by"):
        check_column(f"--{option}", getattr(args, option), header)
    series = build_series(rows, args.x, args.y, args.by)  # fails before writing anything
    out: Path = args.out or sweep
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, header, out / CSV_NAME)
    parquet = write_parquet(rows, header, out / PARQUET_NAME)
    title = sweep_title(sweep, len(rows), len(failed))
    plot(series, Labels(axis_label(args.x, rows), args.y, args.by, title), out / PNG_NAME)
    return {
        "jobs": len(rows),
        "failed": len(failed),
        "csv": str(out / CSV_NAME),
        "parquet": None if parquet is None else str(parquet),
        "png": str(out / PNG_NAME),
    }


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
