"""The multi-node half of `test_multinode.py`, run in its own process (not collected by pytest).

    python -m tests.multinode_job OUT_DIR

Starts a fake Ray cluster on this machine with `ray.cluster_utils.Cluster` (a head node with one
CPU and two nodes with two CPUs: three raylets, three Ray node ids), joins it the engine's way
(`start_ray` of a `cluster=ray` config), runs the small experiment of `overrides()` through
`Simulation` with `cluster.reduce_per_node=true`, saves the final weights to
OUT_DIR/per_node.npy and prints one JSON line: the cluster's node ids, the node id of each
worker's bundle, the node reducers and the nodes they run on, the clients planned, aggregated
and the partials received by the server in each round, and the weights' SHA-256. When the fake
cluster cannot start, the line is {"skip": <why>} instead. Ray and the cluster are shut down
whatever happens.

The test session has its own Ray instance, so this cannot run inside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.cluster_utils import Cluster

from engine.app.runner import start_ray
from engine.runtime import Simulation
from tests.conftest import smoke_experiment

HEAD_CPUS = 1
NODE_CPUS = (2, 2)
COHORT_SIZE = 37
CHUNK_SIZE = 5  # 8 chunks
NUM_WORKERS = 4
ROUNDS = 3


def overrides() -> list[str]:
    """The experiment, as run on the fake cluster and (with cluster=local) on one node."""
    return [
        f"participation.cohort_size={COHORT_SIZE}",
        f"cluster.chunk_size={CHUNK_SIZE}",
        f"cluster.num_workers={NUM_WORKERS}",
        f"rounds={ROUNDS}",
        # The per-client loop: this job tests the reduction tree, and the loop's updates are
        # bit-identical in any process (see the closing note of issue 8 on the batched path).
        "training.vectorise=off",
    ]


def start_cluster() -> Cluster:
    """The fake cluster, every node registered; raises if a node does not come up."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": HEAD_CPUS, "include_dashboard": False},
    )
    try:
        for cpus in NODE_CPUS:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def _node_of(actor: Any) -> str:
    """The id of the node an actor runs on."""
    return str(
        ray.get(actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))
    )


def run(address: str, out: Path) -> dict[str, Any]:
    """Joins the cluster at `address`, runs the experiment with per-node reduction."""
    experiment = smoke_experiment(
        *overrides(), "cluster=ray", f"cluster.address='{address}'", "cluster.reduce_per_node=true"
    )
    start_ray(experiment.cluster)
    cluster_nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    with Simulation(experiment) as sim:
        rounds = [sim.run_round(r) for r in range(ROUNDS)]
        weights = sim.weights()
        reducers = sim._reducers
        result = {
            "cluster_nodes": cluster_nodes,
            "worker_nodes": list(sim._worker_nodes),
            "num_reducers": len(reducers),
            "reducer_keys": list(reducers),
            "reducer_nodes": [_node_of(reducer) for reducer in reducers.values()],
            "cohort": [int(m["participation/reported"]) for m in rounds],
            "clients_aggregated": [int(m["participation/clients_aggregated"]) for m in rounds],
            # A dense partial carries the whole float32 vector: this counts the partials.
            "partials": [int(m["system/transport_bytes"]) // (4 * sim.num_params) for m in rounds],
            "weights_sha256": hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest(),
        }
    np.save(out, weights)
    return result


def main(out_dir: Path) -> int:
    """Runs the job; returns the exit status."""
    try:
        cluster = start_cluster()
    except Exception as err:  # no fake cluster here: the test skips, saying why
        print(json.dumps({"skip": f"ray.cluster_utils.Cluster did not start: {err!r}"}))
        return 0
    try:
        result = run(cluster.address, out_dir / "per_node.npy")
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    logging.getLogger("ray").setLevel(logging.WARNING)
    sys.exit(main(Path(sys.argv[1])))
