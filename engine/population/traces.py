"""Replayed availability traces: per-client on/off intervals read from CSV or Parquet files.

A small trace drives a large population: client ``c`` replays trace client ``c mod M``. The file
format, ``fedray:`` paths and error messages are described in `engine.population.trace_files`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from common.errors import require
from engine.population.availability import Availability
from engine.population.trace_files import Intervals, load_intervals


def cycle_to(values: np.ndarray, n: int) -> np.ndarray:
    """Repeats `values` cyclically to length `n`: element c is ``values[c % len(values)]``.

    Copies by doubling (log2(n / len) memcpys), so the cost is O(n) bytes moved, with no
    index array.

    Args:
        values: 1-d array with at least one element.
        n: Length of the result.

    Returns:
        A fresh array of length `n` and the dtype of `values`.
    """
    m = len(values)
    if m >= n:
        return values[:n].copy()
    out = np.empty(n, dtype=values.dtype)
    out[:m] = values
    filled = m
    while filled < n:
        step = min(filled, n - filled)
        out[filled : filled + step] = out[:step]
        filled += step
    return out


class ReplayedAvailability(Availability):
    """Base of the availabilities replayed from a trace of M trace clients.

    A subclass gives the trace's state at time t; client c of the population follows trace
    client c mod M, at the cost of one O(N) cyclic copy per call.
    """

    @abstractmethod
    def _trace_state(self, t: float) -> np.ndarray:
        """Bool mask over the M trace clients at time `t`."""

    def available(self, t: float) -> np.ndarray:
        """Bool mask over the population: client c follows trace client c mod M."""
        return cycle_to(self._trace_state(t), self.num_clients)


@dataclass(frozen=True)
class IntervalTraceAvailability(ReplayedAvailability):
    """Replays an interval trace: client c is online iff trace client c mod M is.

    Client c is online at t iff trace client ``c mod M`` has an interval with
    ``start <= t' < end``, where ``t' = t``, or ``t mod period_s`` when `period_s` is set.
    Trace clients without intervals (ids below M that never appear) are never online. Each
    call costs O(intervals) plus one O(N) cyclic copy.

    Attributes:
        num_clients: Population size N.
        path: Interval file (CSV, or Parquet by suffix); ``fedray:NAME`` for shipped files.
        period_s: Replay period in seconds; every interval must end by it. None: play once.
    """

    num_clients: int
    path: str
    period_s: float | None = None

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require(
            self.period_s is None or self.period_s > 0,
            "period_s",
            f"must be > 0 or None, got {self.period_s}",
        )
        _ = self._intervals

    @cached_property
    def _intervals(self) -> Intervals:
        return load_intervals(self.path, self.period_s)

    @property
    def num_trace_clients(self) -> int:
        """M, the number of trace clients (largest id in the file + 1)."""
        return self._intervals.num_trace_clients

    def _trace_state(self, t: float) -> np.ndarray:
        """Bool mask over the M trace clients at time `t`."""
        iv = self._intervals
        tt = float(t) if self.period_s is None else float(np.mod(t, self.period_s))
        inside = (iv.start <= tt) & (tt < iv.end)
        state = np.zeros(iv.num_trace_clients, dtype=bool)
        state[iv.client[inside]] = True
        return state
