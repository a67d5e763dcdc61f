"""scripts/collect_sweep.py: a fake Hydra multirun sweep collected into CSV, Parquet and a plot."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "collect_sweep.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPSILON = {("gaussian", 0.5): 40.0, ("gaussian", 2.0): 2.0, ("tree", 0.5): 20.0, ("tree", 2.0): 1.0}
GRID = [(m, s, z) for m in ("gaussian", "tree") for s in (0, 1) for z in (0.5, 2.0)]
# 0-7: the grid; 8 fails (no summary.json); 9, 10: no DP, two seeds. 11 jobs: "10" sorts last.
FAILED_JOB = "8"


def accuracy(mechanism: str, seed: int, noise: float) -> float:
    return 0.9 - 0.1 * noise - (0.05 if mechanism == "tree" else 0.0) + 0.01 * seed


def write_job(
    job: Path,
    overrides: list[str],
    choices: dict[str, Any],
    config: dict[str, Any],
    summary: dict[str, Any] | None,
) -> None:
    hydra_dir = job / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"runtime": {"choices": {**choices, "hydra/launcher": "basic"}}}}
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


def summary_of(epsilon: float | None, acc: float, seed: int) -> dict[str, Any]:
    return {
        "final/eval_accuracy": acc,
        "final/eval_loss": 1.0 - acc,
        "final/eval_perplexity": None,
        "privacy/epsilon": epsilon,
        "privacy/delta": 1e-10,
        "privacy/epsilon_observed": None if epsilon is None else epsilon / 2,
        "model_sha256": f"{seed:064x}",
        "rounds_completed": 5,
        "participation/bound_holds": True,
        "system/total_s": 1.5,
    }


def write_grid_job(job: Path, mechanism: str, seed: int, noise: float, done: bool) -> None:
    overrides = [f"mechanism={mechanism}", f"mechanism.noise_multiplier={noise}", f"seed={seed}"]
    config = {
        "name": "default",
        "seed": seed,
        "rounds": 5,
        "mechanism": {"noise_multiplier": noise, "seed": "${seed}"},
    }
    summary = summary_of(EPSILON[mechanism, noise], accuracy(mechanism, seed, noise), seed)
    choices = {"mechanism": mechanism, "clipping": "fixed", "experiment": None}
    write_job(job, overrides, choices, config, summary if done else None)


def write_nodp_job(job: Path, seed: int) -> None:
    config = {"name": "default", "seed": seed, "rounds": 5, "mechanism": {"noise_multiplier": 0}}
    choices = {"mechanism": "none", "clipping": "none", "experiment": None}
    summary = summary_of(None, 0.95 + 0.01 * seed, seed)
    write_job(job, ["mechanism=none", f"seed={seed}"], choices, config, summary)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "grid"
    for num, (mechanism, seed, noise) in enumerate(GRID):
        write_grid_job(root / str(num), mechanism, seed, noise, done=True)
    write_grid_job(root / FAILED_JOB, "tree", 2, 2.0, done=False)
    write_nodp_job(root / "9", 0)
    write_nodp_job(root / "10", 1)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def run_script(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_collects_table_parquet_and_plot(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "collected"
    result = run_script(sweep, "--out", out)
    assert result.returncode == 0, result.stderr

    (line,) = result.stdout.splitlines()
    assert json.loads(line) == {
        "jobs": 10,
        "failed": 1,
        "csv": str(out / "sweep.csv"),
        "parquet": str(out / "sweep.parquet"),
        "png": str(out / "privacy_utility.png"),
    }
    (failed_line,) = [ln for ln in result.stderr.splitlines() if "skipped" in ln]
    assert failed_line.startswith(f"collect_sweep: skipped {sweep / FAILED_JOB}: no summary.json")

    header, rows = read_csv(out / "sweep.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5", "6", "7", "9", "10"]
    assert header[:2] == ["job", "overrides"]
    assert {"choice/mechanism", "choice/clipping", "choice/experiment"} <= set(header)
    assert not any(h.startswith("choice/hydra/") for h in header)
    config_cols = [
        "config/seed",
        "config/rounds",
        "config/name",
        "config/mechanism.noise_multiplier",
    ]
    assert set(config_cols) <= set(header)
    assert set(summary_of(1.0, 0.5, 0)) <= set(header)  # every summary key, as it is

    first = rows[0]
    assert first["overrides"] == "mechanism=gaussian mechanism.noise_multiplier=0.5 seed=0"
    assert first["choice/mechanism"] == "gaussian"
    assert first["choice/experiment"] == ""
    assert (first["config/seed"], first["config/rounds"], first["config/name"]) == (
        "0",
        "5",
        "default",
    )
    assert float(first["config/mechanism.noise_multiplier"]) == 0.5
    assert float(first["privacy/epsilon"]) == 40.0
    assert float(first["final/eval_accuracy"]) == pytest.approx(0.85)
    nodp = rows[-1]
    assert (nodp["choice/mechanism"], nodp["privacy/epsilon"]) == ("none", "")

    table = pq.read_table(out / "sweep.parquet")
    assert table.column_names == header
    assert table.num_rows == len(rows)
    assert table.column("job").to_pylist() == [r["job"] for r in rows]
    assert table.column("privacy/epsilon").to_pylist()[-2:] == [None, None]
    assert table.column("config/seed").to_pylist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 1]

    png = (out / "privacy_utility.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_out_defaults_to_sweep_dir_and_runs_without_pyarrow(sweep: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "no_pyarrow" / "pyarrow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('pyarrow blocked by the test')\n")
    result = run_script(sweep, env={**os.environ, "PYTHONPATH": str(blocker.parent)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["parquet"] is None
    assert summary["csv"] == str(sweep / "sweep.csv")
    assert not (sweep / "sweep.parquet").exists()
    assert (sweep / "privacy_utility.png").read_bytes().startswith(PNG_MAGIC)
    assert "pyarrow is not importable" in result.stderr


def test_nested_subdirs_are_found_in_natural_order(tmp_path: Path) -> None:
    root = tmp_path / "nested"
    for seed in (10, 2):
        write_grid_job(root / "mechanism=tree" / f"seed={seed}", "tree", seed, 2.0, done=True)
    result = run_script(root, "--x", "config/mechanism.noise_multiplier", "--by", "config/seed")
    assert result.returncode == 0, result.stderr
    _, rows = read_csv(root / "sweep.csv")
    assert [r["job"] for r in rows] == ["mechanism=tree/seed=2", "mechanism=tree/seed=10"]


def test_bad_x_column_names_similar_columns(sweep: Path, tmp_path: Path) -> None:
    result = run_script(sweep, "--out", tmp_path / "o", "--x", "privacy/eps")
    assert result.returncode != 0
    (error,) = [ln for ln in result.stderr.splitlines() if "error" in ln]
    assert "--x column 'privacy/eps'" in error
    assert "privacy/epsilon" in error
    assert not (tmp_path / "o").exists()


def test_non_numeric_y_is_an_error(sweep: Path, tmp_path: Path) -> None:
    result = run_script(sweep, "--out", tmp_path / "o", "--y", "model_sha256")
    assert result.returncode != 0
    assert "column 'model_sha256' is not numeric" in result.stderr


def test_sweep_without_any_summary_fails(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    write_grid_job(root / "0", "tree", 0, 2.0, done=False)
    result = run_script(root)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"collect_sweep: error: none of the 1 jobs under {root} has a summary.json"
    )


def test_missing_sweep_dir_fails(tmp_path: Path) -> None:
    result = run_script(tmp_path / "nope")
    assert result.returncode != 0
    assert (
        result.stderr.strip() == f"collect_sweep: error: sweep dir not found: {tmp_path / 'nope'}"
    )


def test_series_mean_min_max_sorted_and_no_dp_kept(sweep: Path) -> None:
    module = load_script(SCRIPT)
    rows, failed = module.collect(sweep, module.find_jobs(sweep))
    assert [f.name for f in failed] == [FAILED_JOB]
    series = {
        s.group: s
        for s in module.build_series(
            rows, "privacy/epsilon", "final/eval_accuracy", "choice/mechanism"
        )
    }
    assert set(series) == {"gaussian", "tree", "none"}
    gaussian = series["gaussian"]
    assert [x for x, _ in gaussian.points] == [2.0, 40.0]  # sorted by epsilon
    low_noise = dict(gaussian.points)[40.0]  # seeds 0 and 1 at noise 0.5
    assert low_noise.count == 2
    assert low_noise.mean == pytest.approx(accuracy("gaussian", 0, 0.5) + 0.005)
    assert (low_noise.low, low_noise.high) == pytest.approx(
        (accuracy("gaussian", 0, 0.5), accuracy("gaussian", 1, 0.5))
    )
    assert series["none"].points == ()
    ((label, stat),) = series["none"].references
    assert label == "no DP"
    assert (stat.count, stat.mean) == (2, pytest.approx(0.955))
