"""Smoke test of scripts/bench_steps.py: a step line and a clients line per model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_steps.py"


def test_prints_step_costs_and_the_vectorised_speedup(capsys):
    threads = torch.get_num_threads()
    try:
        load_script(SCRIPT).main(["--models", "logreg", "--clients", "4", "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
    step, clients = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (step["kind"], clients["kind"]) == ("step", "clients")
    assert step["model"] == clients["model"] == "logreg"
    assert 0 <= step["fixed_ms_per_step"] <= step["step_ms_batch10"]
    assert 0 <= step["fixed_share_batch10"] <= 1 and step["per_example_ms"] >= 0
    assert clients["clients"] == 4 and clients["examples"] > 0
    assert clients["speedup_vs_loop"] == pytest.approx(
        clients["loop_ms"] / clients["vectorised_ms"]
    )


def test_rejects_unknown_models():
    with pytest.raises(SystemExit):
        load_script(SCRIPT).main(["--models", "resnet"])
