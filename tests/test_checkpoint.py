"""Checkpoints and resume: a run killed at any round resumes to the very same model."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from engine.app.build import as_dict
from engine.app.checkpoint import FILE_NAME, Checkpoint, differences, load, run_defining, save
from engine.app.run import checkpoint_to_resume, with_resume
from engine.app.runner import RunStoppedError
from engine.plan import CLUSTER_SPEED_ONLY, Cluster
from engine.runtime import LocalBackend, Simulation
from tests.conftest import compose_config, metrics_rows, run_composed

SMOKE = ("experiment=smoke", "rounds=6", "checkpoint.every=2", "eval.every=2")
# Everything with state: BLT's noise buffers, adaptive clipping's norm, FedAdam's moments, the
# min-separation ledger, a diurnal clock, and the server's largest canary cosines.
PRIVATE = (
    "mechanism=blt",
    "mechanism.noise_multiplier=2",  # epsilon's accounting takes seconds below 1
    "clipping=adaptive",
    "aggregation.weighting=uniform",
    "strategy=fedadam",
    "participation=min_separation",
    "participation.min_separation=2",
    "availability=diurnal",
    "tracking.participation_log=true",
    "audit=canaries",
    "audit.num_canaries=20",
)
# Distributed DP: the clients' shares and the modular sums must resume to the same model too.
DISTRIBUTED = (
    "mechanism=ddp_skellam",
    "mechanism.noise_multiplier=2",
    "mechanism.bits=20",
    "strategy=fedadam",
    "participation=min_separation",
    "participation.min_separation=2",
)


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


def _run(out: Path, *overrides: str, resume: bool = False, on_ray: bool = False) -> dict[str, Any]:
    """A SMOKE run with `overrides`: in this process, or on the session's Ray if `on_ray`."""
    backend = None if on_ray else LocalBackend()
    return run_composed(out, *SMOKE, *overrides, backend=backend, resume=resume)


def _kill_at(monkeypatch: pytest.MonkeyPatch, round_idx: int) -> None:
    original = Simulation.run_round

    def run_round(self: Simulation, r: int) -> dict[str, float]:
        if r == round_idx:
            raise Killed
        return original(self, r)

    monkeypatch.setattr(Simulation, "run_round", run_round)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """The summary of the uninterrupted run of some overrides (each run once, in this process)."""
    summaries: dict[tuple[str, ...], dict[str, Any]] = {}

    def summary(*overrides: str) -> dict[str, Any]:
        if overrides not in summaries:
            summaries[overrides] = _run(tmp_path_factory.mktemp("whole"), *overrides)
        return summaries[overrides]

    return summary


@pytest.mark.parametrize(
    ("overrides", "kill_at", "moved"),
    [
        ((), 3, ()),
        (PRIVATE, 5, ()),
        (PRIVATE, 2, ()),
        (PRIVATE, 3, ("cluster.num_workers=1",)),
        (DISTRIBUTED, 3, ()),
    ],
)
def test_a_killed_run_resumes_to_the_same_model(
    request, tmp_path, monkeypatch, uninterrupted, overrides, kill_at, moved
):
    # Moved: killed on the session's Ray with a worker per CPU, resumed there on one worker.
    if moved:
        request.getfixturevalue("ray_session")
    whole = uninterrupted(*overrides)
    out = tmp_path / "killed"
    with monkeypatch.context() as patch:
        _kill_at(patch, kill_at)
        with pytest.raises(Killed):
            _run(out, *overrides, on_ray=bool(moved))
    checkpoint = load(out)
    assert checkpoint is not None and checkpoint.rounds_done == kill_at - kill_at % 2
    resumed = _run(out, *overrides, *moved, resume=True, on_ray=bool(moved))
    assert resumed["model_sha256"] == whole["model_sha256"]
    assert [row["round"] for row in metrics_rows(out)] == list(range(6))  # none lost or doubled
    for key in ("final/eval_loss", "participation/clients_seen", "system/sim_time_h"):
        if moved and key == "final/eval_loss":  # held-out clients are split over the workers
            assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
        else:
            assert resumed[key] == whole[key], key
    audit = [key for key in whole if key.startswith("audit/")]
    assert bool(audit) == (overrides is PRIVATE)
    assert {key: resumed[key] for key in audit} == {key: whole[key] for key in audit}
    if overrides:  # privacy recomputed from the resumed ledger: the uninterrupted figures
        assert resumed["privacy/epsilon"] == whole["privacy/epsilon"]
        assert resumed["participation/observed_min_separation"] >= 2


@pytest.mark.usefixtures("ray_session")
def test_server_death_stops_the_run_naming_the_last_checkpoint(tmp_path, monkeypatch):
    original = Simulation.run_round

    def run_round(self: Simulation, r: int) -> dict[str, float]:
        if r == 3:
            import ray

            ray.kill(self._server)
        return original(self, r)

    monkeypatch.setattr(Simulation, "run_round", run_round)
    with pytest.raises(RunStoppedError) as info:
        _run(tmp_path, "cluster.num_workers=1", on_ray=True)  # one worker: fewer actors to start
    message = str(info.value)
    assert "parameter server died in round 3" in message
    assert f"{tmp_path / FILE_NAME}" in message and "after round 1" in message
    assert f"fedray resume={tmp_path}" in message and "\n" not in message


def test_checkpoint_is_written_atomically_and_read_back(tmp_path):
    checkpoint = Checkpoint(3, {"seed": 0}, {"params": 1}, {"now_s": 2.0}, [{"round": 0}], {}, {})
    path = save(checkpoint, tmp_path)
    assert path == tmp_path / FILE_NAME and not list(tmp_path.glob("*.tmp"))
    assert load(tmp_path) == checkpoint
    assert load(tmp_path / "nowhere") is None
    path.write_bytes(pickle.dumps({"format": 0}))
    with pytest.raises(ValueError, match="not a fedray checkpoint"):
        load(tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a fedray checkpoint"):
        load(tmp_path)


def test_run_defining_config_leaves_out_where_it_runs_and_logs():
    cluster = {"num_workers": 4, "num_cpus": 8, "address": "auto", "chunk_size": 5}
    config = {"seed": 1, "tracking": {"mode": "offline"}, "cluster": cluster, "resume": "x"}
    assert run_defining(config) == {"seed": 1, "cluster": {"chunk_size": 5}}
    saved = {"seed": 1, "mechanism": {"noise_multiplier": 1.0, "seed": 0}, "rounds": 5}
    current = {"seed": 1, "mechanism": {"noise_multiplier": 2.0, "seed": 0}, "name": "x"}
    assert differences(saved, current) == ["mechanism.noise_multiplier", "name", "rounds"]


# -- bad resume directories --------------------------------------------------------------------


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match=r"^resume: .*not a fedray output directory"):
        with_resume([f"resume={tmp_path}"])


def test_resume_reuses_the_runs_overrides_and_refuses_contradictions(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- experiment=smoke\n- rounds=6\n")
    args = with_resume([f"resume={tmp_path}", "rounds=6", "tracking.mode=disabled"])
    assert args == [
        "experiment=smoke",
        "rounds=6",
        "tracking.mode=disabled",
        f"resume={tmp_path}",
        f"hydra.run.dir={tmp_path}",
    ]
    with pytest.raises(ConfigError, match=r"was run with rounds=6; it cannot resume as rounds=9"):
        with_resume([f"resume={tmp_path}", "rounds=9"])


def test_resume_of_a_different_config_names_the_keys(tmp_path):
    config = as_dict(compose_config(*SMOKE))
    save(Checkpoint(2, run_defining(config), {}, {}, [], {}, {}), tmp_path)
    other = as_dict(compose_config(*SMOKE, "rounds=7", "training.lr=0.5"))
    with pytest.raises(ConfigError, match=r"different config \(rounds, training.lr differ\)"):
        checkpoint_to_resume(str(tmp_path), other)
    # Where it runs and where it logs may change.
    moved = as_dict(compose_config(*SMOKE, "cluster.num_workers=1", "tracking.mode=offline"))
    assert checkpoint_to_resume(str(tmp_path), moved) is not None
    with pytest.raises(ConfigError, match=rf"no {FILE_NAME}"):
        checkpoint_to_resume(str(tmp_path / "empty"), config)


def test_the_speed_only_cluster_settings_are_cluster_settings():
    names = [field.name for field in dataclasses.fields(Cluster)]
    assert set(CLUSTER_SPEED_ONLY) < set(names)
    defining = run_defining({"cluster": {name: None for name in names}})["cluster"]
    assert sorted(defining) == ["chunk_size", "gpus_per_worker", "reduce_per_node", "server_gpu"]


def _resumable(directory: Path, *overrides: str) -> None:
    """A run directory of SMOKE + `overrides` with a checkpoint (of no state) after round 2."""
    (directory / ".hydra").mkdir(parents=True)
    lines = "".join(f"- {override}\n" for override in (*SMOKE, *overrides))
    (directory / ".hydra" / "overrides.yaml").write_text(lines)
    config = as_dict(compose_config(*SMOKE, *overrides))
    save(Checkpoint(2, run_defining(config), {}, {}, [], {}, {}), directory)


@pytest.mark.parametrize(
    "change",
    ["cluster.chunk_size=7", "cluster.reduce_per_node=true", "cluster.server_gpu=true"],
)
def test_resume_refuses_a_cluster_setting_that_changes_results(tmp_path, change):
    _resumable(tmp_path)  # made with the default chunk size
    key = change.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^resume: .* different config \({key} differ\)$"):
        with_resume([f"resume={tmp_path}", change])


def test_resume_may_change_the_speed_only_cluster_settings_and_tracking(tmp_path):
    _resumable(tmp_path, "cluster.num_workers=2", "tracking.mode=offline")
    args = with_resume(
        [
            f"resume={tmp_path}",
            "cluster.num_workers=1",
            "cluster.num_cpus=1",
            "tracking.mode=disabled",
        ]
    )
    assert args == [
        *SMOKE,
        "cluster.num_workers=1",
        "cluster.num_cpus=1",
        "tracking.mode=disabled",
        f"resume={tmp_path}",
        f"hydra.run.dir={tmp_path}",
    ]
    with pytest.raises(ConfigError, match=r"was run with rounds=6; it cannot resume as rounds=7"):
        with_resume([f"resume={tmp_path}", "rounds=7"])


@pytest.mark.slow
def test_a_refused_resume_fails_in_one_line_and_leaves_the_run_as_it_was(tmp_path):
    _resumable(tmp_path)
    before = (tmp_path / ".hydra" / "overrides.yaml").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "engine.app.run", f"resume={tmp_path}", "cluster.chunk_size=7"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()  # before Ray (and Hydra) started
    expected = f"fedray: error: resume: {tmp_path} is a run of a different config"
    assert line == f"{expected} (cluster.chunk_size differ)"
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == before  # resumable as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", FILE_NAME]
