"""Smoke test of scripts/bench_ddp.py: its JSON lines (tiny sizes; no timing assertions)."""

from __future__ import annotations

import json

import pytest

from tests.scripts import SCRIPTS, load_script


def test_encoder_lines_are_one_per_case_and_dimension(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script(SCRIPTS / "bench_ddp.py")
    bench.main(["--dims", "100", "1000", "--clients", "3", "--repeats", "1", "--parts", "encoder"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cases = ["rotate_round", "skellam_per_client", "skellam_aggregate", "ddgauss"]
    assert [(line["dim"], line["case"]) for line in lines] == [
        (dim, case) for dim in (100, 1000) for case in cases
    ]
    for line in lines:
        assert line["padded_dim"] == (128 if line["dim"] == 100 else 1024)
        assert line["seconds_per_client"] > 0 and line["ratio_to_dense_pass"] > 0


def test_bad_arguments_are_refused() -> None:
    bench = load_script(SCRIPTS / "bench_ddp.py")
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "1"])
