"""engine/runtime/pipeline.py and pool.py: the round pipeline on the plain classes, without Ray."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import ray
import torch

from engine.plan import Experiment
from engine.runtime import (
    ActorPool,
    ClientWorker,
    LocalBackend,
    ParameterServer,
    RoundPipeline,
    Simulation,
    initial_weights,
    make_scheduler,
)
from engine.runtime.backends import server_args, worker_args
from engine.runtime.chunks import split_chunks
from engine.scheduling import RoundFailedError
from tests.conftest import smoke_experiment

COHORT = ("participation.cohort_size=12", "cluster.chunk_size=5")
PRIVATE = ("mechanism=gaussian", "clipping=adaptive")


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every Ray call fails the test; torch's thread count is restored afterwards."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("Ray was called")

    for name in ("init", "get", "put", "wait", "remote", "kill"):
        monkeypatch.setattr(ray, name, refuse)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _pipeline(experiment: Experiment) -> RoundPipeline:
    """A pipeline on a fresh `LocalBackend` pool, with a fresh ledger."""
    initial = initial_weights(experiment)
    registry = experiment.population.registry()
    scheduler = make_scheduler(experiment, registry, initial.nbytes)
    pool = ActorPool(experiment, initial, LocalBackend())
    return RoundPipeline(experiment, scheduler, pool, registry)


def _run(pipeline: RoundPipeline, rounds: range) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Runs `rounds`, then closes the pool; the final weights and the rounds' metrics."""
    try:
        metrics = [pipeline.run_round(r) for r in rounds]
        return np.asarray(pipeline.pool.get(pipeline.weights)), metrics
    finally:
        pipeline.pool.close()


def _hand_loop(experiment: Experiment, rounds: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The rounds by direct calls of the plain classes: weights, ledger counts, next start."""
    initial = initial_weights(experiment)
    scheduler = make_scheduler(experiment, experiment.population.registry(), initial.nbytes)
    worker = ClientWorker(*worker_args(experiment, experiment.population))
    server = ParameterServer(*server_args(experiment, initial))
    weights, now_s = server.weights(), scheduler.start_s
    for r in range(rounds):
        plan = scheduler.plan(r, now_s)
        chunks = split_chunks(plan.cohort, experiment.cluster.chunk_size_for(len(plan.cohort)))
        sizes = [len(chunk) for chunk in chunks]
        partials, _ = worker.train_with_receipt(
            weights, r, np.concatenate(chunks), sizes, server.clip_norm
        )
        weights, _ = server.apply(r, partials)
        scheduler.commit(plan)
        now_s = plan.end_s
    return weights, scheduler.ledger.count, now_s


@pytest.mark.parametrize("overrides", [COHORT, (*COHORT, *PRIVATE)])
def test_the_pipeline_is_the_plain_classes_called_by_hand(overrides):
    experiment = smoke_experiment(*overrides)
    pipeline = _pipeline(experiment)
    weights, metrics = _run(pipeline, range(experiment.rounds))
    expected, counts, now_s = _hand_loop(experiment, experiment.rounds)
    np.testing.assert_array_equal(weights, expected)
    np.testing.assert_array_equal(pipeline.scheduler.ledger.count, counts)
    assert pipeline.now_s == now_s
    assert [m["participation/reported"] for m in metrics] == [12.0] * experiment.rounds


def test_a_round_sent_ahead_moves_no_clock():
    experiment = smoke_experiment(*COHORT)
    reference = make_scheduler(
        experiment, experiment.population.registry(), initial_weights(experiment).nbytes
    )
    first = reference.plan(0, reference.start_s)
    pipeline = _pipeline(experiment)
    try:
        pipeline.run_round(0)  # sends round 1 ahead
        assert pipeline.now_s == first.end_s
        assert pipeline.state_dict()["scheduler"]["now_s"] == first.end_s
        second = pipeline.run_round(1)
    finally:
        pipeline.pool.close()
    reference.commit(first)
    expected = reference.plan(1, first.end_s)
    assert {k: second[k] for k in expected.metrics()} == expected.metrics()
    assert pipeline.now_s == expected.end_s


def test_a_round_that_cannot_be_planned_fails_in_its_own_call():
    # 12 of 14 selected clients must report, 5% drop out, one attempt: round 15 fails, and
    # round 14, which sent it ahead, completes.
    retries = ("clock.over_selection=1.1", "clock.dropout_prob=0.05", "clock.max_attempts=1")
    experiment = smoke_experiment(*COHORT, *retries, "clock.min_report_fraction=1.0", "rounds=40")
    pipeline = _pipeline(experiment)
    done: list[float] = []
    try:
        with pytest.raises(RoundFailedError) as info:
            for r in range(experiment.rounds):
                pipeline.run_round(r)
                done.append(pipeline.now_s)
    finally:
        pipeline.pool.close()
    assert info.value.round_idx == len(done) == 15
    assert pipeline.now_s == done[-1]  # the failed plan moved no clock
    assert pipeline.scheduler.ledger.rounds_recorded == len(done)


@pytest.mark.parametrize("overrides", [COHORT, (*COHORT, *PRIVATE)])
def test_a_pipeline_resumed_from_its_state_dict_goes_on_bit_for_bit(overrides):
    experiment = smoke_experiment(*overrides)
    straight = _pipeline(experiment)
    weights, metrics = _run(straight, range(3))
    first = _pipeline(experiment)
    try:
        first.run_round(0)
        state = pickle.loads(pickle.dumps(first.state_dict()))  # as a checkpoint holds it
    finally:
        first.pool.close()
    resumed = _pipeline(experiment)
    resumed.load_state_dict(state)
    assert resumed.now_s == pytest.approx(metrics[1]["system/sim_time_h"] * 3600.0, rel=1e-12)
    resumed_weights, resumed_metrics = _run(resumed, range(1, 3))
    np.testing.assert_array_equal(resumed_weights, weights)
    np.testing.assert_array_equal(resumed.scheduler.ledger.count, straight.scheduler.ledger.count)
    sim_keys = ("system/sim_time_h", "system/sim_round_s", "participation/reported")
    for mine, theirs in zip(resumed_metrics, metrics[1:], strict=True):
        assert {k: mine[k] for k in sim_keys} == {k: theirs[k] for k in sim_keys}


def test_a_local_simulation_runs_evaluates_and_closes_twice():
    experiment = smoke_experiment(*COHORT)
    sim = Simulation(experiment, backend=LocalBackend())
    with sim:
        for r in range(experiment.rounds):
            sim.run_round(r)
        stats = sim.evaluate()
        weights = sim.weights()
        assert sim.num_workers == 1 and sim._worker_nodes == ["local"]
    sim.close()
    expected, counts, now_s = _hand_loop(experiment, experiment.rounds)
    np.testing.assert_array_equal(weights, expected)
    np.testing.assert_array_equal(sim.scheduler.ledger.count, counts)
    assert sim.now_s == now_s
    assert stats.count > 0
