"""Runs one experiment end to end: start Ray, loop over rounds, record, summarise."""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from engine.app.audit import canary_metrics, secret_metrics
from engine.app.checkpoint import FILE_NAME, Checkpoint, load, run_defining, save
from engine.app.plots import audit_cosines, availability_over_time, participation_histogram
from engine.app.tracking import RunTracker
from engine.plan import Cluster, Experiment, Tracking
from engine.runtime import Backend, ServerDiedError, Simulation
from engine.scheduling import ParticipationLedger
from mechanisms.accounting import RunAccountant

_SERIES = ("system/sim_time_h", "participation/available", "participation/reported")


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


class RunStoppedError(RuntimeError):
    """The run cannot go on (its server died); the message says how to resume it."""


def run_experiment(
    experiment: Experiment,
    tracking: Tracking,
    output_dir: Path,
    config: dict[str, Any],
    config_sha256: str,
    resume: Checkpoint | None = None,
    tags: Sequence[str] = (),
    backend: Backend | None = None,
) -> Path:
    """Runs every round of `experiment`, writing metrics, figures, checkpoints and the summary.

    Args:
        experiment: The validated experiment.
        tracking: Where metrics go.
        output_dir: The run's output directory.
        config: The resolved config (stored with the wandb run).
        config_sha256: Its hash, stored in checkpoints and the summary.
        resume: A checkpoint of this run (in `output_dir`) to continue from.
        tags: wandb tags of the run.
        backend: Where the actors live; None: Ray actors, on a Ray instance that this call
            starts (and stops) unless one is initialised already. A given backend is used as
            it is.

    Returns:
        The path of summary.json.

    Raises:
        RunStoppedError: If the parameter server died; names the last checkpoint.
    """
    start = time.perf_counter()
    started = start_ray(experiment.cluster) if backend is None else False
    log_path = output_dir / "participation.parquet" if tracking.participation_log else None
    ledger = ParticipationLedger(experiment.population.num_clients, log_path)
    sim: Simulation | None = None
    private = experiment.mechanism.noise_multiplier > 0
    accountant = _accountant(experiment)
    try:
        sim = Simulation(experiment, ledger, backend)
        first, history, final = 0, [], {}
        if resume is not None:
            sim.load_state_dict({"server": resume.server, "scheduler": resume.scheduler})
            first, history, final = resume.rounds_done, list(resume.history), dict(resume.final)
        cold_start_s = time.perf_counter() - start
        tracker_state = resume.tracker if resume is not None else None
        with RunTracker(
            output_dir,
            tracking,
            experiment.name,
            config,
            experiment.rounds,
            first,
            tracker_state,
            tags,
            private,
            {"sigma": f"{experiment.mechanism.noise_multiplier:.4g}"} if private else None,
        ) as rec:
            for round_idx in range(first, experiment.rounds):
                metrics = rec.log(_round(experiment, sim, accountant, round_idx, output_dir))
                if "eval/loss" in metrics:  # the latest evaluation (and audit) for the summary
                    final = {k: v for k, v in metrics.items() if k.startswith(("eval/", "audit/"))}
                history.append(metrics)
                if experiment.checkpoint.due(round_idx, experiment.rounds):
                    state = sim.state_dict()
                    checkpoint = Checkpoint(
                        round_idx + 1,
                        run_defining(config),
                        **state,
                        history=history,
                        final=final,
                        tracker=rec.state_dict(),
                    )
                    save(checkpoint, output_dir)
            figures = _figures(output_dir, ledger, history)
            audit = _audit_summary(experiment, sim, output_dir, figures, final)
            rec.log_images(experiment.rounds - 1, figures)
            summary = {
                **_run_summary(experiment, sim, history, final),
                **_privacy_summary(experiment, ledger, accountant),
                **audit,
                "system/total_s": time.perf_counter() - start,
                "system/cold_start_s": cold_start_s,
                "config_sha256": config_sha256,
            }
            return rec.finish(summary)
    finally:
        ledger.close()
        if sim is not None:
            sim.close()
        if started:
            ray.shutdown()


def _accountant(experiment: Experiment) -> RunAccountant | None:
    """The run's accountant; None for a run without noise."""
    exp = experiment
    if exp.mechanism.noise_multiplier == 0:
        return None
    return RunAccountant(exp.mechanism, exp.participation.bound, exp.privacy.delta)


def _round(
    experiment: Experiment,
    sim: Simulation,
    accountant: RunAccountant | None,
    round_idx: int,
    output_dir: Path,
) -> dict[str, Any]:
    """Runs round `round_idx` (and its evaluation, when due); returns its metrics.

    Raises:
        RunStoppedError: If the parameter server died, naming the checkpoint to resume from.
    """
    try:
        metrics: dict[str, Any] = {"round": round_idx, **sim.run_round(round_idx)}
        if experiment.evaluation.due(round_idx, experiment.rounds):
            metrics.update(sim.evaluate().metrics())
            if experiment.canaries is not None:
                metrics.update(canary_metrics(experiment, sim, round_idx))
    except ServerDiedError as error:
        raise RunStoppedError(f"{error}; {_resume_hint(output_dir)}") from error
    if "eval/loss" in metrics and accountant is not None:
        metrics.update(accountant.metrics(round_idx + 1, sim.scheduler.ledger.observed()))
    return metrics


def _resume_hint(output_dir: Path) -> str:
    """How to go on after a crash: the last checkpoint, or that there is none."""
    try:
        checkpoint = load(output_dir)
    except ValueError:
        checkpoint = None
    if checkpoint is None:
        return f"no checkpoint in {output_dir} (checkpoint.every=0 or too early): start again"
    return (
        f"the last checkpoint, {output_dir / FILE_NAME}, is after round "
        f"{checkpoint.rounds_done - 1}; resume with: fedray resume={output_dir}"
    )


def _run_summary(
    experiment: Experiment,
    sim: Simulation,
    history: list[dict[str, Any]],
    final: dict[str, float],
) -> dict[str, Any]:
    """The summary's figures of merit, the participation bound and its check included."""
    ledger = sim.scheduler.ledger
    bound = experiment.participation.bound
    observed = ledger.observed()
    train_s = sum(m["system/round_s"] for m in history)
    updates = sum(m["participation/reported"] for m in history)
    return {
        "rounds_completed": len(history),
        "final/eval_accuracy": final["eval/accuracy"],
        "final/eval_loss": final["eval/loss"],
        "final/majority_class_rate": final["eval/majority_class_rate"],
        "final/eval_perplexity": final.get("eval/perplexity"),
        "system/client_updates_per_s": updates / max(train_s, 1e-9),
        "system/sim_time_h": sim.now_s / 3600.0,
        "model_sha256": sha256_of(np.ascontiguousarray(sim.weights()).tobytes()),
        "population/num_clients": experiment.population.num_clients,
        "population/registry_bytes": sim.registry.nbytes,
        "model/num_params": sim.num_params,
        "participation/bound_max_participations": bound.max_participations,
        "participation/bound_min_separation": bound.min_separation,
        "participation/bound_holds": ledger.check(bound.max_participations, bound.min_separation),
        "participation/observed_max_participations": observed.max_participations,
        "participation/observed_min_separation": observed.min_separation,
        "participation/clients_seen": observed.clients,
        "participation/mean_participations": float(ledger.count.sum()) / max(observed.clients, 1),
        "system/driver_peak_rss_mib": peak_rss_mib(),
    }


def _privacy_summary(
    experiment: Experiment, ledger: ParticipationLedger, accountant: RunAccountant | None
) -> dict[str, Any]:
    """The run's planned guarantee (`privacy/epsilon`) and the ledger's observed figure.

    A resumed run recomputes both, the observed one from its ledger: nothing privacy-related
    is taken from a checkpoint's history.
    """
    delta, sigma = experiment.privacy.delta, experiment.mechanism.noise_multiplier
    if accountant is None:
        return {"privacy/epsilon": None, "privacy/delta": delta, "privacy/noise_multiplier": sigma}
    observed = accountant.metrics(ledger.rounds_recorded, ledger.observed())
    planned = accountant.metrics(experiment.rounds, ledger.observed())
    return {
        **planned,
        "privacy/epsilon_observed": observed["privacy/epsilon_observed"],
        "privacy/noise_multiplier": sigma,
    }


def _audit_summary(
    experiment: Experiment,
    sim: Simulation,
    output_dir: Path,
    figures: dict[str, Path],
    final: dict[str, Any],
) -> dict[str, Any]:
    """The audit's final figures and its plot.

    The canary estimates are the last evaluation's (every run evaluates after its last round);
    the secrets' exposure is computed here. With canaries, also writes the cosines the plot
    and the estimates come from, `audit_cosines.npz` (`final` and `largest`, float64 [2, C]:
    rows canaries, null directions).
    """
    summary = {key: value for key, value in final.items() if key.startswith("audit/")}
    if experiment.canaries is not None:
        cosines, largest = sim.canary_cosines()
        np.savez(output_dir / "audit_cosines.npz", final=cosines, largest=largest)
        figures["audit/cosines"] = audit_cosines(cosines, largest, output_dir / "audit_cosines.png")
    if experiment.audit.secrets:
        summary.update(secret_metrics(experiment, sim))
    return summary


def _figures(
    output_dir: Path, ledger: ParticipationLedger, history: list[dict[str, Any]]
) -> dict[str, Path]:
    """Writes the end-of-run PNGs; returns them by wandb key."""
    series = {k: np.array([m[k] for m in history]) for k in _SERIES}
    return {
        "participation/histogram": participation_histogram(
            ledger.count, output_dir / "participation_histogram.png"
        ),
        "participation/availability_over_time": availability_over_time(
            series["system/sim_time_h"],
            series["participation/available"],
            series["participation/reported"],
            output_dir / "availability_over_time.png",
        ),
    }
