"""Distributed DP in a run: secure aggregation in the workers, decoding on the server, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from engine.aggregation import secure
from engine.aggregation.secure import ModularPartial, SecureAggregator
from engine.app.build import build_experiment
from engine.plan import Experiment
from engine.runtime import LocalBackend, Simulation
from engine.training import ClientUpdate
from mechanisms.ddp.codec import CodecSpec
from mechanisms.ddp.mechanism import DistributedMechanism
from mechanisms.ddp.rotation import padded_dim
from tests.conftest import compose_config, run_composed, smoke_experiment

DDP = ("mechanism=ddp_skellam", "mechanism.bits=20", "participation.cohort_size=20")


@pytest.mark.parametrize("mechanism", ["ddp_gaussian", "ddp_skellam"])
def test_a_distributed_mechanism_runs_under_secure_aggregation(mechanism):
    experiment = smoke_experiment(f"mechanism={mechanism}", "participation.cohort_size=20")
    assert isinstance(experiment.mechanism, DistributedMechanism)
    assert isinstance(experiment.aggregation, SecureAggregator)
    _, codec = _secure(experiment)
    assert codec.bits == 16 and codec.scale > 0 and codec.local_noise > 0


def _secure(experiment: Experiment) -> tuple[SecureAggregator, CodecSpec]:
    aggregator = experiment.aggregation
    assert isinstance(aggregator, SecureAggregator) and aggregator.codec is not None
    return aggregator, aggregator.codec


def _partials(experiment, chunks: list[list[int]], rows: np.ndarray) -> list[ModularPartial]:
    aggregator, _ = _secure(experiment)
    sealed = []
    for ids in chunks:
        partial = aggregator.zeros(rows.shape[1])
        for client in ids:
            partial.add(ClientUpdate(rows[client], 1, 0.0, 1), 1.0)
        done = aggregator.seal(partial, 3, ids)
        assert isinstance(done, ModularPartial)
        sealed.append(done)
    return sealed


@pytest.mark.parametrize(
    "mechanism",
    [("mechanism=ddp_gaussian",), ("mechanism=ddp_skellam", "mechanism.aggregate_shares=false")],
)
def test_the_modular_sum_is_bit_identical_however_the_cohort_is_chunked(mechanism):
    # Per-client shares: a client's encoding is its own, whatever chunk it is in. (Aggregated
    # Skellam shares are drawn per chunk, and chunks depend on the cohort only, not on workers.)
    experiment = smoke_experiment(*DDP, *mechanism)
    aggregator, codec = _secure(experiment)
    dim = codec.dim
    rows = np.random.default_rng(0).normal(size=(8, dim)).astype(np.float32)
    rows /= np.maximum(1.0, np.linalg.norm(rows, axis=1, keepdims=True))  # clipped to 1
    totals = []
    pairs = [[0, 1], [2, 3], [4, 5], [6, 7]]
    for chunks in ([list(range(8))], [[0, 1, 2, 3], [4, 5, 6, 7]], pairs):
        partials = _partials(experiment, chunks, rows)
        assert all(not p.rows and p.update_sum.size == 0 for p in partials)  # nothing individual
        total = aggregator.reduce(partials, dim)
        assert isinstance(total, ModularPartial)
        totals.append(total.modular_sum)
        assert total.num_clients == 8
    assert all(np.array_equal(totals[0], other) for other in totals[1:])


def test_the_decoded_sum_is_the_clipped_sum_plus_noise_of_the_planned_size():
    experiment = smoke_experiment(*DDP)
    aggregator, codec = _secure(experiment)
    rows = np.random.default_rng(1).normal(size=(20, codec.dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    total = aggregator.reduce(_partials(experiment, [list(range(20))], rows), codec.dim)
    error = total.dense_sum() - rows.sum(axis=0)
    # 20 shares of variance mu each, decoded (orthonormal rotation) by the scale, plus rounding.
    predicted = (20 * codec.local_noise + 20 / 4) / codec.scale**2
    assert abs(error.mean()) < 4 * np.sqrt(predicted / codec.dim)
    assert error.var() == pytest.approx(predicted, rel=0.3)


def test_a_distributed_run_learns_and_reports_its_epsilon(tmp_path: Path):
    summary = run_composed(tmp_path, "experiment=smoke", *DDP, "rounds=5", backend=LocalBackend())
    assert np.isfinite(summary["privacy/epsilon"]) and summary["privacy/epsilon"] > 0
    assert summary["final/eval_accuracy"] > 0


@pytest.mark.usefixtures("ray_session")
def test_one_and_two_workers_give_the_same_weights():
    overrides = (*DDP, "cluster.chunk_size=6", "rounds=2")
    weights = []
    for backend, workers in ((LocalBackend(), 1), (None, 2)):
        experiment = smoke_experiment(*overrides, f"cluster.num_workers={workers}")
        with Simulation(experiment, backend=backend) as sim:
            for round_idx in range(2):
                sim.run_round(round_idx)
            weights.append(sim.weights())
    assert np.array_equal(weights[0], weights[1])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("strategy=dpftrl",), "strategy"),
        (("clipping=adaptive",), "clipping"),
        (
            (
                "population=zipf_text",
                "model=lm",
                "aggregation=sparse",
                "aggregation.weighting=uniform",
            ),
            "aggregation",
        ),
        (("mechanism.bits=2", "participation.cohort_size=20"), "mechanism.bits"),
    ],
)
def test_a_combination_that_breaks_the_guarantee_is_refused_in_one_line(overrides, key):
    cfg = compose_config("experiment=smoke", "mechanism=ddp_skellam", *overrides)
    with pytest.raises(ConfigError) as error:
        build_experiment(cfg)
    (line,) = str(error.value).splitlines()
    assert line.startswith(key), line


@pytest.mark.parametrize(("k_stddevs", "wraps"), [(4.0, False), (0.3, True)])
def test_rounds_report_the_encoding_and_how_many_coordinates_wrapped(k_stddevs, wraps):
    experiment = smoke_experiment(*DDP, "mechanism.bits=12", f"mechanism.k_stddevs={k_stddevs}")
    with Simulation(experiment, backend=LocalBackend()) as sim:
        metrics = sim.run_round(0)
    assert metrics["privacy/ddp_bits"] == 12
    assert metrics["privacy/ddp_scale"] == _secure(experiment)[1].scale
    assert metrics["system/ddp_rounding_retries"] >= 0
    assert (metrics["system/ddp_wrapped_coordinates"] > 0) == wraps


def test_a_round_with_fewer_survivors_than_the_noise_assumes_is_retried_not_released():
    experiment = smoke_experiment(*DDP, "clock.dropout_prob=0.3", "clock.min_report_fraction=0.8")
    assert isinstance(experiment.mechanism, DistributedMechanism)
    n_min = experiment.mechanism.configuration[0].min_survivors
    assert n_min == 16  # the shares are calibrated for 16 of the 20
    with Simulation(experiment, backend=LocalBackend()) as sim:
        rounds = [sim.run_round(r) for r in range(3)]
    assert all(m["participation/clients_aggregated"] >= n_min for m in rounds)
    assert any(m["participation/attempts"] > 1 for m in rounds)  # a short round was retried


def test_a_chunk_of_many_clients_is_encoded_group_by_group_to_the_same_sum(monkeypatch):
    experiment = smoke_experiment(*DDP, "mechanism=ddp_gaussian")
    _, codec = _secure(experiment)
    rows = np.random.default_rng(2).normal(size=(7, codec.dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    (whole,) = _partials(experiment, [list(range(7))], rows)
    monkeypatch.setattr(secure, "ENCODE_COORDINATES", 2 * padded_dim(codec.dim))  # 2 at a time
    (grouped,) = _partials(experiment, [list(range(7))], rows)
    assert np.array_equal(whole.modular_sum, grouped.modular_sum)
    assert np.array_equal(whole.unreduced, grouped.unreduced)
