"""`fedray` SIGKILLed at a random round, then `fedray resume=DIR`: the uninterrupted model.

Each run is a real `fedray` process with its own Ray (under its own RAY_TMPDIR, so the test
session's Ray is untouched); the kill takes the whole process group, mid-round, with no chance
to clean up: the checkpoint on disk is all the resumed run has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from engine.checkpoint import FILE_NAME
from engine.experiment import as_dict, build_experiment
from engine.runner import run_experiment
from tests.conftest import compose_config
from tests.processes import kill_all

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 8
ARGS = (
    "experiment=smoke",
    f"rounds={ROUNDS}",
    "checkpoint.every=1",
    "eval.every=4",
    "cluster.num_cpus=2",
    "tracking.participation_log=true",
    "mechanism=tree",  # stored noise that must survive the kill
    "mechanism.noise_multiplier=0.3",
)
TIMEOUT_S = 120


def _fedray(out: Path, ray_tmpdir: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.run", *args, f"hydra.run.dir={out}"],
        cwd=ROOT,
        env={**os.environ, "RAY_TMPDIR": ray_tmpdir, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=(out.parent / f"{out.name}.err").open("wb"),
        start_new_session=True,
    )


def _finish(job: subprocess.Popen[bytes], out: Path, ray_tmpdir: str) -> dict:
    try:
        assert job.wait(timeout=TIMEOUT_S) == 0, (out.parent / f"{out.name}.err").read_text()
    finally:
        kill_all(job, ray_tmpdir)
    return json.loads((out / "summary.json").read_text())


def _uninterrupted(out: Path) -> dict:
    cfg = compose_config(*ARGS)
    experiment, tracking = build_experiment(cfg)
    return json.loads(run_experiment(experiment, tracking, out, as_dict(cfg), "").read_text())


def _rounds_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.usefixtures("ray_session")
def test_a_sigkilled_run_resumes_to_the_uninterrupted_model(tmp_path):
    kill_after = int(np.random.default_rng().integers(1, ROUNDS - 1))  # rounds logged at the kill
    ray_tmpdir = tempfile.mkdtemp(prefix="fedray-kr-")  # short: Ray's socket paths must fit
    try:
        out = tmp_path / "killed"
        job = _fedray(out, ray_tmpdir, *ARGS)
        deadline = time.monotonic() + TIMEOUT_S
        # (Killed before its first checkpoint, a run has nothing to resume from.)
        while (_rounds_logged(out) < kill_after or not (out / FILE_NAME).is_file()) and (
            job.poll() is None
        ):
            assert time.monotonic() < deadline, "the run never reached the round to kill it at"
            time.sleep(0.05)
        kill_all(job, ray_tmpdir)
        assert job.returncode != 0, "the run finished before it could be killed"
        resumer = _fedray(out, ray_tmpdir, f"resume={out}")
        whole = _uninterrupted(tmp_path / "whole")  # meanwhile, in the test session's Ray
        resumed = _finish(resumer, out, ray_tmpdir)
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert resumed["model_sha256"] == whole["model_sha256"], f"killed after {kill_after} rounds"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == list(range(ROUNDS))
    assert resumed["privacy/epsilon"] == whole["privacy/epsilon"]
    assert resumed["participation/clients_seen"] == whole["participation/clients_seen"]


@pytest.mark.parametrize("bad", ["resume=/nonexistent/run", "rounds=3"])
def test_resume_errors_are_one_line(tmp_path, bad):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- experiment=smoke\n- rounds=5\n")
    args = [bad] if bad.startswith("resume=") else [f"resume={tmp_path}", bad]
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("fedray: error: resume: ")
