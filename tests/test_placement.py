"""How many GPUs a job occupies, and the clear error when the Ray cluster has fewer."""

from __future__ import annotations

import pytest

from engine.runtime.placement import Resources


def _resources(workers: int, worker_gpus: float, server_gpus: float) -> Resources:
    return Resources(
        num_workers=workers, worker_cpus=1.0, worker_gpus=worker_gpus, server_gpus=server_gpus
    )


@pytest.mark.parametrize(
    ("workers", "worker_gpus", "server_gpus", "needed"),
    [
        (4, 0.0, 0.0, 0.0),  # all on CPUs
        (4, 0.0, 1.0, 1.0),  # CPU workers, the server on a whole GPU
        (4, 0.2, 0.2, 1.0),  # five tenants at 0.2 share one GPU
        (4, 0.25, 0.25, 2.0),  # the fifth tenant at 0.25 needs a second GPU
        (5, 0.3, 0.0, 2.0),  # three at 0.3 to a GPU
        (1, 0.5, 0.5, 1.0),
        (2, 1.0, 1.0, 3.0),
        (2, 2.0, 1.0, 5.0),
    ],
)
def test_gpus_needed_packs_fractions_per_gpu(
    workers: int, worker_gpus: float, server_gpus: float, needed: float
) -> None:
    assert _resources(workers, worker_gpus, server_gpus).gpus_needed() == needed


def test_a_job_larger_than_the_cluster_fails_with_the_count_it_needs() -> None:
    resources = _resources(4, 0.25, 0.25)
    resources.check_gpus(2.0)
    with pytest.raises(ValueError, match=r"needs 2 GPUs \(4 workers at 0.25 each.*has 1"):
        resources.check_gpus(1.0)
