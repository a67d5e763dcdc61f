"""scripts/bench_ledger_report.py at a tiny size: its JSON lines and its synthetic cohorts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tests.scripts import SCRIPTS, load_script

COMMON = {"bench", "num_clients", "rounds", "cohort", "groups", "seed", "phase", "rows", "seconds"}
REPORT = COMMON | {
    "counts_equal_ledger",
    "clients_seen",
    "fraction_seen",
    "max_participations",
    "min_separation",
    "gap_rounds_median",
    "gap_hours_median",
}


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_script(SCRIPTS / "bench_ledger_report.py")


def test_lines_at_a_tiny_size(bench: Any, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--clients", "1000", "--rounds", "20", "--cohort", "50", "--groups", "4"]
    assert bench.main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["phase"] for line in lines] == ["build", "report", "report_plot"]
    assert set(lines[0]) == COMMON
    for line in lines[1:]:
        assert set(line) == REPORT
        assert line["counts_equal_ledger"] is True
        assert (line["rows"], line["num_clients"], line["bench"]) == (1000, 1000, "ledger_report")
        # Cyclic over 4 groups: a client can only join every 4th round; rounds 600 s apart.
        assert line["min_separation"] % 4 == 0 and line["max_participations"] <= 5
        assert line["gap_hours_median"] == pytest.approx(line["gap_rounds_median"] / 6)


def test_cohorts_are_distinct_and_in_their_group(bench: Any) -> None:
    rng = np.random.default_rng(0)
    for round_idx in range(7):
        ids = bench.cohort(rng, 103, 3, round_idx, 30)
        assert len(set(ids.tolist())) == 30
        assert np.all(ids % 3 == round_idx % 3) and ids.min() >= 0 and ids.max() < 103


def test_a_cohort_larger_than_a_group_is_refused(bench: Any) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--clients", "100", "--groups", "4", "--cohort", "26"])
