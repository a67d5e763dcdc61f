"""Smoke test of scripts/bench_audit.py: its JSON lines (tiny sizes; no timing assertions)."""

from __future__ import annotations

import json

import pytest

from tests.scripts import SCRIPTS, load_script


def test_one_line_per_case_and_the_overhead(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script(SCRIPTS / "bench_audit.py")
    bench.main(
        ["--canaries", "4", "--rounds", "2", "--eval-every", "1", "--repeats", "1",
         "--population", "synthetic", "--model", "logreg", "--clients", "200", "--cohort", "5"]
    )  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("case") for line in lines] == ["no_canaries", "canaries", None]
    assert lines[0]["ratio"] == 1.0 and lines[1]["run_s"] > 0
    overhead = lines[2]
    assert overhead["part"] == "overhead" and overhead["dim"] > 0
    assert overhead["total_s"] >= 2 * overhead["cosines_per_round_s"] > 0
    assert overhead["share"] > 0


def test_bad_arguments_are_refused() -> None:
    bench = load_script(SCRIPTS / "bench_audit.py")
    with pytest.raises(SystemExit):
        bench.parse_args(["--canaries", "0"])
