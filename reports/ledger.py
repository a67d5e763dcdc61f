"""Ledger analytics: how often each client joined, how far apart, and at what hour of the day.

From a run's participation log (`tracking.participation_log=true`), vectorised over its rows
(np.bincount, a stable sort by client and a diff): 1M clients and 10k rounds take seconds. The
counts equal the run's own `ParticipationLedger` (`count` and `observed()`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from engine.scheduling.ledger import read_log

LOG_NAME = "participation.parquet"
PNG_NAME = "ledger_report.png"
HOURS_PER_DAY = 24
RERUN_HINT = "rerun with tracking.participation_log=true"


class LedgerReportError(Exception):
    """A problem that stops the report of one run: printed as one line."""


@dataclass(frozen=True)
class Spread:
    """Summary of a distribution (the figures are None when it is empty)."""

    count: int
    min: float | None
    median: float | None
    p90: float | None
    max: float | None
    mean: float | None

    @classmethod
    def of(cls, values: np.ndarray) -> Spread:
        """The summary of `values` (any length)."""
        if not len(values):
            return cls(0, None, None, None, None, None)
        low, median, p90, high = np.percentile(values, [0, 50, 90, 100]).tolist()
        return cls(len(values), low, median, p90, high, float(np.mean(values)))

    def fields(self, prefix: str) -> dict[str, Any]:
        """The figures as flat keys `<prefix>_<name>`."""
        return {f"{prefix}_{name}": value for name, value in asdict(self).items()}


@dataclass(frozen=True, eq=False)
class LedgerReport:
    """What a participation log says about the population.

    Attributes:
        num_clients: Population size N.
        rows: Committed (round, client) pairs in the log.
        rounds: Rounds the log spans (its largest round + 1; 0 for an empty log).
        counts: Participations of each client, length N.
        count_histogram: Clients with 0, 1, 2, ... participations.
        round_gaps: Every gap, in rounds, between consecutive participations of one client.
        hour_gaps: The same gaps in simulated hours (between the rounds' starts); None when
            the start times are unknown. Gaps touching a round of unknown start are left out.
        by_hour: Committed clients by hour of day (t mod 24 h of the round's start), 24 bins;
            None when the start times are unknown.
    """

    num_clients: int
    rows: int
    rounds: int
    counts: np.ndarray
    count_histogram: np.ndarray
    round_gaps: np.ndarray
    hour_gaps: np.ndarray | None
    by_hour: np.ndarray | None

    @property
    def clients_seen(self) -> int:
        """Clients that joined at least once."""
        return self.num_clients - int(self.count_histogram[0])

    @property
    def fraction_seen(self) -> float:
        """Clients seen over N."""
        return self.clients_seen / max(self.num_clients, 1)

    @property
    def mean_participations(self) -> float | None:
        """Mean participations of the clients seen (None if none was)."""
        return self.rows / self.clients_seen if self.clients_seen else None

    @property
    def max_participations(self) -> int:
        """Largest number of rounds one client joined (0 for an empty log)."""
        return len(self.count_histogram) - 1

    @property
    def min_separation(self) -> int | None:
        """Smallest gap in rounds (None when no client joined twice)."""
        return int(self.round_gaps.min()) if len(self.round_gaps) else None

    @property
    def round_gap_histogram(self) -> np.ndarray:
        """Gaps in rounds of length 0, 1, 2, ..."""
        return np.bincount(self.round_gaps)


def analyse(
    rounds: np.ndarray,
    client_ids: np.ndarray,
    num_clients: int,
    start_h: np.ndarray | None = None,
) -> LedgerReport:
    """The ledger report of a participation log.

    Args:
        rounds: Round of each row (as `read_log` gives them, in commit order or any order).
        client_ids: Client of each row, in [0, num_clients); a client at most once per round.
        num_clients: Population size N.
        start_h: Simulated start of each round in hours, indexed by round (NaN, or a short
            array, for unknown ones); None when unknown.

    Raises:
        LedgerReportError: Rows of unequal lengths, negative rounds or ids out of range.
    """
    rounds = np.asarray(rounds, dtype=np.int64)
    ids = np.asarray(client_ids, dtype=np.int64)
    _check(rounds, ids, num_clients)
    counts = np.bincount(ids, minlength=num_clients)
    order = _by_client(rounds, ids)
    ids, rounds_sorted = ids[order], rounds[order]
    same = ids[1:] == ids[:-1]  # consecutive rows of one client
    num_rounds = int(rounds.max()) + 1 if len(rounds) else 0
    hour_gaps, by_hour = (None, None)
    if start_h is not None:
        hour_gaps, by_hour = _hours(start_h, num_rounds, rounds, rounds_sorted, same)
    return LedgerReport(
        num_clients=num_clients,
        rows=len(ids),
        rounds=num_rounds,
        counts=counts,
        count_histogram=np.bincount(counts, minlength=1),
        round_gaps=np.diff(rounds_sorted)[same],
        hour_gaps=hour_gaps,
        by_hour=by_hour,
    )


def _check(rounds: np.ndarray, ids: np.ndarray, num_clients: int) -> None:
    """Raises LedgerReportError unless the columns fit together and the population."""
    if rounds.shape != ids.shape or rounds.ndim != 1:
        raise LedgerReportError(f"log columns of shapes {rounds.shape} and {ids.shape}")
    if len(ids) and (ids.min() < 0 or ids.max() >= num_clients):
        raise LedgerReportError(f"log has client ids beyond a population of {num_clients}")
    if len(rounds) and rounds.min() < 0:
        raise LedgerReportError("log has negative rounds")


def _by_client(rounds: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The order of the rows by client, then round: a stable sort when in commit order."""
    if np.all(rounds[1:] >= rounds[:-1]):
        return np.argsort(ids, kind="stable")
    return np.lexsort((rounds, ids))


def _hours(
    start_h: np.ndarray,
    num_rounds: int,
    rounds: np.ndarray,
    rounds_sorted: np.ndarray,
    same: np.ndarray,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Gaps in hours (between rounds of known start) and rows by hour of day, or None, None."""
    times = np.full(max(num_rounds, len(start_h)), np.nan)
    times[: len(start_h)] = start_h
    if not np.isfinite(times).any():
        return None, None
    gaps = np.diff(times[rounds_sorted])[same]
    return gaps[np.isfinite(gaps)], _by_hour(times, np.bincount(rounds, minlength=len(times)))


def _by_hour(times: np.ndarray, rows_per_round: np.ndarray) -> np.ndarray:
    """Rows per hour of day of their round's start (rounds of unknown start left out)."""
    known = np.isfinite(times)
    hour = np.floor(np.mod(times[known], HOURS_PER_DAY)).astype(np.int64)
    hour = np.clip(hour, 0, HOURS_PER_DAY - 1)  # mod of a tiny negative may round to 24
    weights = rows_per_round[known].astype(np.float64)
    return np.rint(np.bincount(hour, weights=weights, minlength=HOURS_PER_DAY)).astype(np.int64)


# --- reading a run dir -------------------------------------------------------------------------


def read_num_clients(run_dir: Path) -> int | None:
    """N from summary.json `population/num_clients`, else `.hydra/config.yaml`; else None."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        figures = json.loads(summary.read_text(encoding="utf-8"))
        value = figures.get("population/num_clients") if isinstance(figures, dict) else None
        if isinstance(value, int):
            return value
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        population = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("population")
        value = population.get("num_clients") if isinstance(population, dict) else None
        if isinstance(value, int):
            return value
    return None


def read_start_hours(run_dir: Path) -> np.ndarray | None:
    """Each round's `system/sim_time_h` from metrics.jsonl, by `round` (NaN where missing).

    Returns None when the file is missing or has no start time.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    timed = [(r["round"], r["system/sim_time_h"]) for r in rows if "system/sim_time_h" in r]
    if not timed:
        return None
    index = np.array([t[0] for t in timed], dtype=np.int64)
    times = np.full(int(index.max()) + 1, np.nan)
    times[index] = np.array([t[1] for t in timed], dtype=np.float64)
    return times


def analyse_run(run_dir: Path, warn: Callable[[str], None]) -> LedgerReport:
    """The ledger report of the run in `run_dir` (its log, N and round start times).

    Args:
        run_dir: A run's Hydra output directory.
        warn: Called with each message for the user (e.g. N guessed from the log).

    Raises:
        LedgerReportError: No participation log, or one that cannot be read.
    """
    log = run_dir / LOG_NAME
    if not log.exists():
        raise LedgerReportError(f"{run_dir}: no participation log ({LOG_NAME}); {RERUN_HINT}")
    try:
        rounds, ids = read_log(log)
        num_clients = read_num_clients(run_dir)
        start_h = read_start_hours(run_dir)
    except (OSError, ValueError, KeyError, yaml.YAMLError) as err:  # ArrowInvalid: ValueError
        raise LedgerReportError(f"{run_dir}: unreadable run files ({err})") from err
    if num_clients is None:
        num_clients = int(ids.max()) + 1 if len(ids) else 0
        warn(f"{run_dir}: population size unknown, taken as the largest client id + 1")
    if start_h is None:
        warn(f"{run_dir}: no round start times (metrics.jsonl), the hour figures are null")
    return analyse(rounds, ids, num_clients, start_h)


def report_line(report: LedgerReport) -> dict[str, Any]:
    """The scalar figures of a report (no per-client arrays), for one JSON line."""
    by_hour = None if report.by_hour is None else report.by_hour.tolist()
    return {
        "num_clients": report.num_clients,
        "rows": report.rows,
        "rounds": report.rounds,
        "clients_seen": report.clients_seen,
        "fraction_seen": report.fraction_seen,
        "mean_participations": report.mean_participations,
        "max_participations": report.max_participations,
        "min_separation": report.min_separation,
        "clients_by_participations": report.count_histogram.tolist(),
        **_spread_fields(report.round_gaps, "gap_rounds"),
        **_spread_fields(report.hour_gaps, "gap_hours"),
        "by_hour_of_day": by_hour,
    }


def _spread_fields(values: np.ndarray | None, prefix: str) -> dict[str, Any]:
    """`Spread.fields` of `values`; every figure None when the values are unknown."""
    fields = Spread.of(np.empty(0) if values is None else values).fields(prefix)
    return fields if values is not None else dict.fromkeys(fields)


def report_run(
    run_dir: Path, plot: bool, warn: Callable[[str], None]
) -> tuple[LedgerReport, dict[str, Any]]:
    """Reads, analyses and (with `plot`) draws `ledger_report.png` of one run.

    Returns:
        The report, and its JSON line: `report_line`, the seconds taken and the PNG's path.

    Raises:
        LedgerReportError: As `analyse_run`.
    """
    start = time.perf_counter()
    report = analyse_run(run_dir, warn)
    png = None
    if plot:
        from reports.ledger_plots import draw_report

        png = draw_report(report, run_dir / PNG_NAME)
    seconds = time.perf_counter() - start
    line = {**report_line(report), "seconds": seconds, "png": None if png is None else str(png)}
    return report, line
