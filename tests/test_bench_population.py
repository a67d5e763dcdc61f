"""Smoke test of scripts/bench_population.py: its JSON lines at a tiny population."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # runs the script in subprocesses

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_population.py"
MEMORY_KEYS = {
    "bench",
    "num_clients",
    "metric",
    "bytes_per_client",
    "peak_bytes_per_client",
    "columns_bytes_per_client",
    "rss_before_mib",
    "target_bytes_per_client",
    "meets_target",
}
ROUND_KEYS = {
    "bench",
    "num_clients",
    "metric",
    "policy",
    "cohort_size",
    "min_separation",
    "rounds",
    "warmup",
    "start_h",
    "round_ms_mean",
    "round_ms_p50",
    "round_ms_p90",
    "availability_ms",
    "select_ms",
    "ledger_ms",
    "round_cpu_ms_mean",
    "selected_mean",
    "available_fraction_mean",
    "available_fraction_min",
    "ineligible_fraction_end",
    "target_ms",
    "meets_target",
}
POSITIVE = (
    "round_ms_mean",
    "round_ms_p50",
    "round_ms_p90",
    "availability_ms",
    "select_ms",
    "ledger_ms",
    "selected_mean",
    "available_fraction_mean",
    "ineligible_fraction_end",
)


@pytest.fixture(scope="module")
def lines() -> list[dict[str, Any]]:
    """The script's output for two tiny populations, one cohort, a short warm-up."""
    args = ["--num-clients", "20000", "30000", "--cohorts", "100", "--rounds", "5"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--warmup", "20", "--min-separation", "10"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=60,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_one_memory_line_then_one_line_per_policy_for_each_population(lines):
    assert [(line["num_clients"], line["metric"], line.get("policy")) for line in lines] == [
        (n, metric, policy)
        for n in (20000, 30000)
        for metric, policy in [
            ("memory", None),
            ("round", "uniform_minsep"),
            ("round", "cyclic_minsep"),
        ]
    ]
    assert all(line["bench"] == "population" for line in lines)


def test_memory_lines(lines):
    for line in (line for line in lines if line["metric"] == "memory"):
        assert set(line) == MEMORY_KEYS
        for key in ("bytes_per_client", "peak_bytes_per_client", "rss_before_mib"):
            assert math.isfinite(line[key]) and line[key] >= 0
        # registry 4 + diurnal windows 4 + ledger 12 + mask 1 bytes per client
        assert line["columns_bytes_per_client"] == pytest.approx(21.0, abs=0.1)
        assert line["target_bytes_per_client"] == 64
        assert isinstance(line["meets_target"], bool)


def test_round_lines(lines):
    for line in (line for line in lines if line["metric"] == "round"):
        assert set(line) == ROUND_KEYS
        assert (line["cohort_size"], line["rounds"], line["warmup"]) == (100, 5, 20)
        assert line["min_separation"] == 10
        for key in POSITIVE:
            assert math.isfinite(line[key]) and line[key] > 0, key
        assert line["round_ms_p50"] <= line["round_ms_p90"]
        assert 0 <= line["available_fraction_min"] <= line["available_fraction_mean"] <= 1
        assert line["selected_mean"] <= line["cohort_size"]
        assert line["target_ms"] == 100
        assert isinstance(line["meets_target"], bool)
