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

from engine.app.checkpoint import FILE_NAME
from engine.app.run import main
from engine.runtime import LocalBackend
from tests.conftest import metrics_rows, run_composed
from tests.processes import kill_all

pytestmark = pytest.mark.slow  # real `fedray` processes

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5
ARGS = (
    "experiment=smoke",
    f"rounds={ROUNDS}",
    "checkpoint.every=1",
    "eval.every=3",
    "cluster.num_cpus=2",
    "cluster.num_workers=1",  # one actor fewer to start in each process
    "tracking.participation_log=true",
    "mechanism=tree",  # stored noise that must survive the kill
    "mechanism.noise_multiplier=2",  # epsilon's accounting takes seconds below 1
)
TIMEOUT_S = 120


def _fedray(out: Path, ray_tmpdir: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.app.run", *args, f"hydra.run.dir={out}"],
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
    """The run of ARGS, uninterrupted, in this process (no Ray to compete with the resumer's)."""
    return run_composed(out, *ARGS, backend=LocalBackend(), config_sha256="")


def _rounds_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


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
        whole = _uninterrupted(tmp_path / "whole")  # meanwhile
        resumed = _finish(resumer, out, ray_tmpdir)
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert resumed["model_sha256"] == whole["model_sha256"], f"killed after {kill_after} rounds"
    assert [row["round"] for row in metrics_rows(out)] == list(range(ROUNDS))
    assert resumed["privacy/epsilon"] == whole["privacy/epsilon"]
    assert resumed["participation/clients_seen"] == whole["participation/clients_seen"]


@pytest.mark.parametrize("bad", ["resume=/nonexistent/run", "rounds=3"])
def test_resume_errors_are_one_line(tmp_path, monkeypatch, bad):
    # `fedray`'s entry point in this process: the message it exits with is what it prints (a
    # refused resume in a process of its own: test_checkpoint.py).
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- experiment=smoke\n- rounds=5\n")
    args = [bad] if bad.startswith("resume=") else [f"resume={tmp_path}", bad]
    monkeypatch.setattr(sys, "argv", ["fedray", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    (line,) = str(exit_.value.code).splitlines()
    assert line.startswith("fedray: error: resume: ")
