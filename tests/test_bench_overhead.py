"""Smoke test of scripts/bench_overhead.py: its JSON lines, and the floor's determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.scripts import load_script

pytestmark = pytest.mark.slow  # runs the script in subprocesses

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_overhead.py"
KEYS = {
    "bench",
    "system",
    "vectorise",
    "num_clients",
    "cohort_size",
    "rounds",
    "steady_round_s",
    "steady_round_s_mean",
    "steady_round_s_p90",
    "cold_start_s",
    "cold_start_process_s",
    "driver_peak_rss_mib",
    "model_sha256",
    "floor_steady_round_s",
    "overhead_ms",
    "ratio_to_floor",
}

INRUN = {"inrun_train_ms", "inrun_server_ms", "inrun_overhead_ms", "ray_call_ms"}


@pytest.fixture(scope="module")
def lines() -> list[dict[str, Any]]:
    """The script's output for one tiny population: floor, then fedray with 1 worker."""
    args = ["--populations", "1000", "--cohorts", "10", "--rounds", "3"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--systems", "floor,fedray_w1"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_script_prints_one_json_line_per_case_with_the_floor_first(lines):
    assert [(line["system"], line["vectorise"]) for line in lines] == [
        ("floor", "off"),
        ("floor", "on"),
        ("fedray_w1", "off"),
        ("fedray_w1", "on"),
    ]
    for line in lines:
        extra = {"speedup_vs_loop"} if line["vectorise"] == "on" else set()
        assert set(line) == KEYS | extra | (INRUN if line["system"] != "floor" else set())
        assert line["bench"] == "overhead"
        assert (line["num_clients"], line["cohort_size"], line["rounds"]) == (1000, 10, 3)
        for key in ("steady_round_s", "steady_round_s_mean", "steady_round_s_p90"):
            assert line[key] > 0
        assert 0 < line["cold_start_s"] < line["cold_start_process_s"]
        assert line["driver_peak_rss_mib"] > 0
        floor = lines[0 if line["vectorise"] == "off" else 1]
        assert line["floor_steady_round_s"] == floor["steady_round_s"]
        assert line["ratio_to_floor"] > 0
    assert lines[0]["ratio_to_floor"] == lines[1]["ratio_to_floor"] == 1.0
    for loop, vectorised in (lines[0:2], lines[2:4]):
        assert vectorised["speedup_vs_loop"] == pytest.approx(
            loop["steady_round_s"] / vectorised["steady_round_s"], rel=1e-2
        )
    for line in lines[2:]:  # fedray's own split of its rounds
        assert line["inrun_train_ms"] > 0 and line["inrun_server_ms"] > 0
        assert line["ray_call_ms"] > 0
        split = line["inrun_train_ms"] + line["inrun_server_ms"] + line["inrun_overhead_ms"]
        assert split == pytest.approx(1e3 * line["steady_round_s"], rel=0.5)  # medians apart
    # The floor does fedray's arithmetic in the same order: bit-identical final weights.
    assert lines[0]["model_sha256"] == lines[2]["model_sha256"]
    assert lines[1]["model_sha256"] == lines[3]["model_sha256"]


def test_floor_weights_are_deterministic_and_match_the_floor_case(lines):
    bench = load_script(SCRIPT)
    experiment = bench.build_experiment(1000, 10, rounds=3, seed=0, vectorise="off")
    threads = torch.get_num_threads()
    try:
        first, second = bench.floor_weights(experiment), bench.floor_weights(experiment)
    finally:
        torch.set_num_threads(threads)  # the floor pins torch to one thread, as workers do
    assert first.dtype == np.float32
    assert np.array_equal(first, second)
    assert bench.sha256_of(first.tobytes()) == lines[0]["model_sha256"]
