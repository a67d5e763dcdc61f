"""scripts/collect_sweep.py: fake Hydra multirun sweeps collected into tables and plots."""

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
from hypothesis import given
from hypothesis import strategies as st

from reports.sweep import (
    collect,
    find_jobs,
    group_label,
    markdown_table,
    parse_overrides,
    swept_keys,
)
from reports.sweep_plots import (
    DotChart,
    LineChart,
    full_group,
    privacy_utility,
    x_axis_keys,
)
from reports.sweep_rounds import round_series
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "collect_sweep.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPSILON = {("gaussian", 0.5): 40.0, ("gaussian", 2.0): 2.0, ("tree", 0.5): 20.0, ("tree", 2.0): 1.0}
GRID = [(m, s, z) for m in ("gaussian", "tree") for s in (0, 1) for z in (0.5, 2.0)]
# 0-7: the grid; 8 fails (no summary.json); 9, 10: no DP, two seeds. 11 jobs: "10" sorts last.
FAILED_JOB = "8"
# The sweep at one target epsilon: 3 groups x 2 seeds, (participation, mechanism) per group.
GROUPS = (("cyclic_k4", "blt"), ("uniform", "gaussian"), ("cyclic_k2", "tree"))
# Final accuracy by (group, seed), and eval/accuracy at rounds 0, 2, 4 (2 missing for one job).
FINAL = {0: (0.70, 0.74), 1: (0.80, 0.78), 2: (0.60, 0.66)}
ROUNDS = {
    (0, 0): {0: 0.1, 2: 0.4, 4: 0.70},
    (0, 1): {0: 0.2, 2: 0.5, 4: 0.74},
    (1, 0): {0: 0.1, 2: 0.6, 4: 0.80},
    (1, 1): {0: 0.3, 4: 0.78},
    (2, 0): {0: 0.0, 2: 0.3, 4: 0.60},
    (2, 1): {0: 0.1, 2: 0.2, 4: 0.66},
}
SWEPT = ["participation", "mechanism"]
LABELS = [f"participation={p} mechanism={m}" for p, m in GROUPS]


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


def write_target_job(job: Path, group: int, seed: int) -> None:
    """A job of the sweep at target epsilon 8 (noise solved), with its metrics.jsonl."""
    participation, mechanism = GROUPS[group]
    overrides = [
        f"participation={participation}",
        f"+mechanism={mechanism}",
        "mechanism.noise_multiplier=auto",
        "privacy.target_epsilon=8",
        f"seed={seed}",
    ]
    config = {
        "name": "target",
        "seed": seed,
        "rounds": 5,
        "mechanism": {"noise_multiplier": "auto"},
    }
    summary = {
        **summary_of(7.99 + 0.004 * group + 0.002 * seed, FINAL[group][seed], seed),
        "privacy/noise_multiplier": (1.23456, 2.5, 0.75)[group] + 0.0001 * seed,
        "participation/bound_max_participations": (4, None, 2)[group],
        "participation/bound_min_separation": (25, 1, 50)[group],
        "participation/clients_seen": (1000, 100000, 2000)[group] + 2 * seed,
        "participation/mean_participations": (3.5, 1.0, 1.75)[group] + 0.25 * seed,
        "participation/observed_max_participations": (4, 3 + seed, 2)[group],
    }
    write_job(job, overrides, {"mechanism": mechanism}, config, summary)
    metrics = []
    for round_ in range(5):
        row: dict[str, Any] = {"round": round_, "system/sim_time_h": 0.5 * round_}
        if round_ in ROUNDS[group, seed]:
            row |= {"eval/accuracy": ROUNDS[group, seed][round_], "eval/loss": 1.0}
        metrics.append(json.dumps(row))
    (job / "metrics.jsonl").write_text("\n".join(metrics) + '\n{"round": 5, "eval/acc')


@pytest.fixture
def target_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "target"
    for num, (group, seed) in enumerate((g, s) for g in range(3) for s in range(2)):
        write_target_job(root / str(num), group, seed)
    return root


def run_script(*args: str | Path, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Runs the script's main in this process: (exit status, stdout, stderr)."""
    status = load_script(SCRIPT).main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def no_warn(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


# --- the table ---------------------------------------------------------------------------------


def test_collects_table_parquet_and_plots(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "collected"
    status, stdout, stderr = main(capsys, sweep, "--out", out)
    assert status == 0, stderr

    (line,) = stdout.splitlines()
    assert json.loads(line) == {
        "jobs": 10,
        "failed": 1,
        "csv": str(out / "sweep.csv"),
        "parquet": str(out / "sweep.parquet"),
        "png": str(out / "privacy_utility.png"),
        "png_rounds": str(out / "accuracy_by_round.png"),
        "markdown": str(out / "sweep.md"),
        "groups": ["mechanism", "mechanism.noise_multiplier"],
    }
    (failed_line,) = [ln for ln in stderr.splitlines() if "skipped" in ln]
    assert failed_line.startswith(f"collect_sweep: skipped {sweep / FAILED_JOB}: no summary.json")
    assert stderr.count("no metrics.jsonl in job") == 10

    header, rows = read_csv(out / "sweep.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5", "6", "7", "9", "10"]
    assert header[:3] == ["job", "overrides", "group"]
    assert {"override/mechanism", "override/mechanism.noise_multiplier", "override/seed"} <= set(
        header
    )
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
    assert first["group"] == "mechanism=gaussian mechanism.noise_multiplier=0.5"
    assert (first["override/mechanism.noise_multiplier"], first["override/seed"]) == ("0.5", "0")
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
    assert (nodp["group"], nodp["override/mechanism.noise_multiplier"]) == ("mechanism=none", "")

    table = pq.read_table(out / "sweep.parquet")
    assert table.column_names == header
    assert table.num_rows == len(rows)
    assert table.column("job").to_pylist() == [r["job"] for r in rows]
    assert table.column("privacy/epsilon").to_pylist()[-2:] == [None, None]
    assert table.column("config/seed").to_pylist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 1]

    markdown = (out / "sweep.md").read_text().splitlines()
    assert len(markdown) == 2 + 5  # header, rule, 4 grid groups and no DP
    for name in ("privacy_utility.png", "accuracy_by_round.png"):
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_out_defaults_to_sweep_dir_and_runs_without_pyarrow(sweep: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "no_pyarrow" / "pyarrow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('pyarrow blocked by the test')\n")
    result = run_script(sweep, pythonpath=str(blocker.parent))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["parquet"] is None
    assert summary["csv"] == str(sweep / "sweep.csv")
    assert not (sweep / "sweep.parquet").exists()
    assert (sweep / "privacy_utility.png").read_bytes().startswith(PNG_MAGIC)
    assert "pyarrow is not importable" in result.stderr


def test_nested_subdirs_are_found_in_natural_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "nested"
    for seed in (10, 2):
        write_grid_job(root / "mechanism=tree" / f"seed={seed}", "tree", seed, 2.0, done=True)
    x = "config/mechanism.noise_multiplier"
    status, stdout, stderr = main(capsys, root, "--x", x, "--by", "config/seed")
    assert status == 0, stderr
    _, rows = read_csv(root / "sweep.csv")
    assert [r["job"] for r in rows] == ["mechanism=tree/seed=2", "mechanism=tree/seed=10"]
    assert [r["group"] for r in rows] == ["(all)", "(all)"]  # only the seed varies
    assert json.loads(stdout)["groups"] == []
    markdown = (root / "sweep.md").read_text().splitlines()
    assert [ln.split(" | ")[0] for ln in markdown] == ["| config/seed", "| ---", "| 2", "| 10"]


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        (
            "--x",
            "privacy/eps",
            "--x column 'privacy/eps' is not in the table; columns starting "
            "with 'privacy/': privacy/delta, privacy/epsilon, privacy/epsilon_observed",
        ),
        ("--by", "choice/mech", "--by column 'choice/mech' is not in the table"),
        ("--y", "model_sha256", "column 'model_sha256' is not numeric"),
    ],
)
def test_bad_columns_fail_before_writing(
    sweep: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    error: str,
) -> None:
    status, stdout, stderr = main(capsys, sweep, "--out", tmp_path / "o", option, value)
    assert (status, stdout) == (1, "")
    assert stderr.splitlines()[-1].startswith(f"collect_sweep: error: {error}")
    assert not (tmp_path / "o").exists()


def test_sweep_without_any_summary_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "empty"
    write_grid_job(root / "0", "tree", 0, 2.0, done=False)
    status, stdout, stderr = main(capsys, root)
    assert (status, stdout) == (1, "")
    assert stderr.splitlines()[-1] == (
        f"collect_sweep: error: none of the 1 jobs under {root} has a summary.json"
    )


def test_missing_sweep_dir_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, stderr = main(capsys, tmp_path / "nope")
    assert status == 1
    assert stderr.strip() == f"collect_sweep: error: sweep dir not found: {tmp_path / 'nope'}"


# --- what was swept ----------------------------------------------------------------------------


def test_swept_keys_leave_out_seed_hydra_and_constant_overrides() -> None:
    overrides = [
        ["+participation=cyclic", "rounds=5", "seed=0", "hydra.job.chdir=true", "~foo"],
        ["participation=uniform", "rounds=5", "seed=1", "hydra.job.chdir=false", "~foo"],
        ["++participation=uniform", "rounds=5", "seed=2", "mechanism=blt", "~foo"],
    ]
    rows = [parse_overrides(o) for o in overrides]
    assert rows[0] == {
        "override/participation": "cyclic",
        "override/rounds": 5,
        "override/seed": 0,
        "override/foo": "~",
    }
    assert swept_keys(rows) == ["participation", "mechanism"]  # absent in some: swept
    assert [group_label(r, swept_keys(rows)) for r in rows] == [
        "participation=cyclic",
        "participation=uniform",
        "participation=uniform mechanism=blt",
    ]
    assert group_label(rows[0], ["mechanism"]) == "(defaults)"
    seeds_only = [parse_overrides([f"seed={s}", "rounds=5"]) for s in range(3)]
    assert swept_keys(seeds_only) == []
    assert {group_label(r, []) for r in seeds_only} == {"(all)"}


@given(st.lists(st.dictionaries(st.sampled_from("abcd"), st.sampled_from(["1", "x"])), min_size=1))
def test_group_labels_tell_apart_exactly_the_jobs_whose_swept_overrides_differ(
    jobs: list[dict[str, str]],
) -> None:
    rows = [parse_overrides([f"{k}={v}" for k, v in job.items()] + ["seed=3"]) for job in jobs]
    keys = swept_keys(rows)
    assert "seed" not in keys
    for one in rows:
        for other in rows:
            same = all(one.get(f"override/{k}") == other.get(f"override/{k}") for k in keys)
            assert (group_label(one, keys) == group_label(other, keys)) == same


def test_target_sweep_groups_by_participation_and_mechanism(target_sweep: Path) -> None:
    rows, failed = collect(target_sweep, find_jobs(target_sweep), no_warn)
    assert failed == []
    assert swept_keys(rows) == SWEPT  # auto, target_epsilon and seed: not swept
    assert [r["group"] for r in rows[::2]] == LABELS


# --- the charts --------------------------------------------------------------------------------


def test_sweep_at_one_epsilon_gets_a_dot_chart_ranked_by_mean(target_sweep: Path) -> None:
    rows, _ = collect(target_sweep, find_jobs(target_sweep), no_warn)
    xy = ("privacy/epsilon", "final/eval_accuracy")
    chart = privacy_utility(rows, xy, None, SWEPT, no_warn)
    assert isinstance(chart, DotChart)
    assert chart.x == pytest.approx(7.995)
    assert chart.groups == (  # by mean accuracy: 0.79, 0.72, 0.63
        ("participation=uniform mechanism=gaussian", pytest.approx((0.80, 0.78))),
        ("participation=cyclic_k4 mechanism=blt", pytest.approx((0.70, 0.74))),
        ("participation=cyclic_k2 mechanism=tree", pytest.approx((0.60, 0.66))),
    )
    by_mechanism = privacy_utility(rows, xy, "choice/mechanism", SWEPT, no_warn)
    assert isinstance(by_mechanism, DotChart)
    assert [g for g, _ in by_mechanism.groups] == ["gaussian", "blt", "tree"]
    rows[0]["privacy/epsilon"] = 7.99 * 1.02  # 2% apart: lines
    assert isinstance(privacy_utility(rows, xy, None, SWEPT, no_warn), LineChart)


def test_noise_sweep_gets_lines_by_mechanism_with_no_dp_kept(sweep: Path) -> None:
    warnings: list[str] = []
    rows, failed = collect(sweep, find_jobs(sweep), warnings.append)
    assert [f.name for f in failed] == [FAILED_JOB]
    swept = swept_keys(rows)
    assert x_axis_keys(rows, swept, "privacy/epsilon") == ["mechanism.noise_multiplier"]
    chart = privacy_utility(rows, ("privacy/epsilon", "final/eval_accuracy"), None, swept, print)
    assert isinstance(chart, LineChart)
    assert chart.by == "mechanism"
    series = {s.group: s for s in chart.series}
    assert list(series) == ["mechanism=gaussian", "mechanism=tree", "mechanism=none"]
    gaussian = series["mechanism=gaussian"]
    assert [x for x, _ in gaussian.points] == [2.0, 40.0]  # sorted by epsilon
    low_noise = dict(gaussian.points)[40.0]  # seeds 0 and 1 at noise 0.5
    assert low_noise.count == 2
    assert low_noise.mean == pytest.approx(accuracy("gaussian", 0, 0.5) + 0.005)
    assert (low_noise.low, low_noise.high) == pytest.approx(
        (accuracy("gaussian", 0, 0.5), accuracy("gaussian", 1, 0.5))
    )
    nodp = series["mechanism=none"]
    assert nodp.points == ()
    ((label, stat),) = nodp.references
    assert label == "no DP"
    assert (stat.count, stat.mean) == (2, pytest.approx(0.955))


def test_accuracy_by_round_is_the_mean_min_max_over_seeds(target_sweep: Path) -> None:
    rows, _ = collect(target_sweep, find_jobs(target_sweep), no_warn)
    lines = round_series(target_sweep, rows, "eval/accuracy", full_group(None), no_warn)
    assert [s.group for s in lines] == LABELS
    assert [s.rounds for s in lines] == [(0, 2, 4)] * 3
    got = [[(t.mean, t.low, t.high, t.count) for t in s.stats] for s in lines]
    expected = [  # (mean, min, max, jobs) at rounds 0, 2, 4, by hand from ROUNDS
        [(0.15, 0.1, 0.2, 2), (0.45, 0.4, 0.5, 2), (0.72, 0.70, 0.74, 2)],
        [(0.2, 0.1, 0.3, 2), (0.6, 0.6, 0.6, 1), (0.79, 0.78, 0.80, 2)],
        [(0.05, 0.0, 0.1, 2), (0.25, 0.2, 0.3, 2), (0.63, 0.60, 0.66, 2)],
    ]
    for got_line, expected_line in zip(got, expected, strict=True):
        for got_stat, expected_stat in zip(got_line, expected_line, strict=True):
            assert got_stat == pytest.approx(expected_stat)


# --- the markdown table and the command line ---------------------------------------------------


def test_markdown_table_cells(target_sweep: Path) -> None:
    rows, _ = collect(target_sweep, find_jobs(target_sweep), no_warn)
    del rows[2]["participation/mean_participations"]  # a summary without the key
    for row in rows[4:]:
        del row["privacy/noise_multiplier"]
    lines = markdown_table(rows, full_group(None), "group", "final/eval_accuracy").splitlines()
    assert lines[:2] == [
        "| group | jobs | planned epsilon | noise multiplier | declared k | declared b "
        "| clients seen | participations (mean) | participations (max) "
        "| final/eval_accuracy (mean) | final/eval_accuracy (min, max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    assert lines[2:] == [
        "| participation=cyclic_k4 mechanism=blt | 2 | 7.991 | 1.235 | 4 | 25 | 1001 | 3.625 "
        "| 4 | 0.72 | [0.7, 0.74] |",
        "| participation=uniform mechanism=gaussian | 2 | 7.995 | 2.5 | none | 1 | 100001 | 1.25 "
        "| 4 | 0.79 | [0.78, 0.8] |",
        "| participation=cyclic_k2 mechanism=tree | 2 | 7.999 |  | 2 | 50 | 2001 | 1.875 "
        "| 2 | 0.63 | [0.6, 0.66] |",
    ]


def test_command_line_on_a_sweep_at_one_epsilon(target_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_script(target_sweep, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert json.loads(line) == {
        "jobs": 6,
        "failed": 0,
        "csv": str(out / "sweep.csv"),
        "parquet": str(out / "sweep.parquet"),
        "png": str(out / "privacy_utility.png"),
        "png_rounds": str(out / "accuracy_by_round.png"),
        "markdown": str(out / "sweep.md"),
        "groups": SWEPT,
    }
    for name in ("privacy_utility.png", "accuracy_by_round.png"):
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 1000
    markdown = (out / "sweep.md").read_text().splitlines()
    assert [ln.split(" | ")[:2] for ln in markdown[2:]] == [
        ["| participation=cyclic_k4 mechanism=blt", "2"],
        ["| participation=uniform mechanism=gaussian", "2"],
        ["| participation=cyclic_k2 mechanism=tree", "2"],
    ]
    _, rows = read_csv(out / "sweep.csv")
    assert [r["group"] for r in rows] == [g for g in LABELS for _ in range(2)]


def test_more_sweep_dirs_join_the_table_and_a_central_run_is_the_reference_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bits_sweep, central = tmp_path / "multirun" / "bits", tmp_path / "outputs" / "central"
    for i, bits in enumerate((12, 16, 20)):
        overrides = ["mechanism=ddp_skellam", f"mechanism.bits={bits}"]
        summary = summary_of(2.0 + 1.0 / bits, 0.5 + bits / 100, 0)
        write_job(bits_sweep / str(i), overrides, {"mechanism": "ddp_skellam"}, {}, summary)
    write_job(
        central, ["mechanism=gaussian"], {"mechanism": "gaussian"}, {}, summary_of(2.0, 0.72, 0)
    )
    status, stdout, stderr = main(
        capsys, bits_sweep, central, "--x", "override/mechanism.bits", "--out", tmp_path / "out"
    )
    assert status == 0, stderr
    _, rows = read_csv(tmp_path / "out" / "sweep.csv")
    assert [r["job"] for r in rows] == [
        "multirun/bits/0",
        "multirun/bits/1",
        "multirun/bits/2",
        "outputs/central",
    ]
    groups = [f"mechanism=ddp_skellam mechanism.bits={bits}" for bits in (12, 16, 20)]
    assert [r["group"] for r in rows] == [*groups, "mechanism=gaussian"]
    chart = json.loads(stdout)
    assert chart["jobs"] == 4 and Path(chart["png"]).read_bytes()[:8] == PNG_MAGIC
