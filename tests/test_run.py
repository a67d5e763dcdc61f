"""The `fedray` command: config validation before Ray starts, and a whole run's outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ConfigError
from engine.app.build import build_experiment
from engine.app.run import check_command_line
from engine.app.runner import run_experiment
from engine.runtime import LocalBackend
from tests.conftest import compose_config

FEDRAY = str(Path(sys.executable).with_name("fedray"))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("population.num_clints=5", "population.num_clints"),
        ("rounds=-1", "rounds"),
        ("participation.cohort_size=2000000", "participation.cohort_size"),
        ("rounds=abc", "rounds"),
        ("training.lr=0", "training.lr"),
        ("eval.every=-2", "eval.every"),
        ("tracking.mode=loud", "tracking.mode"),
        ("aggregation.weighting=median", "aggregation.weighting"),
        ("cluster.num_workers=0", "cluster.num_workers"),
        ("population=nope", "population: no option 'nope'"),
        ("clock.over_selection=0.5", "clock.over_selection"),
        ("clock.dropout_prob=1", "clock.dropout_prob"),
        ("availability.num_clients=5", "availability.num_clients"),  # injected, not configurable
        ("participation.num_grups=3", "participation.num_grups"),  # every policy has num_groups
        ("participation=cyclic participation.num_groups=0", "participation.num_groups"),
        ("participation=cyclic participation.num_groups=100000", "participation.cohort_size"),
        ("availability=diurnal availability.window_hours=30", "availability.window_hours"),
        ("devices.median_mbps=0", "devices.median_mbps"),
        # smoke sets population.num_clients, which a file-backed population does not have
        ("experiment=smoke population=leaf population.path=x.json", "population.num_clients"),
        ("population=leaf population.path=/no/such.json", "population.path"),
    ],
)
def test_invalid_override_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        check_command_line(override.split())
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_valid_command_lines_pass():
    check_command_line([])
    check_command_line(["experiment=smoke", "seed=3"])
    check_command_line(["-m", "seed=1,2", "rounds=range(1,3)", "hydra/launcher=basic"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("population.num_clints=5", "population.num_clints"),
        ("rounds=-1", "rounds"),
        ("participation.cohort_size=2000000", "participation.cohort_size"),
    ],
)
def test_cli_exits_before_ray_with_one_line(tmp_path, override, key):
    result = _run(FEDRAY, override, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("fedray: error:")
    assert result.stdout == ""
    assert not (tmp_path / "outputs").exists()


def test_module_entry_point_runs_and_prints_summary_last(tmp_path, join_session_ray):
    out = tmp_path / "run"
    result = _run(
        sys.executable,
        "-m",
        "engine.app.run",
        "experiment=smoke",
        "tracking.mode=offline",
        f"hydra.run.dir={out}",
        *join_session_ray,
        "cluster.num_workers=1",  # one actor fewer to start
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out / "summary.json")
    assert list((out / "wandb").glob("offline-run-*"))


def test_run_writes_metrics_and_summary(tmp_path):
    cfg = compose_config("experiment=smoke", "eval.every=2", "rounds=5")
    experiment, tracking = build_experiment(cfg)
    path = run_experiment(
        experiment, tracking, tmp_path, {"rounds": 5}, "abc", backend=LocalBackend()
    )
    assert path == tmp_path / "summary.json"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == list(range(5))
    evaluated = [row["round"] for row in rows if "eval/accuracy" in row]
    assert evaluated == [1, 3, 4]
    for row in rows:
        for key in ("train/loss", "participation/reported", "system/round_s"):
            assert key in row
        assert row["system/client_updates_per_s"] > 0
    summary = json.loads(path.read_text())
    assert summary["rounds_completed"] == 5
    assert summary["final/eval_accuracy"] == rows[-1]["eval/accuracy"]
    assert 0 < summary["final/majority_class_rate"] <= 1
    assert summary["config_sha256"] == "abc"
    assert len(summary["model_sha256"]) == 64
    for key in ("final/eval_loss", "system/total_s", "system/client_updates_per_s"):
        assert summary[key] > 0


def test_a_policy_that_runs_out_of_clients_is_refused_before_training():
    with pytest.raises(ConfigError) as err:
        check_command_line(
            ["population=digits_dirichlet", "participation=max_participations", "rounds=100"]
        )
    assert err.value.key == "participation.max_participations"
    assert "100 rounds need at least 8000 contributions" in str(err.value)


def test_a_run_planned_above_the_target_epsilon_refuses_to_start():
    with pytest.raises(ConfigError) as err:
        check_command_line(
            [
                "mechanism=gaussian",
                "clipping=fixed",
                "aggregation.weighting=uniform",
                "privacy.target_epsilon=1",
            ]
        )
    assert err.value.key == "mechanism.noise_multiplier"
    message = str(err.value)
    assert "planned epsilon" in message and "noise_multiplier >= " in message


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["mechanism=gaussian", "clipping=none"], "clipping"),
        (["mechanism=gaussian", "aggregation.weighting=examples"], "aggregation.weighting"),
        (
            ["clipping=adaptive", "clipping.count_noise_std=0"],
            "clipping.count_noise_std",
        ),
        (["mechanism=tree", "mechanism.noise_multiplier=0"], "mechanism.noise_multiplier"),
        (["mechanism=blt", "mechanism.rounds=5"], "mechanism.rounds"),  # the run prepares it
        (["privacy.delta=1"], "privacy.delta"),
        (["privacy.target_epsilon=4"], "privacy.target_epsilon"),  # no noise: no guarantee
        (
            [
                "mechanism=gaussian",
                "mechanism.noise_multiplier=10",
                "clipping=adaptive",
                "clipping.count_noise_std=1",
                "aggregation.weighting=uniform",
            ],
            "clipping.count_noise_std",
        ),
    ],
)
def test_privacy_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        check_command_line(overrides)
    assert err.value.key == key


@pytest.mark.parametrize("mechanism", ["gaussian", "tree", "banded_mf", "blt"])
def test_a_private_mechanism_turns_on_fixed_clipping_with_uniform_weights(mechanism):
    cfg = compose_config(f"mechanism={mechanism}")
    assert cfg.clipping._target_ == "mechanisms.clipping.FixedClipping"
    assert cfg.aggregation.weighting == "uniform"
    check_command_line([f"mechanism={mechanism}"])  # and it is a valid run
    adaptive = compose_config(f"mechanism={mechanism}", "clipping=adaptive")  # the command wins
    assert adaptive.clipping._target_ == "mechanisms.clipping.AdaptiveClipping"
    assert adaptive.aggregation.weighting == "uniform"
