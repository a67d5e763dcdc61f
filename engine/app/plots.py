"""End-of-run figures, saved as PNG: participation histogram and availability over time.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas: no pyplot, so no
global figure state and no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def participation_histogram(counts: np.ndarray, path: Path) -> Path:
    """Bar chart of how many clients joined 0, 1, 2, ... rounds.

    Args:
        counts: Per-client participation counts (the ledger's column).
        path: Where to write the PNG.
    """
    histogram = np.bincount(counts.astype(np.int64, copy=False))
    figure = _figure(6, 4)
    axes = figure.add_subplot()
    axes.bar(np.arange(len(histogram)), histogram, color="tab:blue")
    axes.set_yscale("log")
    axes.set_xlabel("rounds joined")
    axes.set_ylabel("clients")
    axes.set_title(f"Participation over {len(counts):,} clients")
    return _save(figure, path)


def availability_over_time(
    sim_time_h: np.ndarray, available: np.ndarray, reported: np.ndarray, path: Path
) -> Path:
    """Available clients, and clients that reported, against simulated time.

    Args:
        sim_time_h: Each round's simulated start, in hours.
        available: Clients available at each round's start.
        reported: Clients whose update reached each round's aggregate.
        path: Where to write the PNG.
    """
    figure = _figure(8, 4)
    axes = figure.add_subplot()
    axes.plot(sim_time_h, available, color="tab:green", label="available")
    axes.set_xlabel("simulated time (hours)")
    axes.set_ylabel("clients available")
    right = axes.twinx()
    right.plot(sim_time_h, reported, color="tab:orange", alpha=0.6, label="reported")
    right.set_ylim(0, 1.1 * max(float(np.max(reported, initial=0)), 1.0))
    right.set_ylabel("clients reported")
    axes.set_title("Availability over time")
    figure.legend(loc="upper right")
    return _save(figure, path)


def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas; matplotlib (0.35 s) is imported only when a run plots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    return path
