"""Multi-node: per-node hierarchical reduction on a real multi-node Ray cluster.

`ray.cluster_utils.Cluster` runs three raylets on this machine, each a distinct Ray node. The test
session's Ray instance lives in this process, so the cluster and its driver run in a subprocess
(`tests/multinode_job.py`), under its own RAY_TMPDIR; every process that carries it is killed
afterwards, whatever happened.

Per-node reduction sums the same updates, but not in the same float32 order as the server's
chunk-by-chunk reduction: each node's reducer sums its workers' chunks, and the server then sums
one total per node, in the order of the nodes' first workers. SPREAD placement interleaves nodes
(e.g. workers on nodes A, B, C, B), so node B's total even holds chunks 3-4 and 7-8 before C's
chunks 5-6 are added. The weights therefore match the one-node run only to float tolerance; they
match bit for bit the same reduction tree evaluated on one node.
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
from typing import Any

import numpy as np
import psutil
import pytest
import ray

from engine.runtime import LocalBackend, Simulation
from engine.runtime.placement import NodeReducer
from engine.runtime.simulation import initial_weights
from tests.conftest import smoke_experiment
from tests.multinode_job import COHORT_SIZE, NUM_WORKERS, ROUNDS, overrides
from tests.processes import kill_all, processes_of

ROOT = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 180


pytestmark = [pytest.mark.multinode, pytest.mark.slow]


def _final_weights(node_of_worker: list[str] | None = None) -> np.ndarray:
    """The experiment's final weights on one node.

    Without `node_of_worker`, in this process (a `LocalBackend`: the server sums every chunk).
    With it, on the session's Ray, where worker i's partials are first summed by an (unpinned)
    `NodeReducer` of the label node_of_worker[i], exactly as `Simulation` groups them on a
    multi-node cluster.
    """
    backend = LocalBackend() if node_of_worker is None else None
    with Simulation(smoke_experiment(*overrides()), backend=backend) as sim:
        if node_of_worker is not None:
            reducer: Any = ray.remote(num_cpus=0)(NodeReducer)
            sim._worker_nodes = list(node_of_worker)
            sim._reducers = {
                node: reducer.remote(sim.experiment.aggregation, sim.num_params)
                for node in dict.fromkeys(node_of_worker)
            }
        for round_idx in range(ROUNDS):
            sim.run_round(round_idx)
        return sim.weights()


def _run_job() -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[psutil.Process]]:
    """Runs the multi-node job; meanwhile, the one-node run without per-node reduction.

    Returns:
        The job's JSON line, its final weights, the one-node weights, and the job's processes
        still alive 20 s after it exited (a leak).
    """
    # Short: Ray's socket paths under it must fit in 107 bytes.
    ray_tmpdir = tempfile.mkdtemp(prefix="fedray-mn-")
    out, err = Path(ray_tmpdir, "stdout"), Path(ray_tmpdir, "stderr")
    try:
        with out.open("wb") as stdout, err.open("wb") as stderr:
            job = subprocess.Popen(
                [sys.executable, "-m", "tests.multinode_job", ray_tmpdir],
                cwd=ROOT,
                env={**os.environ, "RAY_TMPDIR": ray_tmpdir},
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            one_node = _final_weights()
            job.wait(timeout=JOB_TIMEOUT_S)
            deadline = time.monotonic() + 20  # Ray workers exit a few seconds after their raylet
            while (leaked := processes_of(ray_tmpdir)) and time.monotonic() < deadline:
                time.sleep(0.2)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the multi-node job ran over {JOB_TIMEOUT_S} s:\n{_tail(err)}")
        finally:
            kill_all(job, ray_tmpdir)
        lines = [line for line in out.read_text().splitlines() if line.startswith("{")]
        if job.returncode != 0 or not lines:
            pytest.fail(f"the multi-node job failed ({job.returncode}):\n{_tail(err)}")
        result = json.loads(lines[-1])
        if "skip" in result:
            pytest.skip(result["skip"])
        weights = np.load(Path(ray_tmpdir, "per_node.npy"))
        return result, weights, one_node, leaked
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.usefixtures("ray_session")
def test_multinode_per_node_reduction_one_reducer_per_node():
    result, weights, one_node, leaked = _run_job()
    assert not leaked, f"Ray processes outlived the multi-node job: {leaked}"

    nodes = result["worker_nodes"]
    distinct = list(dict.fromkeys(nodes))
    assert len(nodes) == NUM_WORKERS
    assert len(result["cluster_nodes"]) == 3
    assert set(nodes) <= set(result["cluster_nodes"])
    assert len(distinct) >= 2, f"the workers did not spread over nodes: {nodes}"
    # One reducer per node with workers, running on that node, and the server received one
    # partial per node in every round (not one per chunk).
    assert result["num_reducers"] == len(distinct)
    assert result["reducer_keys"] == distinct
    assert result["reducer_nodes"] == distinct
    assert result["partials"] == [len(distinct)] * ROUNDS
    # Every round aggregated exactly its cohort.
    assert result["cohort"] == [COHORT_SIZE] * ROUNDS
    assert result["clients_aggregated"] == result["cohort"]

    # Per-node sums reassociate float32 additions (see the module docstring): equal to the
    # one-node, server-reduced run up to rounding, and bit for bit to the same reduction tree
    # on one node, so that nothing else differs across nodes.
    assert not np.array_equal(weights, initial_weights(smoke_experiment(*overrides())))
    np.testing.assert_allclose(weights, one_node, rtol=1e-5, atol=1e-6)
    assert np.array_equal(weights, _final_weights(nodes))
