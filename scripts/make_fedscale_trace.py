"""Generates the small FedScale-style traces shipped in ``engine/population/traces_data/``.

Writes, as JSON (one client per line):

- ``fedscale_behaviour.json``: a FedScale ``client_behave_trace``: per client key,
  ``active``/``inactive`` window bounds in seconds, ``finish_time`` (the replay period, 2 to 7
  days), ``duration`` (total online seconds) and ``model``. Each local day has a long overnight
  window (charging, on Wi-Fi) with some probability and a few short daytime ones; each client
  has its own timezone.
- ``fedscale_capacity.json``: a FedScale ``client_device_capacity``: per client key,
  ``computation`` (ms per sample, lognormal) and ``communication`` (kbit/s, lognormal).
- ``diurnal_intervals.csv``: an interval trace (``client_id,start,end``) of one day, for
  ``IntervalTraceAvailability`` with ``period_s: 86400``.

Usage:
    python scripts/make_fedscale_trace.py [--seed 0] [--clients 200] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

DAY = 86_400
OUT_DIR = Path(__file__).resolve().parents[1] / "engine" / "traces_data"


def day_windows(rng: np.random.Generator, days: int, tz_hours: float) -> np.ndarray:
    """Online windows (start, end) in seconds over `days` days, merged and clipped to the span.

    Args:
        rng: Source of randomness.
        days: Length of the span in days.
        tz_hours: Local time minus trace time, in hours.

    Returns:
        int64 [W, 2], disjoint windows sorted by start, inside [0, days * DAY].
    """
    windows: list[tuple[float, float]] = []
    night_prob = rng.uniform(0.3, 0.95)
    day_rate = rng.uniform(0.3, 2.5)
    for day in range(-1, days):
        local_midnight = day * DAY - tz_hours * 3600
        if rng.random() < night_prob:
            start = local_midnight + rng.normal(23.0, 1.5) * 3600
            length = np.clip(rng.lognormal(np.log(6 * 3600), 0.35), 1800, 11 * 3600)
            windows.append((start, start + length))
        for _ in range(rng.poisson(day_rate)):
            start = local_midnight + rng.uniform(8.0, 21.0) * 3600
            length = np.clip(rng.lognormal(np.log(25 * 60), 0.8), 300, 3 * 3600)
            windows.append((start, start + length))
    span = days * DAY
    merged: list[list[int]] = []
    for start, end in sorted(windows):
        lo, hi = max(0, round(start)), min(span, round(end))
        if hi <= lo:
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return np.asarray(merged, dtype=np.int64).reshape(-1, 2)


def behaviour_trace(rng: np.random.Generator, clients: int) -> dict[int, dict[str, Any]]:
    """A FedScale-style behaviour trace of `clients` clients with sparse integer keys."""
    keys = np.sort(rng.choice(np.arange(1, 200_000), size=clients, replace=False))
    trace: dict[int, dict[str, Any]] = {}
    for key in keys:
        days = int(rng.integers(2, 8))
        windows = day_windows(rng, days, tz_hours=float(rng.integers(-8, 10)))
        trace[int(key)] = {
            "duration": int((windows[:, 1] - windows[:, 0]).sum()),
            "inactive": windows[:, 1].tolist(),
            "finish_time": days * DAY,
            "active": windows[:, 0].tolist(),
            "model": f"device-{int(rng.integers(0, 40)):02d}",
        }
    return trace


def capacity_trace(rng: np.random.Generator, clients: int) -> dict[int, dict[str, float]]:
    """A FedScale-style capacity table: ms per sample and kbit/s, keys 1..clients."""
    computation = np.clip(rng.lognormal(np.log(60.0), 0.7, clients), 5.0, 2000.0)
    communication = np.clip(rng.lognormal(np.log(5000.0), 1.0, clients), 64.0, 500_000.0)
    return {
        key: {"computation": round(float(c), 1), "communication": round(float(b), 3)}
        for key, c, b in zip(range(1, clients + 1), computation, communication, strict=True)
    }


def write_json(path: Path, mapping: dict[int, Any]) -> None:
    """Writes a dict keyed by client id as JSON, one client per line."""
    lines = [
        f"{json.dumps(str(k))}: {json.dumps(v, separators=(',', ':'))}" for k, v in mapping.items()
    ]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def write_intervals(path: Path, rng: np.random.Generator, clients: int) -> None:
    """Writes a one-day interval trace (CSV) of `clients` clients."""
    rows = ["client_id,start,end"]
    for client in range(clients):
        for start, end in day_windows(rng, 1, tz_hours=float(rng.integers(-8, 10))):
            rows.append(f"{client},{start},{end}")
    path.write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Writes the three trace files into `--out-dir`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    write_json(args.out_dir / "fedscale_behaviour.json", behaviour_trace(rng, args.clients))
    write_json(args.out_dir / "fedscale_capacity.json", capacity_trace(rng, args.clients))
    write_intervals(args.out_dir / "diurnal_intervals.csv", rng, args.clients // 2)


if __name__ == "__main__":
    main()
