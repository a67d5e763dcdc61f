"""Trace files: resolving ``fedray:`` paths, one-line errors, and reading interval files.

An interval file has the columns ``client_id, start, end`` (seconds of simulated time, any
order, extra columns ignored); each row says that trace client ``client_id`` is online on
``[start, end)``. Paths starting with ``fedray:`` name files shipped in
``engine/population/traces_data/``.

Every problem in a trace file raises one `ConfigError` whose one-line reason names the file and
the line (CSV, 1-based, header = line 1) or the row (Parquet, 0-based), e.g.
``ConfigError("path", "trace.csv:7: end 10.0 <= start 12.0")``.
"""

from __future__ import annotations

import csv
import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError, require

PACKAGE_PREFIX = "fedray:"
COLUMNS = ("client_id", "start", "end")


def resolve_path(path: str) -> Path:
    """Resolves a trace path: ``fedray:NAME`` is a file shipped in ``traces_data/``.

    Args:
        path: ``fedray:NAME``, or a filesystem path (absolute, or relative to the cwd).

    Returns:
        The path of an existing file.

    Raises:
        ConfigError: Under key ``path`` when there is no such file.
    """
    if path.startswith(PACKAGE_PREFIX):
        shipped = (
            importlib.resources.files("engine.population")
            / "traces_data"
            / path[len(PACKAGE_PREFIX) :]
        )
        resolved = Path(str(shipped))
    else:
        resolved = Path(path)
    require(resolved.is_file(), "path", f"{path}: no such file")
    return resolved


def trace_error(path: str, where: str | int | None, reason: str) -> ConfigError:
    """A one-line `ConfigError` under key ``path`` naming the file, the place and the problem.

    Args:
        path: The file, as the user named it.
        where: Line (CSV), ``row N`` (Parquet), client key, or None for the whole file.
        reason: What is wrong.
    """
    place = f"{path}:" if where is None else f"{path}:{where}:"
    return ConfigError("path", " ".join(f"{place} {reason}".split()))


@dataclass(frozen=True)
class Intervals:
    """Validated intervals of a trace, sorted by (client, start).

    Attributes:
        client: int64 [K], trace client of each interval.
        start: float64 [K], inclusive start, seconds.
        end: float64 [K], exclusive end, seconds.
        num_trace_clients: M = largest client id + 1.
    """

    client: np.ndarray
    start: np.ndarray
    end: np.ndarray
    num_trace_clients: int


def _plain(value: object) -> object:
    """A numpy scalar as the Python scalar, so that messages show ``'x'``, not ``np.str_('x')``."""
    return value.item() if isinstance(value, np.generic) else value


def _parse_numbers(
    path: str, name: str, raw: np.ndarray, locate: Callable[[int], str], integer: bool
) -> np.ndarray:
    """Parses one column of strings or numbers; names the first bad value's place."""
    dtype = np.int64 if integer else np.float64
    try:
        values = np.asarray(raw, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        for i, item in enumerate(raw):
            try:
                np.asarray(item, dtype=dtype)
            except (ValueError, TypeError, OverflowError):
                kind = "an integer" if integer else "a number"
                raise trace_error(
                    path, locate(i), f"{name} {_plain(item)!r} is not {kind}"
                ) from None
        raise
    if not integer:
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            i = int(bad[0])
            raise trace_error(path, locate(i), f"{name} {_plain(raw[i])!r} is not a finite number")
    return values


def _first(
    path: str, bad: np.ndarray, locate: Callable[[int], str], reason: Callable[[int], str]
) -> None:
    """Raises for the first (in file order) index where `bad` holds, if any."""
    hits = np.flatnonzero(bad)
    if len(hits):
        i = int(hits[0])
        raise trace_error(path, locate(i), reason(i))


def validate_intervals(
    path: str,
    client: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    locate: Callable[[int], str],
    period_s: float | None = None,
) -> Intervals:
    """Checks intervals in file order and returns them sorted by (client, start).

    Args:
        path: The file, as the user named it, for messages.
        client: int64 trace client ids.
        start: float64 starts.
        end: float64 ends.
        locate: Maps a record index (file order) to its place in the file (line or row).
        period_s: When set, every interval must end by it.

    Raises:
        ConfigError: One line naming the file and the place of the first problem found.
    """
    if len(client) == 0:
        raise trace_error(path, None, "no intervals")
    _first(path, client < 0, locate, lambda i: f"client_id {client[i]} < 0")
    _first(path, start < 0, locate, lambda i: f"start {start[i]} < 0")
    _first(path, end < 0, locate, lambda i: f"end {end[i]} < 0")
    _first(path, end <= start, locate, lambda i: f"end {end[i]} <= start {start[i]}")
    if period_s is not None:
        _first(path, end > period_s, locate, lambda i: f"end {end[i]} > period_s {period_s}")
    order = np.argsort(client, kind="stable")
    c, s, e = client[order], start[order], end[order]
    same = c[1:] == c[:-1]
    unsorted = np.zeros(len(c), dtype=bool)
    overlap = np.zeros(len(c), dtype=bool)
    unsorted[1:] = same & (s[1:] < s[:-1])
    overlap[1:] = same & (s[1:] < e[:-1])
    for bad, what in ((unsorted, "not sorted by start"), (overlap, "overlaps")):
        if bad.any():
            k = int(np.flatnonzero(bad)[np.argmin(order[bad])])
            i, prev = int(order[k]), locate(int(order[k - 1]))
            at = f"line {prev}" if isinstance(prev, int) else prev
            raise trace_error(
                path,
                locate(i),
                f"interval [{s[k]}, {e[k]}) of client {c[k]} {what} the one at "
                f"{at} [{s[k - 1]}, {e[k - 1]})",
            )
    return Intervals(client=c, start=s, end=e, num_trace_clients=int(c[-1]) + 1)


def _read_csv(path: str, file: Path, period_s: float | None) -> Intervals:
    with file.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        while header is not None and not header:
            header = next(reader, None)
        if header is None:
            raise trace_error(path, None, "empty file, expected header client_id,start,end")
        names = [h.strip() for h in header]
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise trace_error(path, reader.line_num, f"missing column(s) {', '.join(missing)}")
        cols = [names.index(c) for c in COLUMNS]
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                raise trace_error(
                    path, reader.line_num, f"{len(row)} fields, header has {len(names)}"
                )
            rows.append([row[j].strip() for j in cols])
            lines.append(reader.line_num)
    table = np.array(rows, dtype=str).reshape(-1, 3)

    def locate(i: int) -> str:
        return str(lines[i])

    client = _parse_numbers(path, "client_id", table[:, 0], locate, integer=True)
    start = _parse_numbers(path, "start", table[:, 1], locate, integer=False)
    end = _parse_numbers(path, "end", table[:, 2], locate, integer=False)
    return validate_intervals(path, client, start, end, locate, period_s)


def _read_parquet(path: str, file: Path, period_s: float | None) -> Intervals:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise trace_error(path, None, f"not a Parquet file ({exc})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise trace_error(path, None, f"missing column(s) {', '.join(missing)}")

    def locate(i: int) -> str:
        return f"row {i}"

    parsed = []
    for name in COLUMNS:
        column = table.column(name)
        if column.null_count:
            first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise trace_error(path, locate(first), f"{name} is null")
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        raw = column.to_numpy() if numeric else np.asarray(column.to_pylist(), dtype=object)
        integer = name == "client_id"
        if integer and pa.types.is_floating(column.type):
            frac = np.flatnonzero(~np.isfinite(raw) | (raw != np.round(raw)))
            if len(frac):
                i = int(frac[0])
                raise trace_error(
                    path, locate(i), f"client_id {_plain(raw[i])!r} is not an integer"
                )
        parsed.append(_parse_numbers(path, name, raw, locate, integer))
    return validate_intervals(path, parsed[0], parsed[1], parsed[2], locate, period_s)


def load_intervals(path: str, period_s: float | None = None) -> Intervals:
    """Reads and validates an interval file: ``.parquet``/``.pq`` as Parquet, else CSV.

    Args:
        path: ``fedray:NAME`` or a filesystem path.
        period_s: When set, every interval must end by it.

    Raises:
        ConfigError: Under key ``path``, one line naming the file and the line or row.
    """
    file = resolve_path(path)
    if file.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path, file, period_s)
    return _read_csv(path, file, period_s)
