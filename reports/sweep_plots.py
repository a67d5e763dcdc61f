"""The figures of a sweep: Y against X by group, and Y against the round by group.

`privacy_utility` draws a dot chart when every job has about the same X, else lines.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reports.sweep import (
    ALL,
    CollectError,
    Row,
    Warn,
    finite,
    group_of,
    grouped,
    is_number,
    labels_of,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ONE_X = 0.01  # finite X within this fraction of each other: a sweep at one X, a dot chart
Group = Callable[[Row], str]
Point = tuple[Row, float | None, float]  # a plotted job: its row, X, Y


@dataclass(frozen=True)
class Stat:
    """Mean, min and max of Y over some jobs (at one point, in one group, at one round)."""

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
    """One line: its points (finite X, sorted) and its reference lines (label, Y)."""

    group: str
    points: tuple[tuple[float, Stat], ...]
    references: tuple[tuple[str, Stat], ...]


@dataclass(frozen=True)
class LineChart:
    """Y against X, one line per group; `by` titles the legend."""

    series: tuple[Series, ...]
    by: str


@dataclass(frozen=True)
class DotChart:
    """Y by group at one X (`x`, the mean of the jobs' X): (group, Ys), by mean Y descending."""

    groups: tuple[tuple[str, tuple[float, ...]], ...]
    x: float


# --- Y against X -------------------------------------------------------------------------------


def number(row: Row, column: str) -> float | None:
    """The row's value in `column` as a float (None when null); CollectError if not a number."""
    value = row.get(column)
    if value is None:
        return None
    if not is_number(value):
        raise CollectError(f"column {column!r} is not numeric: {value!r} in job {row['job']}")
    return float(value)


def plotted(rows: Sequence[Row], x: str, y: str, warn: Warn) -> list[Point]:
    """The jobs whose Y is finite, with their X and Y; the others are warned of."""
    points = []
    for row in rows:
        x_value, y_value = number(row, x), number(row, y)
        if y_value is None or not math.isfinite(y_value):
            warn(f"not plotted: job {row['job']} has {y} = {y_value}")
        else:
            points.append((row, x_value, y_value))
    return points


def one_x(points: Sequence[Point]) -> float | None:
    """The mean finite X when they all lie within ONE_X of each other, else None."""
    xs = [xv for _, xv, _ in points if xv is not None and math.isfinite(xv)]
    if not xs or max(xs) - min(xs) > ONE_X * max(abs(v) for v in xs):
        return None
    return sum(xs) / len(xs)


def x_axis_keys(rows: Sequence[Row], swept: Sequence[str], x: str) -> list[str]:
    """The swept keys along the x axis: numeric ones that move X when the others stay put."""
    found = []
    for key in swept:
        column, others = f"override/{key}", [k for k in swept if k != key]
        if not all(is_numeric_text(row[column]) for row in rows if column in row):
            continue
        for members in grouped(rows, labels_of(others)).values():
            if len({r.get(column) for r in members}) > 1 and len(set(finite(members, x))) > 1:
                found.append(key)
                break
    return found


def is_numeric_text(text: str) -> bool:
    """Whether an override's value reads as a number."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def privacy_utility(
    rows: Sequence[Row], axes: tuple[str, str], by: str | None, swept: Sequence[str], warn: Warn
) -> LineChart | DotChart:
    """The chart of Y against X, `axes` = (X, Y); CollectError when X or Y is not numeric.

    By the value of column `by`, or, when `by` is None, by the `group` column for a dot chart,
    and for lines by the swept keys that are not along the x axis (`x_axis_keys`).
    """
    x, y = axes
    points = plotted(rows, x, y, warn)
    common = one_x(points)
    if common is not None:
        group = full_group(by)
        ys: dict[str, list[float]] = {}
        for row, _, yv in points:
            ys.setdefault(group(row), []).append(yv)
        ranked = sorted(ys.items(), key=lambda item: -sum(item[1]) / len(item[1]))
        return DotChart(tuple((g, tuple(v)) for g, v in ranked), common)
    if by is not None:
        return LineChart(build_series(points, x, group_of(by)), by)
    keys = [k for k in swept if k not in x_axis_keys(rows, swept, x)]
    series = build_series(points, x, labels_of(keys))
    return LineChart(series, " ".join(keys) or ALL)


def full_group(by: str | None) -> Group:
    """The group of a row for the dot chart, the rounds and the table: `by`, or `group`."""
    return group_of(by or "group")


def build_series(points: Sequence[Point], x: str, group: Group) -> tuple[Series, ...]:
    """One Series per group (first seen first): finite X as points, the others as references."""
    by_x: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_label: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row, xv, yv in points:
        name = group(row)
        if xv is not None and math.isfinite(xv):
            by_x[name][xv].append(yv)
        else:
            by_label[name][reference_label(x, xv)].append(yv)
    return tuple(
        Series(
            name,
            tuple((xv, Stat.of(v)) for xv, v in sorted(by_x[name].items())),
            tuple((label, Stat.of(v)) for label, v in sorted(by_label[name].items())),
        )
        for name in dict.fromkeys(group(row) for row, _, _ in points)
    )


def reference_label(x: str, value: float | None) -> str:
    """The label of a reference line: the jobs whose X is null or not finite."""
    if value is not None:
        return f"{x} = {value}"
    return "no DP" if x.startswith("privacy/") else f"{x} = null"


# --- Y against the round -----------------------------------------------------------------------


# --- drawing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labels:
    """The texts of a figure: axis labels and title."""

    x: str
    y: str
    title: str


def delta_note(column: str, rows: Sequence[Row]) -> str:
    """` (delta = ...)` when `column` is an epsilon and all jobs share one delta, else empty."""
    deltas = {row.get("privacy/delta") for row in rows} - {None}
    if column.startswith("privacy/epsilon") and len(deltas) == 1:
        return f" (delta = {deltas.pop():g})"
    return ""


def new_figure(width: float = 7.5, height: float = 4.8) -> tuple[Figure, Axes]:
    """A figure and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def group_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per group, the same in every figure: by sorted name, tab20 past 10 groups.

    tab20 pairs a dark and a light shade of each hue, so groups that differ only in their last
    key (e.g. the mechanism) share a hue.
    """
    from matplotlib import colormaps, rcParams
    from matplotlib.colors import to_hex

    ordered = sorted(set(names))
    if len(ordered) <= 10:
        cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    else:
        tab20 = colormaps["tab20"]
        cycle = [to_hex(tab20(i)) for i in range(tab20.N)]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(ordered)}


def finish(fig: Figure, ax: Axes, labels: Labels, legend: str | None, path: Path) -> None:
    """Labels the axes, adds the legend (or says there was nothing to plot) and saves."""
    ax.set_xlabel(labels.x)
    ax.set_ylabel(labels.y)
    ax.set_title(labels.title)
    ax.grid(alpha=0.3, which="both")
    if not ax.has_data():
        ax.text(0.5, 0.5, "nothing to plot", ha="center", va="center", transform=ax.transAxes)
    elif legend is not None and ax.get_legend_handles_labels()[0]:
        ax.legend(title=legend, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120)


def draw_privacy_utility(
    chart: LineChart | DotChart, axes: tuple[str, str], note: str, title: str, path: Path
) -> None:
    """Draws the chart of Y against X, `axes` = (X, Y); `note` follows X (its delta)."""
    x, y = axes
    if isinstance(chart, DotChart):
        fig, ax = new_figure(9.0, 1.5 + 0.4 * len(chart.groups))
        draw_dots(ax, chart)
        title = f"{title}\n{y} at {x} ~ {chart.x:.3g}{note}"
        finish(fig, ax, Labels(f"{y} (mean, min-max)", "", title), None, path)
        return
    fig, ax = new_figure(9.0)
    colors = group_colors([series.group for series in chart.series])
    for series in chart.series:
        draw_series(ax, series, colors[series.group])
    set_xscale(ax, [xv for s in chart.series for xv, _ in s.points])
    stats = [stat for s in chart.series for _, stat in (*s.points, *s.references)]
    spread = " (mean, min-max)" if any(stat.count > 1 for stat in stats) else ""
    finish(fig, ax, Labels(x + note, y + spread, title), chart.by, path)


def draw_dots(ax: Axes, chart: DotChart) -> None:
    """One row per group, the best on top: a dot per job, the mean as a tick, the range."""
    colors = group_colors([name for name, _ in chart.groups])
    for i, (name, ys) in enumerate(chart.groups):
        color = colors[name]
        spread = [0.3 * (j / (len(ys) - 1) - 0.5) for j in range(len(ys))] if len(ys) > 1 else [0]
        ax.scatter(ys, [i + d for d in spread], color=color, s=20, alpha=0.8, zorder=3)
        stat = Stat.of(ys)
        ax.hlines(i, stat.low, stat.high, color=color, linewidth=1.5)
        ax.vlines(stat.mean, i - 0.3, i + 0.3, color=color, linewidth=2.5)
    names = [name for name, _ in chart.groups]
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.4, -0.6)


def draw_series(ax: Axes, series: Series, color: str) -> None:
    """A line with min-max error bars, and dashed reference lines with their band."""
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
