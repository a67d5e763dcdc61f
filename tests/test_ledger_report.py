"""reports/ledger.py and scripts/ledger_report.py: ledger analytics against the ledger itself."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.scheduling.ledger import ParticipationLedger
from reports.ledger import HOURS_PER_DAY, LedgerReportError, analyse, analyse_run
from tests.scripts import SCRIPTS, load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Schedule = list[list[int]]  # the clients of each round


@pytest.fixture(scope="module")
def cli() -> Any:
    return load_script(SCRIPTS / "ledger_report.py")


def columns(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """The log's (rounds, client ids) of a schedule, in commit order."""
    rounds = [r for r, ids in enumerate(schedule) for _ in ids]
    ids = [c for ids in schedule for c in ids]
    return np.array(rounds, dtype=np.int32), np.array(ids, dtype=np.int64)


def committed(schedule: Schedule, num_clients: int, starts_h: list[float]) -> ParticipationLedger:
    ledger = ParticipationLedger(num_clients)
    for r, ids in enumerate(schedule):
        ledger.record(r, starts_h[r] * 3600.0, np.array(ids, dtype=np.int64))
    return ledger


def naive_gaps(schedule: Schedule, num_clients: int, starts_h: list[float]) -> tuple[list, list]:
    """Each client's consecutive gaps in rounds and hours, client by client (a plain loop)."""
    in_rounds, in_hours = [], []
    for client in range(num_clients):
        joined = [r for r, ids in enumerate(schedule) if client in ids]
        in_rounds += [b - a for a, b in itertools.pairwise(joined)]
        in_hours += [starts_h[b] - starts_h[a] for a, b in itertools.pairwise(joined)]
    return in_rounds, in_hours


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, Schedule, list[float]]:
    num_clients = draw(st.integers(1, 12))
    rounds = draw(st.integers(0, 15))
    clients = st.sets(st.integers(0, num_clients - 1), max_size=num_clients)
    schedule = [sorted(draw(clients), reverse=draw(st.booleans())) for _ in range(rounds)]
    steps = draw(st.lists(st.floats(0.0, 30.0), min_size=rounds, max_size=rounds))
    return num_clients, schedule, np.cumsum([0.0, *steps])[:rounds].tolist()


@settings(max_examples=150, deadline=None)
@given(schedules())
def test_figures_equal_the_ledger_and_a_naive_count(case: tuple[int, Schedule, list[float]]):
    num_clients, schedule, starts_h = case
    report = analyse(*columns(schedule), num_clients, np.array(starts_h))
    ledger = committed(schedule, num_clients, starts_h)
    observed = ledger.observed()
    assert np.array_equal(report.counts, ledger.count)
    assert report.clients_seen == observed.clients
    assert report.rows == observed.contributions
    assert report.max_participations == observed.max_participations
    assert report.min_separation == observed.min_separation
    assert report.count_histogram.sum() == num_clients
    in_rounds, in_hours = naive_gaps(schedule, num_clients, starts_h)
    assert report.round_gaps.tolist() == in_rounds
    if not schedule:  # no round, so no start time known
        assert report.hour_gaps is None and report.by_hour is None
        return
    assert report.hour_gaps is not None and report.by_hour is not None
    np.testing.assert_allclose(report.hour_gaps, in_hours)
    assert report.by_hour.sum() == report.rows


def test_a_small_log_by_hand() -> None:
    # Client 0 joins rounds 0, 2, 3; client 2 rounds 1, 3; client 1 and 3 never. 6 h per round.
    schedule = [[0], [2], [0], [2, 0]]
    report = analyse(*columns(schedule), 4, np.array([0.0, 6.0, 12.0, 18.0]))
    assert report.counts.tolist() == [3, 0, 2, 0]
    assert report.count_histogram.tolist() == [2, 0, 1, 1]
    assert (report.clients_seen, report.fraction_seen, report.mean_participations) == (2, 0.5, 2.5)
    assert report.round_gaps.tolist() == [2, 1, 2]
    assert report.round_gap_histogram.tolist() == [0, 1, 2]
    assert report.hour_gaps is not None and report.hour_gaps.tolist() == [12.0, 6.0, 12.0]
    expected = np.zeros(HOURS_PER_DAY, dtype=np.int64)
    expected[[0, 6, 12, 18]] = [1, 1, 1, 2]
    assert report.by_hour is not None and report.by_hour.tolist() == expected.tolist()


def test_hour_of_day_wraps_days_and_skips_unknown_rounds() -> None:
    # Round starts 23.5 h, 25 h (1 h of day 2), unknown, 48 h (0 h of day 3).
    schedule = [[0, 1], [0], [1], [0, 1, 2]]
    report = analyse(*columns(schedule), 3, np.array([23.5, 25.0, np.nan, 48.0]))
    assert report.by_hour is not None
    assert {h: int(n) for h, n in enumerate(report.by_hour) if n} == {0: 3, 1: 1, 23: 2}
    # Client 1's gaps 23.5 -> unknown -> 48 are left out; client 0's are 1.5 h and 23 h.
    assert report.hour_gaps is not None and report.hour_gaps.tolist() == [1.5, 23.0]


def test_rows_out_of_commit_order_give_the_same_report() -> None:
    rng = np.random.default_rng(3)
    schedule = [sorted(rng.choice(50, size=10, replace=False).tolist()) for _ in range(30)]
    rounds, ids = columns(schedule)
    order = rng.permutation(len(ids))
    start = np.arange(30) * 0.5
    ordered, shuffled = (
        analyse(rounds, ids, 50, start),
        analyse(rounds[order], ids[order], 50, start),
    )
    assert np.array_equal(ordered.round_gaps, shuffled.round_gaps)
    assert ordered.hour_gaps is not None and shuffled.hour_gaps is not None
    assert np.array_equal(ordered.hour_gaps, shuffled.hour_gaps)


def test_no_start_times_leave_the_hour_figures_null() -> None:
    report = analyse(*columns([[0, 1], [1]]), 2)
    assert report.hour_gaps is None and report.by_hour is None
    assert report.round_gaps.tolist() == [1]


def test_an_empty_log_and_ids_out_of_range() -> None:
    empty = analyse(np.empty(0, np.int32), np.empty(0, np.int64), 5, np.zeros(0))
    assert (empty.clients_seen, empty.max_participations, empty.min_separation) == (0, 0, None)
    assert empty.mean_participations is None and empty.rounds == 0
    with pytest.raises(LedgerReportError, match="beyond a population of 3"):
        analyse(np.array([0]), np.array([3]), 3)


# --- run dirs and the command line ---------------------------------------------------------------


def write_run(
    run: Path,
    schedule: Schedule,
    num_clients: int,
    *,
    log: bool = True,
    summary: bool = True,
    metrics: bool = True,
    config_n: int | None = None,
) -> ParticipationLedger:
    """A run dir as a run writes it: .hydra files, log, metrics.jsonl and summary.json."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["tracking.participation_log=true"])
    )
    config = {"population": {"num_clients": config_n}} if config_n is not None else {}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    ledger = ParticipationLedger(num_clients, run / "participation.parquet" if log else None)
    starts_h = [2.0 * r for r in range(len(schedule))]
    with (run / "metrics.jsonl").open("w") as rows:
        for r, ids in enumerate(schedule):
            ledger.record(r, starts_h[r] * 3600.0, np.array(ids, dtype=np.int64))
            row = {"round": r, "system/sim_time_h": starts_h[r], "eval/accuracy": 0.5}
            rows.write(json.dumps(row) + "\n")
    ledger.close()
    if not metrics:
        (run / "metrics.jsonl").unlink()
    if summary:
        (run / "summary.json").write_text(json.dumps({"population/num_clients": num_clients}))
    return ledger


SCHEDULE = [[0, 3], [1, 3], [0, 2], [3], [0, 1]]


def run_cli(cli: Any, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list, str]:
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_a_run_dir_read_back_equals_its_ledger(tmp_path: Path) -> None:
    ledger = write_run(tmp_path, SCHEDULE, 6)
    report = analyse_run(tmp_path, warn=pytest.fail)
    assert np.array_equal(report.counts, ledger.count)
    assert report.min_separation == ledger.observed().min_separation == 1
    assert report.hour_gaps is not None and report.hour_gaps.tolist() == [4.0, 4.0, 6.0, 2.0, 4.0]


def test_population_size_from_the_config_then_the_ids(tmp_path: Path) -> None:
    write_run(tmp_path / "a", SCHEDULE, 6, summary=False, config_n=10)
    assert analyse_run(tmp_path / "a", warn=pytest.fail).num_clients == 10
    said: list[str] = []
    write_run(tmp_path / "b", SCHEDULE, 6, summary=False, metrics=False)
    report = analyse_run(tmp_path / "b", warn=said.append)
    assert report.num_clients == 4 and report.hour_gaps is None
    assert len(said) == 2 and "largest client id + 1" in said[0] and "null" in said[1]


def test_cli_on_a_run_dir(cli: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_run(tmp_path, SCHEDULE, 8)
    status, lines, err = run_cli(cli, capsys, str(tmp_path))
    assert status == 0 and err == "" and len(lines) == 1
    line = lines[0]
    assert line["job"] == "." and line["num_clients"] == 8 and line["rows"] == 9
    assert (line["clients_seen"], line["fraction_seen"], line["max_participations"]) == (4, 0.5, 3)
    assert line["clients_by_participations"] == [4, 1, 1, 2]
    assert (line["gap_rounds_min"], line["gap_rounds_max"], line["gap_rounds_count"]) == (1, 3, 5)
    assert line["gap_hours_median"] == 4.0 and sum(line["by_hour_of_day"]) == 9
    assert "counts" not in line and line["seconds"] > 0
    assert Path(line["png"]).read_bytes().startswith(PNG_MAGIC)


def test_cli_on_a_sweep(cli: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_run(tmp_path / "0", SCHEDULE, 8)
    write_run(tmp_path / "1", SCHEDULE, 8, log=False)
    write_run(tmp_path / "deep" / "10", SCHEDULE[:2], 8)
    write_run(tmp_path / "deep" / "2", SCHEDULE[:3], 8)
    status, lines, err = run_cli(cli, capsys, str(tmp_path), "--no-plot")
    assert status == 0
    assert [line["job"] for line in lines] == ["0", "deep/2", "deep/10"]
    assert [line["rows"] for line in lines] == [9, 6, 4]
    assert all(line["png"] is None for line in lines)
    assert not list(tmp_path.rglob("*.png"))
    assert "1: no participation log, skipped" in err and len(err.splitlines()) == 4


def test_errors_are_one_line(cli: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, lines, err = run_cli(cli, capsys, str(tmp_path / "absent"))
    assert (status, lines) == (
        1,
        [],
    ) and err == f"ledger_report: error: {tmp_path}/absent: no such directory\n"
    write_run(tmp_path / "run", SCHEDULE, 8, log=False)
    status, _, err = run_cli(cli, capsys, str(tmp_path / "run"))
    assert status == 1 and len(err.splitlines()) == 1
    assert "no participation log" in err and "tracking.participation_log=true" in err
    write_run(tmp_path / "sweep" / "0", SCHEDULE, 8, log=False)
    status, _, err = run_cli(cli, capsys, str(tmp_path / "sweep"))
    assert status == 1 and err.splitlines()[-1].startswith("ledger_report: error: ")
    assert "no job has a readable participation log" in err
