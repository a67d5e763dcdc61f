"""Runs one experiment end to end: start Ray, loop over rounds, record, summarise."""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from engine.experiment import Experiment
from engine.settings import Cluster, Tracking
from engine.simulation import Simulation
from engine.tracking import RunTracker


def start_ray(cluster: Cluster) -> bool:
    """Connects to `cluster.address` or starts a local Ray; returns whether this call started it.

    An already initialised Ray (a test session, a launcher) is reused as it is.
    """
    if ray.is_initialized():
        return False
    if cluster.address is not None:
        ray.init(address=cluster.address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=cluster.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


def sha256_of(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def peak_rss_mib() -> float:
    """This process's peak resident memory, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_experiment(
    experiment: Experiment,
    tracking: Tracking,
    output_dir: Path,
    config: dict[str, Any],
    config_sha256: str,
) -> Path:
    """Runs every round of `experiment`, writing metrics and the summary under `output_dir`.

    Returns:
        The path of summary.json.
    """
    start = time.perf_counter()
    started = start_ray(experiment.cluster)
    try:
        sim = Simulation(experiment)
        cold_start_s = time.perf_counter() - start
        with RunTracker(output_dir, tracking, experiment.name, config, experiment.rounds) as rec:
            train_s, updates, final = 0.0, 0, {}
            for round_idx in range(experiment.rounds):
                metrics: dict[str, Any] = {"round": round_idx, **sim.run_round(round_idx)}
                train_s += metrics["system/round_s"]
                updates += int(metrics["participation/cohort_size"])
                if experiment.evaluation.due(round_idx, experiment.rounds):
                    final = sim.evaluate().metrics()
                    metrics.update({k: final[k] for k in ("eval/accuracy", "eval/loss")})
                rec.log(metrics)
            weights = sim.weights()
            summary = {
                "rounds_completed": experiment.rounds,
                "final/eval_accuracy": final["eval/accuracy"],
                "final/eval_loss": final["eval/loss"],
                "final/majority_class_rate": final["eval/majority_class_rate"],
                "system/total_s": time.perf_counter() - start,
                "system/cold_start_s": cold_start_s,
                "system/client_updates_per_s": updates / max(train_s, 1e-9),
                "model_sha256": sha256_of(np.ascontiguousarray(weights).tobytes()),
                "config_sha256": config_sha256,
                "population/num_clients": experiment.population.num_clients,
                "population/registry_bytes": sim.registry.nbytes,
                "model/num_params": sim.num_params,
                "system/driver_peak_rss_mib": peak_rss_mib(),
            }
            return rec.finish(summary)
    finally:
        if started:
            ray.shutdown()
