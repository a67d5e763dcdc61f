"""End-of-run figures, saved as PNG: participation histogram and availability over time.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas: no pyplot, so no
global figure state and no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mechanisms.audit.estimate import GaussianFit

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


def audit_cosines(final: np.ndarray, largest: np.ndarray, path: Path) -> Path:
    """Canary cosines against null cosines, with their fitted normal densities.

    Args:
        final: float64 [2, C]: the canaries' (row 0) and the null directions' (row 1) cosines
            with the model's change since round 0.
        largest: The same, the largest cosine with one round's change (all iterates).
        path: Where to write the PNG.
    """
    from scipy.stats import norm

    figure = _figure(11, 4)
    panels = (("final model", final), ("all iterates (largest per round)", largest))
    for i, (title, cosines) in enumerate(panels):
        axes = figure.add_subplot(1, 2, i + 1)
        finite = [c[np.isfinite(c)] for c in cosines]
        low, high = (float(f(np.concatenate(finite), initial=0.0)) for f in (np.min, np.max))
        bins = np.linspace(low, high if high > low else low + 1e-9, 40)
        styles = (("canaries", "tab:red"), ("null", "tab:gray"))
        width = bins[1] - bins[0]
        for values, (label, color) in zip(finite, styles, strict=True):
            axes.hist(values, bins=bins.tolist(), alpha=0.5, color=color, label=label)
            if len(values) > 1 and np.std(values) > 0:  # the fit the estimate uses
                fit = GaussianFit.of(values)
                grid = np.linspace(bins[0], bins[-1], 200)
                density = norm.pdf(grid, fit.mean, fit.std) * len(values) * width
                axes.plot(grid, density, color=color)
        axes.set_yscale("log")
        tallest = max(int(np.histogram(values, bins)[0].max(initial=1)) for values in finite)
        axes.set_ylim(0.5, 3.0 * tallest)
        axes.set_xlabel("cosine with the model's change")
        axes.set_ylabel("directions (log scale)")
        axes.set_title(title)
        axes.legend()
    return _save(figure, path)
