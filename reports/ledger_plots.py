"""The ledger report's figure: four panels of participation, saved as one PNG.

Drawn on a `matplotlib.figure.Figure` (no pyplot); matplotlib is imported only when drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reports.ledger import HOURS_PER_DAY, LedgerReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes

HOUR_GAP_BINS = 100


def draw_report(report: LedgerReport, path: Path) -> Path:
    """Writes the 2x2 figure of `report` to `path` and returns it.

    Panels: clients by participations (log y), gaps in rounds, gaps in simulated hours (or a
    note when the start times are unknown), and committed clients by hour of day.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 8), dpi=100)
    counts, round_gaps, hour_gaps, by_hour = figure.subplots(2, 2).flat
    _steps(counts, report.count_histogram, "participations per client", "clients")
    counts.set_title(
        f"{report.clients_seen:,} of {report.num_clients:,} clients seen "
        f"({report.fraction_seen:.1%}), {report.rows:,} participations"
    )
    _steps(round_gaps, report.round_gap_histogram, "gap between participations (rounds)", "gaps")
    round_gaps.set_title(f"Gaps in rounds (min {report.min_separation})")
    _hour_gaps(hour_gaps, report.hour_gaps)
    _by_hour(by_hour, report.by_hour)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _steps(axes: Axes, histogram: np.ndarray, xlabel: str, ylabel: str) -> None:
    """A histogram of integer values 0, 1, 2, ... as filled steps, log y."""
    edges = np.arange(len(histogram) + 1) - 0.5
    _log_steps(axes, histogram, edges)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)


def _log_steps(axes: Axes, values: np.ndarray, edges: np.ndarray) -> None:
    """Filled steps on a log y axis; empty bins are left blank."""
    if not values.any():
        _note(axes, "none")
        return
    axes.stairs(values, edges, fill=True, baseline=0.5, color="tab:blue")
    axes.set_yscale("log")
    axes.set_ylim(bottom=0.5)


def _hour_gaps(axes: Axes, gaps: np.ndarray | None) -> None:
    axes.set_xlabel("gap between participations (simulated hours)")
    axes.set_ylabel("gaps")
    if gaps is None:
        _note(axes, "round start times unknown (no metrics.jsonl)")
        return
    values, edges = np.histogram(gaps, bins=HOUR_GAP_BINS)
    _log_steps(axes, values, edges)
    if len(gaps):
        axes.set_title(f"Gaps in hours (median {np.median(gaps):.3g} h)")


def _by_hour(axes: Axes, by_hour: np.ndarray | None) -> None:
    axes.set_xlabel("hour of day of the round's start (simulated clock)")
    axes.set_ylabel("clients committed")
    axes.set_xlim(-0.5, HOURS_PER_DAY - 0.5)
    if by_hour is None:
        _note(axes, "round start times unknown (no metrics.jsonl)")
        return
    axes.bar(np.arange(HOURS_PER_DAY), by_hour, width=0.9, color="tab:orange")
    axes.set_xticks(np.arange(0, HOURS_PER_DAY, 3))
    axes.set_title("Participation by hour of day")


def _note(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)
