"""Smoke test of scripts/bench_privacy.py: its JSON lines at tiny sizes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # runs the script in subprocesses

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_privacy.py"
MECHANISMS = ["gaussian", "tree", "tree_efficient", "banded_mf", "blt"]
BOUND = {"n": 64, "max_participations": 3, "min_separation": 8}
COMMON = {"bench", "metric", *BOUND}
SENSITIVITY_KEYS = COMMON | {"seconds", "cpu_seconds", "value"}
OPTIMISE_KEYS = COMMON | {
    "mechanism",
    "seconds",
    "cpu_seconds",
    "mean_sq_prefix_error",
    "sensitivity_squared",
    "error_at_equal_rho",
}
TIMES = ("round_ms_mean", "round_ms_p50", "round_ms_p90", "round_cpu_ms_mean")
NOISE_KEYS = COMMON | {
    "mechanism",
    "dim",
    "rounds",
    "warmup",
    "buffers",
    "torch_threads",
    *TIMES,
    "factorisation_s",
    "state_bytes",
    "state_d",
    "rss_growth_bytes",
    "rss_growth_d",
    "rss_growth_trimmed_d",
    "peak_rss_growth_d",
    "ratio_to_gaussian_mean",
    "ratio_to_gaussian_p50",
}
# State after 5 rounds: none, popcount(5) = 2 tree nodes, bands - 1 = 7 ring rows, 3 buffers.
STATE_D = {"gaussian": 0, "tree": 2, "tree_efficient": 2, "banded_mf": 7, "blt": 3}


@pytest.fixture(scope="module")
def lines() -> list[dict[str, Any]]:
    """The script's output at d = 1000, 3 timed rounds, n = 64, k = 3, b = 8."""
    args = ["--dims", "1000", "--rounds", "3", "--n", "64", "--min-separation", "8"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--max-participations", "3"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=120,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_one_line_per_case_in_order(lines):
    assert [(line["metric"], line.get("mechanism")) for line in lines] == [
        ("tree_sensitivity", None),
        ("optimise", "banded_mf"),
        ("optimise", "blt"),
        *(("noise_round", name) for name in MECHANISMS),
    ]
    for line in lines:
        assert line["bench"] == "privacy"
        assert {key: line[key] for key in BOUND} == BOUND


def test_tree_sensitivity_line(lines):
    (line,) = (line for line in lines if line["metric"] == "tree_sensitivity")
    assert set(line) == SENSITIVITY_KEYS
    assert finite_positive(line["seconds"]) and finite_positive(line["cpu_seconds"])
    # Each of k = 3 rounds is in one node per level (7 levels), and a node adds count^2.
    assert line["value"] == float(int(line["value"])) and 3 * 7 <= line["value"] <= 9 * 7


def test_optimise_lines(lines):
    optimised = {line["mechanism"]: line for line in lines if line["metric"] == "optimise"}
    assert set(optimised["banded_mf"]) == OPTIMISE_KEYS | {"bands"}
    assert set(optimised["blt"]) == OPTIMISE_KEYS | {"buffers"}
    assert (optimised["banded_mf"]["bands"], optimised["blt"]["buffers"]) == (8, 3)
    for line in optimised.values():
        for key in OPTIMISE_KEYS - COMMON - {"mechanism"}:
            assert finite_positive(line[key]), key
        product = line["mean_sq_prefix_error"] * line["sensitivity_squared"]
        assert line["error_at_equal_rho"] == pytest.approx(product, rel=1e-4)
    # Banded columns have unit norm and never overlap (bands <= b): sens^2 = k.
    assert optimised["banded_mf"]["sensitivity_squared"] == pytest.approx(3.0)


def test_noise_round_lines(lines):
    for line in (line for line in lines if line["metric"] == "noise_round"):
        name = line["mechanism"]
        assert set(line) == NOISE_KEYS, name
        sizes = (line["dim"], line["rounds"], line["warmup"], line["torch_threads"])
        assert sizes == (1000, 3, 2, 1)
        for key in (*TIMES, "ratio_to_gaussian_mean", "ratio_to_gaussian_p50"):
            assert finite_positive(line[key]), (name, key)
        assert line["round_ms_p50"] <= line["round_ms_p90"]
        # d-vectors, plus the banded coefficients or BLT parameters the noise was built with
        assert 0 <= line["state_bytes"] - STATE_D[name] * 4 * 1000 <= 1024
        assert line["state_d"] == pytest.approx(STATE_D[name], abs=0.3)
        for key in ("factorisation_s", "rss_growth_d", "rss_growth_trimmed_d", "peak_rss_growth_d"):
            assert math.isfinite(line[key]), (name, key)
        prepared = line["factorisation_s"]
        assert prepared > 0 if name in ("banded_mf", "blt") else prepared >= 0
    gaussian = next(line for line in lines if line.get("mechanism") == "gaussian")
    assert gaussian["ratio_to_gaussian_mean"] == gaussian["ratio_to_gaussian_p50"] == 1.0
