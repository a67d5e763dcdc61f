"""Smoke test of scripts/bench_aggregation.py: its JSON lines at tiny sizes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # runs the script in subprocesses

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_aggregation.py"
COMMON = {
    "bench",
    "model",
    "aggregation",
    "cohort_size",
    "num_chunks",
    "num_params",
    "upload_bytes",
    "transport_bytes",
    "wire_bytes",
    "server_ms",
    "reduce_ms",
    "densify_ms",
    "rounds",
    "dense_ratio",
    "transport_ratio",
}
LM = COMMON | {"vocab_size", "rows_per_client", "row_fraction", "rows_touched"}
SPARSE = LM | {"rows_per_chunk", "max_ratio", "target_ratio", "meets_target"}
MOE = COMMON | {"num_experts", "top_k", "vocab_size", "expert_param_fraction"}
POSITIVE = (
    "num_params",
    "upload_bytes",
    "transport_bytes",
    "wire_bytes",
    "server_ms",
    "reduce_ms",
    "dense_ratio",
    "transport_ratio",
)


@pytest.fixture(scope="module")
def lines() -> list[dict[str, Any]]:
    """The script's output for one small vocabulary and one small mixture, 8 clients."""
    args = ["--vocab-sizes", "2000", "--experts", "4", "--cohort", "8", "--chunk-size", "3"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--moe-vocab", "500", "--rounds", "2"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=60,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_one_line_per_model_and_aggregator(lines):
    assert [(line["model"], line["aggregation"]) for line in lines] == [
        ("lm", "dense"),
        ("lm", "sparse"),
        ("moe_lm", "dense"),
        ("moe_lm", "moe"),
    ]
    assert all(line["bench"] == "aggregation" for line in lines)
    assert all(
        (line["cohort_size"], line["num_chunks"], line["rounds"]) == (8, 3, 2) for line in lines
    )


def test_keys_and_positive_values(lines):
    dense_lm, sparse, dense_moe, moe = lines
    assert set(dense_lm) == LM and set(sparse) == SPARSE
    assert set(dense_moe) == MOE and set(moe) == MOE | {"experts_per_chunk"}
    for line in lines:
        for key in POSITIVE:
            assert math.isfinite(line[key]) and line[key] > 0, key
        assert line["densify_ms"] >= 0
        assert line["wire_bytes"] >= line["transport_bytes"]
        # a chunk partial sums its clients: never more than what they uploaded
        assert line["transport_bytes"] <= line["upload_bytes"]


def test_lm_lines(lines):
    dense, sparse = lines[:2]
    assert dense["vocab_size"] == sparse["vocab_size"] == 2000
    assert dense["rows_per_client"] == 40 and dense["row_fraction"] == pytest.approx(0.02)
    assert 40 <= dense["rows_touched"] == sparse["rows_touched"] <= 8 * 40
    assert 40 <= sparse["rows_per_chunk"] <= 3 * 40
    # every dense client uploads every parameter; dense partials carry them once per chunk
    assert dense["upload_bytes"] == 8 * 4 * dense["num_params"]
    assert dense["transport_bytes"] == 3 * 4 * dense["num_params"]
    assert sparse["upload_bytes"] < dense["upload_bytes"]
    for key in ("upload", "transport"):
        ratio = dense[f"{key}_bytes"] / sparse[f"{key}_bytes"]
        assert sparse[f"{'dense' if key == 'upload' else key}_ratio"] == pytest.approx(ratio, 1e-3)
    # a sparse client uploads its dense part, and 40 rows of each block: index and values
    dense_part = sparse["num_params"] - 2000 * (96 + 1)
    assert sparse["upload_bytes"] == 8 * (4 * dense_part + 40 * (8 + 96 * 4) + 40 * (8 + 4))
    assert 1 < sparse["dense_ratio"] < sparse["max_ratio"]
    assert sparse["target_ratio"] == 20
    assert sparse["meets_target"] is None  # the target is stated at V = 100k only


def test_moe_lines(lines):
    dense, moe = lines[2:]
    assert dense["num_experts"] == moe["num_experts"] == 4
    assert dense["top_k"] == 2 and dense["vocab_size"] == 500
    assert 0 < dense["expert_param_fraction"] < 1
    assert 0.5 <= moe["experts_per_chunk"] <= 1  # top-2 of 4 per client, 2-3 clients a chunk
    assert moe["upload_bytes"] < dense["upload_bytes"]
