"""The round loop on Ray: determinism across worker counts, chunking, learning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.runtime import LocalBackend, Simulation
from engine.runtime.chunks import assign, split_chunks
from engine.training import EvalStats
from tests.conftest import smoke_experiment


def _train(
    *overrides: str, rounds: int = 3, local: bool = False
) -> tuple[np.ndarray, np.ndarray, EvalStats]:
    """Initial weights, weights after `rounds` rounds, and their evaluation.

    With `local`, in this process (`LocalBackend`, one worker) instead of on Ray's actors.
    """
    backend = LocalBackend() if local else None
    with Simulation(smoke_experiment(*overrides), backend=backend) as sim:
        initial = sim.weights()
        for round_idx in range(rounds):
            sim.run_round(round_idx)
        return initial, sim.weights(), sim.evaluate()


@given(
    cohort=st.integers(0, 500),
    chunk_size=st.integers(1, 60),
    num_workers=st.integers(1, 9),
)
def test_chunks_partition_the_cohort_in_order(cohort, chunk_size, num_workers):
    ids = np.arange(cohort, dtype=np.int64) * 7
    chunks = split_chunks(ids, chunk_size)
    assert all(len(c) <= chunk_size for c in chunks)
    assert len(chunks) == max(1, -(-cohort // chunk_size))
    work = assign(chunks, num_workers)
    assert len(work) == num_workers
    flat = [c for w in work for c in w]
    assert len(flat) == len(chunks)
    assert all(a is b for a, b in zip(flat, chunks, strict=True))
    assert np.array_equal(np.concatenate(chunks), ids)


@given(
    costs=st.lists(st.integers(0, 1000), min_size=1, max_size=40),
    num_workers=st.integers(1, 6),
)
def test_workers_get_contiguous_runs_of_balanced_cost(costs, num_workers):
    chunks = [np.array([i]) for i in range(len(costs))]
    work = assign(chunks, num_workers, costs)
    assert len(work) == num_workers
    assert [c for w in work for c in w] == chunks  # every chunk once, in order
    loads = [sum(costs[int(c[0])] for c in w) for w in work]
    # contiguous runs can do no better than the even share plus one chunk
    assert max(loads) <= sum(costs) / num_workers + max(costs)


@pytest.mark.usefixtures("ray_session")
def test_bit_identical_weights_and_evaluation_for_1_2_and_4_workers():
    cohort = ("participation.cohort_size=37", "cluster.chunk_size=5")
    # One worker in this process (the same worker code, without actors), 2 and 4 on Ray.
    runs = [_train(*cohort, local=True)]
    runs += [_train(*cohort, f"cluster.num_workers={w}") for w in (2, 4)]
    initial, final, stats = runs[0]
    assert not np.array_equal(initial, final)
    for other_initial, other_final, other_stats in runs[1:]:
        assert np.array_equal(initial, other_initial)
        assert np.array_equal(final, other_final)
        assert (other_stats.count, other_stats.correct) == (stats.count, stats.correct)
        assert np.array_equal(other_stats.label_counts, stats.label_counts)
        assert other_stats.loss_sum == pytest.approx(stats.loss_sum, rel=1e-6)
    _, reseeded, _ = _train(*cohort, "seed=1", local=True)
    assert not np.array_equal(final, reseeded)


@pytest.mark.usefixtures("ray_session")
def test_round_metrics_and_learning():
    with Simulation(
        smoke_experiment("participation.cohort_size=30", "eval.num_clients=300")
    ) as sim:
        before = sim.evaluate().metrics()
        rounds = [sim.run_round(r) for r in range(30)]
        after = sim.evaluate().metrics()
    assert all(m["participation/reported"] == 30 for m in rounds)
    assert all(m["participation/clients_aggregated"] == 30 for m in rounds)
    assert all(m["system/round_s"] > 0 and m["train/loss"] > 0 for m in rounds)
    for m in rounds:  # the round's wall time splits into compute and what Ray adds
        assert m["system/train_s"] > 0 and m["system/server_s"] > 0
        total = m["system/train_s"] + m["system/server_s"] + m["system/overhead_s"]
        assert total == pytest.approx(m["system/round_s"])
    assert after["eval/loss"] < before["eval/loss"]
    assert after["eval/accuracy"] > after["eval/majority_class_rate"] + 0.1


@pytest.mark.usefixtures("ray_session")
def test_per_node_reduction_sums_the_same_updates():
    # One node here: forcing per-node reducers still aggregates every client exactly once,
    # and the weights agree with server-side reduction to float tolerance.
    cohort = ("participation.cohort_size=37", "cluster.chunk_size=5", "cluster.num_workers=2")
    _, direct, _ = _train(*cohort, local=True)  # any worker count gives these weights
    _, reduced, _ = _train(*cohort, "cluster.reduce_per_node=true")
    np.testing.assert_allclose(reduced, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("ray_session")
def test_gpu_requests_fall_back_to_the_cpu_without_gpus(capfd):
    _, final, _ = _train("cluster.gpus_per_worker=0.25", "cluster.server_gpu=true", rounds=1)
    assert np.all(np.isfinite(final))
    assert "no GPU in the Ray cluster" in capfd.readouterr().err


@pytest.mark.usefixtures("ray_session")
def test_placement_groups_are_released():
    from ray.util.placement_group import placement_group_table

    for _ in range(2):  # the second would deadlock on the 2 CPUs if the first group leaked
        _train("cluster.num_workers=2", rounds=1)
    states = [g["state"] for g in placement_group_table().values()]
    assert states.count("CREATED") == 0
