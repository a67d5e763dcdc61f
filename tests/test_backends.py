"""The in-process backend runs the round as Ray's actors do, to the same results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.app.build import as_dict, build_experiment
from engine.app.runner import run_experiment
from engine.plan import Tracking
from engine.runtime import LocalBackend, Simulation
from tests.conftest import compose_config, smoke_experiment

PRIVATE = ("experiment=smoke", "mechanism=blt", "clipping=adaptive", "strategy=fedadam")


def _run(out: Path, backend: LocalBackend | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = compose_config(*PRIVATE)
    experiment, _ = build_experiment(cfg)
    tracking = Tracking(mode="disabled", progress=False)
    path = run_experiment(experiment, tracking, out, as_dict(cfg), "sha", backend=backend)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), rows


@pytest.mark.usefixtures("ray_session")
def test_the_local_backend_releases_what_ray_releases(tmp_path):
    (ray_summary, ray_rows), (local_summary, local_rows) = (
        _run(tmp_path / "ray", None),
        _run(tmp_path / "local", LocalBackend()),
    )
    assert local_summary["model_sha256"] == ray_summary["model_sha256"]
    # Timings differ; so does evaluation, by float rounding: its held-out clients are split
    # over the workers (one here, two there).
    for mine, theirs in zip(local_rows, ray_rows, strict=True):
        assert mine.keys() == theirs.keys()
        same = {k for k in mine if not k.startswith(("system/", "eval/")) or "sim_" in k}
        assert {k: mine[k] for k in same} == {k: theirs[k] for k in same}


def test_a_local_call_raises_where_its_result_is_read():
    backend = LocalBackend()
    with Simulation(smoke_experiment("mechanism=gaussian"), backend=backend) as sim:
        ref = sim.pool.server.apply.remote(5, [])  # round 5 before round 0: the noise refuses
        with pytest.raises(ValueError, match="in order"):
            backend.get(ref)


def test_the_local_backend_refuses_worker_crashes():
    with pytest.raises(ValueError, match="cannot survive worker crashes"):
        Simulation(smoke_experiment("faults.worker_crash_prob=0.5"), backend=LocalBackend())
