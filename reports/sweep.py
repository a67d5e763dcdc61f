"""A Hydra multirun sweep read into one table, its jobs grouped by what the sweep varied.

A job is a directory under the sweep (at any depth) holding `.hydra/overrides.yaml`; jobs are
taken in natural path order (2 before 10). Each job with a `summary.json` gives one row: `job`
(its path in the sweep), `overrides` (space-joined), `group` (the label of its swept overrides,
see `swept_keys`), `override/<key>` (each override's value as written; `+`, `++`, `~` stripped
from the key, `hydra.*` left out, a deletion `~key` is `~`), `choice/<group>` (the options of
`hydra.runtime.choices`, `hydra/*` left out), `config/<key>` (CONFIG_KEYS of the resolved
`.hydra/config.yaml`) and every key of `summary.json`. `markdown_table` sums it up by group.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

Row = dict[str, Any]
Warn = Callable[[str], None]

CONFIG_KEYS = ("seed", "rounds", "name", "mechanism.noise_multiplier")
REPLICATE_KEYS = frozenset({"seed"})
ALL = "(all)"  # the group of every job when nothing but the seed varies
DEFAULTS = "(defaults)"  # the group of a job that overrides none of the swept keys
SUGGESTIONS = 8  # columns named in the error for an unknown column


class CollectError(Exception):
    """A problem that stops the report: its command line prints it as one line."""


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


def parse_overrides(overrides: Iterable[Any]) -> Row:
    """`override/<key>` for each `key=value` (prefixes `+`, `++`, `~` stripped, `hydra*` out).

    Values that read as numbers are numbers, so that a swept number can be an axis.
    """
    parsed: Row = {}
    for override in map(str, overrides):
        key, sep, value = override.partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("+~").strip()
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        parsed[f"override/{key}"] = _number_or_text(value) if sep or not deleted else "~"
    return parsed


def _number_or_text(value: str) -> Any:
    """An override's value: an int or a float when it reads as one (`bits=12`), else the text."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


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
    """Whether `value` fits a table cell as it is."""
    return value is None or isinstance(value, str | int | float | bool)


def cell(value: Any) -> Any:
    """A table cell: scalars as they are, anything else as its JSON text."""
    return value if is_scalar(value) else json.dumps(value, sort_keys=True)


def job_row(sweep: Path, job: Path) -> Row:
    """The table row of one job, without its group; CollectError when it has no usable summary."""
    try:
        summary = read_summary(job)
        overrides = read_yaml(job / ".hydra" / "overrides.yaml") or []
        row: Row = {
            "job": job.relative_to(sweep).as_posix(),
            "overrides": " ".join(map(str, overrides)),
            "group": None,  # set by `set_groups`, once every row is read
        }
        row.update(parse_overrides(overrides))
        row.update(read_choices(job))
        row.update(read_config(job))
    except (OSError, yaml.YAMLError, OmegaConfBaseException, AttributeError, TypeError) as err:
        raise CollectError(f"unreadable .hydra files ({type(err).__name__}: {err})") from err
    for key, value in summary.items():
        row.setdefault(key, cell(value))
    return row


def collect(sweep: Path, jobs: Iterable[Path], warn: Warn) -> tuple[list[Row], list[Path]]:
    """The rows of the jobs with a summary (grouped), and the jobs skipped (each warned of)."""
    rows: list[Row] = []
    failed: list[Path] = []
    for job in jobs:
        try:
            rows.append(job_row(sweep, job))
        except CollectError as err:
            warn(f"skipped {job}: {err}")
            failed.append(job)
    set_groups(rows, swept_keys(rows))
    return rows, failed


# --- what the sweep varied ---------------------------------------------------------------------


def swept_keys(rows: Sequence[Row]) -> list[str]:
    """The override keys whose value differs across `rows` or is absent in some; first seen first.

    Seeds are replicates (they give the spread), not a sweep dimension.
    """
    swept = []
    for column in columns(rows):
        key = column.removeprefix("override/")
        values = {row.get(column) for row in rows}  # None: absent (an override is a string)
        if column.startswith("override/") and key not in REPLICATE_KEYS and len(values) > 1:
            swept.append(key)
    return swept


def group_label(row: Row, keys: Sequence[str]) -> str:
    """`key=value ...` of the row's overrides of `keys` (absent ones left out)."""
    if not keys:
        return ALL
    parts = [f"{k}={row[f'override/{k}']}" for k in keys if f"override/{k}" in row]
    return " ".join(parts) or DEFAULTS


def set_groups(rows: Sequence[Row], keys: Sequence[str]) -> None:
    """Sets each row's `group` to its label over the swept `keys`."""
    for row in rows:
        row["group"] = group_label(row, keys)


def labels_of(keys: Sequence[str]) -> Callable[[Row], str]:
    """The group of a row: its label over the override `keys`."""
    return lambda row: group_label(row, keys)


def group_of(by: str) -> Callable[[Row], str]:
    """The group of a row: its value in column `by` as text, `(none)` when null."""
    return lambda row: "(none)" if row.get(by) is None else str(row[by])


def grouped(rows: Iterable[Row], key: Callable[[Row], str]) -> dict[str, list[Row]]:
    """The rows by group, groups in the order first seen."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


# --- columns -----------------------------------------------------------------------------------


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


def finite(rows: Iterable[Row], column: str) -> list[float]:
    """The finite numbers of `column` over `rows` (nulls and non-numbers left out)."""
    values = (row.get(column) for row in rows)
    return [float(v) for v in values if is_number(v) and math.isfinite(v)]


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether `value` is an int or a float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- writing the table -------------------------------------------------------------------------


def write_csv(rows: Sequence[Row], header: Sequence[str], path: Path) -> None:
    """Writes the table as CSV (missing cells empty)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(rows)


def write_parquet(rows: Sequence[Row], header: Sequence[str], path: Path, warn: Warn) -> bool:
    """Writes the table as Parquet; False (warned of) when pyarrow is not importable."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        warn("pyarrow is not importable: no Parquet written")
        return False
    table = pa.table(
        {name: arrow_column(name, [row.get(name) for row in rows], warn) for name in header}
    )
    pq.write_table(table, path)
    return True


def arrow_column(name: str, values: list[Any], warn: Warn) -> Any:
    """The values as a pyarrow array; as strings when their types do not mix (warned of)."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        warn(f"column {name!r} mixes types: stored as strings in the Parquet file")
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


# --- the markdown summary ----------------------------------------------------------------------

SUMMARY = (  # markdown_table's summary columns: (header, key, how the group's jobs are summed up)
    ("planned epsilon", "privacy/epsilon", "mean"),
    ("noise multiplier", "privacy/noise_multiplier", "mean"),
    ("declared k", "participation/bound_max_participations", "declared"),
    ("declared b", "participation/bound_min_separation", "declared"),
    ("clients seen", "participation/clients_seen", "mean"),
    ("participations (mean)", "participation/mean_participations", "mean"),
    ("participations (max)", "participation/observed_max_participations", "max"),
)


def markdown_table(rows: Sequence[Row], by: Callable[[Row], str], by_name: str, y: str) -> str:
    """One line per group (in the order first seen): its jobs, SUMMARY's cells, Y's statistics.

    A key that no job of the group has gives an empty cell.
    """
    header = [by_name, "jobs", *(h for h, _, _ in SUMMARY), f"{y} (mean)", f"{y} (min, max)"]
    lines = [table_line(header), table_line(["---"] * len(header))]
    for group, members in grouped(rows, by).items():
        ys = finite(members, y)
        spread = f"[{fmt(min(ys))}, {fmt(max(ys))}]" if ys else ""
        cells = [summed(members, key, how) for _, key, how in SUMMARY]
        lines.append(table_line([group, str(len(members)), *cells, fmt(mean(ys)), spread]))
    return "\n".join(lines) + "\n"


def summed(rows: Sequence[Row], key: str, how: str) -> str:
    """The cell of `key` over `rows`: their "mean", "max", or the distinct values "declared"."""
    if how == "declared":  # as written; null is "none" (no bound declared)
        declared = dict.fromkeys(row[key] for row in rows if key in row)
        return ", ".join(
            "none" if v is None else fmt(v) if is_number(v) else str(v) for v in declared
        )
    values = finite(rows, key)
    return fmt(mean(values) if how == "mean" else max(values, default=None))


def table_line(cells: Sequence[str]) -> str:
    """A markdown table line (pipes inside cells escaped)."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def mean(values: Sequence[float]) -> float | None:
    """The mean of `values`, None when there are none."""
    return sum(values) / len(values) if values else None


def fmt(value: float | None) -> str:
    """A number for the table: integers in full, others to 4 significant digits; None empty."""
    if value is None:
        return ""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.0f}" if math.isfinite(value) and abs(value) >= 1e4 else f"{value:.4g}"
