"""Y against the round, by group: each group's mean over its jobs' metrics.jsonl, with its range."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reports.sweep import Row, Warn, grouped, is_number
from reports.sweep_plots import Group, Labels, Stat, finish, group_colors, new_figure


@dataclass(frozen=True)
class RoundSeries:
    """One group's Y at each round (sorted) over its jobs."""

    group: str
    rounds: tuple[int, ...]
    stats: tuple[Stat, ...]


def round_column(y: str) -> str:
    """The metrics.jsonl column of summary column `y`: `eval/<name>` for `final/eval_<name>`."""
    prefix = "final/eval_"
    return "eval/" + y.removeprefix(prefix) if y.startswith(prefix) else y


def read_rounds(job: Path, column: str) -> dict[int, float] | None:
    """The job's finite `column` by round, from its metrics.jsonl; None without that file."""
    path = job / "metrics.jsonl"
    if not path.is_file():
        return None
    values: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            value, round_ = record.get(column), record["round"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue  # a blank line, or the half-written last line of a killed run
        if is_number(value) and math.isfinite(value) and is_number(round_):
            values[int(round_)] = float(value)
    return values


def round_series(
    sweep: Path, rows: Sequence[Row], column: str, group: Group, warn: Warn
) -> list[RoundSeries]:
    """Each group's `column` per round over its jobs (a job without metrics.jsonl warned of)."""
    found: list[RoundSeries] = []
    for name, members in grouped(rows, group).items():
        by_round: dict[int, list[float]] = defaultdict(list)
        for row in members:
            values = read_rounds(sweep / row["job"], column)
            if values is None:
                warn(f"no metrics.jsonl in job {row['job']}: left out of the rounds plot")
            for round_, value in (values or {}).items():
                by_round[round_].append(value)
        rounds = sorted(by_round)
        found.append(RoundSeries(name, tuple(rounds), tuple(Stat.of(by_round[r]) for r in rounds)))
    return found


def draw_rounds(series: Sequence[RoundSeries], labels: Labels, legend: str, path: Path) -> None:
    """Each group's mean per round, with its min-max band."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure(10.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    colors = group_colors([line.group for line in series])
    for line in series:
        color = colors[line.group]
        if line.rounds:
            marker = "o" if len(line.rounds) <= 30 else None
            means = [s.mean for s in line.stats]
            ax.plot(line.rounds, means, marker=marker, color=color, label=line.group)
            lows, highs = [s.low for s in line.stats], [s.high for s in line.stats]
            ax.fill_between(line.rounds, lows, highs, color=color, alpha=0.15, linewidth=0)
    finish(fig, ax, labels, legend, path)
