"""A sweep is one command: `fedray -m ...` runs every job, `collect_sweep.py` tables them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from hydra.types import RunMode

from engine.app.run import sweep_tracking
from engine.plan import Tracking

ROOT = Path(__file__).resolve().parent.parent


def test_sweep_jobs_share_a_wandb_group_and_are_tagged_with_their_overrides():
    job = SimpleNamespace(
        mode=RunMode.MULTIRUN,
        sweep=SimpleNamespace(dir="multirun/smoke/2026-11-28_03-00-00"),
        overrides=SimpleNamespace(task=["mechanism=tree", "seed=1", "x=" + "y" * 100]),
    )
    tracking, tags = sweep_tracking(Tracking(), "smoke", job)
    assert tracking.group == "smoke-2026-11-28_03-00-00"
    assert tags == ["mechanism=tree", "seed=1", ("x=" + "y" * 100)[:64]]
    assert sweep_tracking(Tracking(group="mine"), "smoke", job)[0].group == "mine"
    single = SimpleNamespace(mode=RunMode.RUN)
    assert sweep_tracking(Tracking(), "smoke", single) == (Tracking(), [])


def test_a_mechanism_by_seed_sweep_runs_four_jobs_into_one_table(tmp_path, join_session_ray):
    sweep = tmp_path / "sweep"
    args = ["experiment=smoke", "mechanism=gaussian,tree", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    # Each job joins the session's Ray, as a cluster's, rather than starting its own; one
    # worker each: fewer actors to start.
    cluster = [*join_session_ray, "cluster.num_workers=1"]
    run = [sys.executable, "-m", "engine.app.run", "-m", *args, *cluster]
    subprocess.run(run, cwd=ROOT, env=env, check=True, timeout=300, capture_output=True)
    collect = [sys.executable, "scripts/collect_sweep.py", str(sweep)]
    proc = subprocess.run(
        collect, cwd=ROOT, check=True, timeout=120, capture_output=True, text=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["jobs"], result["failed"]) == (4, 0)
    with open(result["csv"], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted((r["choice/mechanism"], r["config/seed"]) for r in rows) == [
        ("gaussian", "0"),
        ("gaussian", "1"),
        ("tree", "0"),
        ("tree", "1"),
    ]
    assert all(float(r["privacy/epsilon"]) > 0 for r in rows)
    assert Path(result["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
