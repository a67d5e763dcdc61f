"""Faults cost time, never correctness: crashed workers, failing clients, non-finite updates."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import pytest
import ray

from common.errors import ConfigError
from engine.aggregation import DenseAggregator
from engine.plan import Experiment
from engine.runtime import ClientWorker, LocalBackend, Simulation
from engine.training import Faults, InjectedClientError
from tests.conftest import smoke_experiment

SMALL = ("participation.cohort_size=24", "cluster.num_workers=2", "cluster.chunk_size=4")
MAX_CRASH_ROUNDS = 20


def _run(*overrides: str, rounds: int = 4) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Final weights, the ledger's counts and the rounds' metrics, of a run in this process."""
    with Simulation(smoke_experiment(*SMALL, *overrides), backend=LocalBackend()) as sim:
        metrics = [sim.run_round(r) for r in range(rounds)]
        return sim.weights(), sim.scheduler.ledger.count.copy(), metrics


def _pids(sim: Simulation) -> list[int]:
    return ray.get([w.__ray_call__.remote(lambda _: os.getpid()) for w in sim._workers])


@pytest.mark.usefixtures("ray_session")
def test_crashing_workers_change_nothing_but_time():
    # Rounds until some worker has died and been restarted: each round none of the two crashes
    # with chance 0.75^2, so none in MAX_CRASH_ROUNDS rounds with chance < 1e-5. (Each restart
    # starts a process: seconds.)
    planned = f"rounds={MAX_CRASH_ROUNDS}"
    with Simulation(smoke_experiment(*SMALL, planned, "faults.worker_crash_prob=0.25")) as sim:
        before, rounds = _pids(sim), 0
        while rounds < MAX_CRASH_ROUNDS and _pids(sim) == before:
            sim.run_round(rounds)
            rounds += 1
        assert _pids(sim) != before, f"no worker crashed in {rounds} rounds"
        crashed, crashed_counts = sim.weights(), sim.scheduler.ledger.count.copy()
    weights, counts, _ = _run(planned, rounds=rounds)
    np.testing.assert_array_equal(crashed, weights)
    np.testing.assert_array_equal(crashed_counts, counts)


@functools.cache
def _small() -> Experiment:
    """The SMALL experiment, composed once (workers only read it)."""
    return smoke_experiment(*SMALL)


def _worker(**faults: Any) -> ClientWorker:
    exp = _small()
    aggregator = DenseAggregator()
    return ClientWorker(
        exp.population, exp.model_factory, exp.training, aggregator, 0, Faults(**faults)
    )


def _weights() -> np.ndarray:
    with_model = _small().model_factory()
    return np.concatenate([p.detach().numpy().ravel() for p in with_model.parameters()])


def test_clipped_non_finite_updates_are_summed_as_zeros():
    ids = np.arange(40)
    weights = _weights()
    worker = _worker()
    clean = [worker.train(weights, 0, [np.array([c])])[0] for c in ids]
    (partial,) = _worker(nan_update_prob=0.3).train(weights, 0, [ids], clip_norm=1.0)
    nonfinite = sorted(partial.nonfinite)
    assert 0 < len(nonfinite) < len(ids)
    assert partial.num_clients == len(ids)  # the count does not tell which updates were finite
    # The sum is exactly the clipped sum of the other clients' updates; their bits are -1/2.
    others = np.setdiff1d(ids, nonfinite)
    (expected,) = _worker().train(weights, 0, [others], clip_norm=1.0)
    np.testing.assert_array_equal(partial.update_sum, expected.update_sum)
    assert partial.bit_sum == expected.bit_sum - 0.5 * len(nonfinite)
    assert all(np.isfinite(p.update_sum).all() for p in clean)


def test_unclipped_non_finite_updates_are_left_out():
    ids = np.arange(40)
    weights = _weights()
    (partial,) = _worker(nan_update_prob=0.3).train(weights, 0, [ids])
    nonfinite = sorted(partial.nonfinite)
    assert len(nonfinite) > 0 and partial.num_clients == len(ids) - len(nonfinite)
    (expected,) = _worker().train(weights, 0, [np.setdiff1d(ids, nonfinite)])
    np.testing.assert_array_equal(partial.update_sum, expected.update_sum)


def test_a_client_that_keeps_failing_is_left_out(capsys):
    ids = np.arange(30)
    weights = _weights()
    (partial,) = _worker(client_failure_prob=0.2).train(weights, 0, [ids])
    failed = sorted(partial.failed)
    assert 0 < len(failed) < len(ids) and partial.num_clients == len(ids) - len(failed)
    (expected,) = _worker().train(weights, 0, [np.setdiff1d(ids, failed)])
    np.testing.assert_array_equal(partial.update_sum, expected.update_sum)
    err = capsys.readouterr().err
    assert f"client {failed[0]} failed 3 times (InjectedClientError" in err


def test_the_receipt_names_the_failed_clients_of_every_chunk_in_order():
    chunks = np.array_split(np.arange(30), 3)
    worker, weights = _worker(client_failure_prob=0.2), _weights()
    packed, receipt = worker.train_with_receipt(weights, 0, np.arange(30), [10, 10, 10])
    partials = worker.train(weights, 0, chunks)  # the same call, unpacked
    failed = [c for partial in partials for c in partial.failed]
    assert receipt.failed == tuple(failed) and len(failed) > 0
    assert receipt.train_s > 0
    assert len(packed) == 3
    for got, expected in zip(packed, partials, strict=True):
        np.testing.assert_array_equal(got.update_sum, expected.update_sum)
        assert (got.failed, got.num_clients) == (expected.failed, expected.num_clients)


def test_failed_clients_are_not_in_the_ledger_and_non_finite_ones_are():
    _, counts, metrics = _run("faults.client_failure_prob=0.2", "faults.nan_update_prob=0.2")
    failed = sum(m["system/failed_clients"] for m in metrics)
    nonfinite = sum(m["system/nonfinite_updates"] for m in metrics)
    aggregated = sum(m["participation/clients_aggregated"] for m in metrics)
    assert failed > 0 and nonfinite > 0
    assert aggregated + nonfinite + failed == 4 * 24  # unclipped: non-finite ones left out
    # A non-finite client's data was seen (its update was computed): it counts for privacy.
    assert counts.sum() == aggregated + nonfinite


def test_fault_settings_are_validated():
    with pytest.raises(ConfigError, match="worker_crash_prob: must be in"):
        Faults(worker_crash_prob=1.0)
    with pytest.raises(ConfigError, match="client_retries: must be >= 0"):
        Faults(client_retries=-1)
    with pytest.raises(InjectedClientError):
        for client in range(100):
            Faults(client_failure_prob=0.5).maybe_fail(0, 0, client)


def test_a_clipped_client_that_keeps_failing_adds_zeros_and_its_error_text_stays_unsaid(capsys):
    ids = np.arange(30)
    weights = _weights()
    (partial,) = _worker(client_failure_prob=0.2).train(weights, 0, [ids], clip_norm=1.0)
    failed = sorted(partial.failed)
    assert len(failed) > 0 and partial.num_clients == len(ids)  # the count does not tell
    (expected,) = _worker().train(weights, 0, [np.setdiff1d(ids, failed)], clip_norm=1.0)
    np.testing.assert_array_equal(partial.update_sum, expected.update_sum)
    assert partial.bit_sum == expected.bit_sum - 0.5 * len(failed)
    err = capsys.readouterr().err
    line = f"client {failed[0]} failed 3 times (InjectedClientError); summed as a zero update"
    assert line in err


def test_a_private_run_records_failed_and_non_finite_clients_in_the_ledger():
    faults = ("faults.client_failure_prob=0.2", "faults.nan_update_prob=0.2")
    private = ("mechanism=gaussian", "clipping=fixed", *faults)
    with Simulation(smoke_experiment(*SMALL, *private), backend=LocalBackend()) as sim:
        metrics = [sim.run_round(r) for r in range(4)]
        counts = sim.scheduler.ledger.count
    assert sum(m["system/failed_clients"] for m in metrics) > 0
    assert all(m["participation/clients_aggregated"] == 24 for m in metrics)
    assert counts.sum() == 4 * 24  # every reported client counts for privacy
