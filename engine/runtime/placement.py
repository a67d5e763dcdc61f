"""Where the actors run: a placement group per job, GPU fractions, and per-node reduction.

A job reserves all its resources at once (one placement group: a bundle per client worker, one
for the server), so a sweep's jobs never starve each other half-started. Workers spread over the
nodes of a Ray cluster; each node's partial aggregates are summed on that node first, by a
`NodeReducer`, so that only one partial per node crosses the network to the server.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from engine.aggregation import Aggregator, Partial
from engine.plan import Cluster

_SERVER_CPUS = 0.01  # the server's bundle: it mostly waits on its inputs
_NOTE_EVERY_S = 30.0  # while a placement group waits for resources, a note this often


def assigned_device() -> torch.device:
    """The GPU Ray gave this actor (it sets CUDA_VISIBLE_DEVICES to it), else the CPU."""
    gpu = ray.is_initialized() and bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


@dataclass(frozen=True)
class Resources:
    """What each actor of a job asks for, after the cluster's GPUs were counted.

    Attributes:
        num_workers: Client workers.
        worker_cpus: CPUs per worker.
        worker_gpus: GPU fraction per worker (0 on a cluster without GPUs).
        server_gpus: GPU share of the server: 0, a worker's share (capped at 1) when the
            workers use GPUs, else 1. Ray's GPU fractions only count; they do not partition a
            GPU's memory or compute.
    """

    num_workers: int
    worker_cpus: float
    worker_gpus: float
    server_gpus: float

    @staticmethod
    def of(cluster: Cluster) -> Resources:
        """The resources `cluster` asks for, on the Ray cluster this process is connected to.

        Without GPUs in the Ray cluster, GPU requests are dropped (with a note on stderr): the
        same config then runs everything on the CPU. The server on a GPU takes a worker's share
        of it (so 4 workers at 0.2 and the server fit on one GPU), or a whole GPU when the
        workers run on CPUs.

        Raises:
            ValueError: The job asks for more GPUs than the Ray cluster has (Ray would wait for
                them for ever).
        """
        available = ray.cluster_resources()
        cpus = float(available.get("CPU", 1.0))
        num_workers = cluster.num_workers or max(1, int(cpus))
        has_gpus = available.get("GPU", 0.0) > 0
        wants_gpus = cluster.gpus_per_worker > 0 or cluster.server_gpu
        if wants_gpus and not has_gpus:
            print("fedray: no GPU in the Ray cluster; running on the CPU", file=sys.stderr)
        worker_gpus = cluster.gpus_per_worker if has_gpus else 0.0
        server_gpus = min(1.0, worker_gpus or 1.0) if cluster.server_gpu and has_gpus else 0.0
        resources = Resources(
            num_workers=num_workers,
            worker_cpus=min(1.0, (cpus - _SERVER_CPUS) / num_workers),
            worker_gpus=worker_gpus,
            server_gpus=server_gpus,
        )
        resources.check_gpus(float(available.get("GPU", 0.0)))
        return resources

    def check_gpus(self, cluster_gpus: float) -> None:
        """Raises ValueError when the job's GPU shares cannot fit on `cluster_gpus` GPUs."""
        needed = self.gpus_needed()
        if needed > cluster_gpus + 1e-9:
            raise ValueError(
                f"cluster: the job needs {needed:g} GPUs ({self.num_workers} workers at "
                f"{self.worker_gpus:g} each, the server at {self.server_gpus:g}) but the Ray "
                f"cluster has {cluster_gpus:g}; lower cluster.gpus_per_worker or set "
                "cluster.num_workers (null means one worker per CPU)"
            )

    def gpus_needed(self) -> float:
        """GPUs the job occupies: shares below 1 pack floor(1 / share) to a GPU."""
        if self.worker_gpus >= 1:
            return self.worker_gpus * self.num_workers + self.server_gpus
        if self.worker_gpus == 0:
            return self.server_gpus
        tenants = self.num_workers + (self.server_gpus > 0)
        per_gpu = int(1 / self.worker_gpus + 1e-9)
        return float(-(-tenants // per_gpu))

    def reserve(self, spread: bool) -> PlacementGroup:
        """One placement group: bundle i for worker i, the last bundle for the server.

        Args:
            spread: Spread the bundles over nodes (a Ray cluster) rather than pack them.
        """
        worker = {"CPU": self.worker_cpus, "GPU": self.worker_gpus}
        server = {"CPU": _SERVER_CPUS, "GPU": self.server_gpus}
        bundles = [_nonzero(worker)] * self.num_workers + [_nonzero(server)]
        group = placement_group(bundles, strategy="SPREAD" if spread else "PACK")
        ready = group.ready()
        while not ray.wait([ready], timeout=_NOTE_EVERY_S)[0]:
            print(
                f"fedray: waiting for Ray to place {len(bundles)} bundles {bundles[0]} … "
                f"{bundles[-1]}; the cluster has {ray.available_resources()}",
                file=sys.stderr,
            )
        return group

    def worker_options(self, group: PlacementGroup, index: int) -> dict[str, Any]:
        """`.options(...)` of worker `index` inside `group`."""
        return {
            "num_cpus": self.worker_cpus,
            "num_gpus": self.worker_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(group, index),
        }

    def server_options(self, group: PlacementGroup) -> dict[str, Any]:
        """`.options(...)` of the server inside `group`."""
        return {
            "num_cpus": _SERVER_CPUS,
            "num_gpus": self.server_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(group, self.num_workers),
        }


def _nonzero(bundle: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in bundle.items() if value > 0}


class NodeReducer:
    """Sums the partials of the workers on one node, in the order given. A Ray actor.

    Args:
        aggregator: How partials are reduced.
        dim: Parameter vector size.
    """

    def __init__(self, aggregator: Aggregator, dim: int) -> None:
        self._aggregator = aggregator
        self._dim = dim

    def reduce(self, *worker_partials: Sequence[Partial]) -> list[Partial]:
        """One partial: the workers' chunk partials summed in order."""
        chunks = [partial for partials in worker_partials for partial in partials]
        total = self._aggregator.reduce(chunks, self._dim)
        total.clip_norm = chunks[0].clip_norm if chunks else None
        return [total]


def node_reducers(node_ids: Sequence[str], aggregator: Aggregator, dim: int) -> dict[str, Any]:
    """One `NodeReducer` actor pinned to each distinct node."""
    actor: Any = ray.remote(num_cpus=0)(NodeReducer)
    return {
        node: actor.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        ).remote(aggregator, dim)
        for node in dict.fromkeys(node_ids)
    }


def bundle_nodes(group: PlacementGroup) -> list[str]:
    """The node id of each bundle of a ready placement group, by bundle index."""
    table = placement_group_table(group)["bundles_to_node_id"]
    return [str(table[index]) for index in sorted(table)]
