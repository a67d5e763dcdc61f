"""engine/plan/settings.py: evaluation schedule, cluster chunking and tracking settings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from engine.plan import Cluster, Evaluation, Tracking

# -- Evaluation --------------------------------------------------------------------------------


def _due_rounds(evaluation: Evaluation, rounds: int) -> list[int]:
    return [r for r in range(rounds) if evaluation.due(r, rounds)]


def test_every_zero_evaluates_only_after_the_last_round():
    assert _due_rounds(Evaluation(every=0), 10) == [9]
    assert _due_rounds(Evaluation(every=0), 1) == [0]


def test_every_k_examples():
    assert _due_rounds(Evaluation(every=3), 10) == [2, 5, 8, 9]
    assert _due_rounds(Evaluation(every=5), 10) == [4, 9]
    assert _due_rounds(Evaluation(every=1), 4) == [0, 1, 2, 3]
    assert _due_rounds(Evaluation(every=20), 10) == [9]


@given(every=st.integers(0, 50), rounds=st.integers(1, 200))
@settings(max_examples=100, deadline=None)
def test_due_schedule(every, rounds):
    expected = set() if every == 0 else set(range(every - 1, rounds, every))
    expected.add(rounds - 1)
    assert _due_rounds(Evaluation(every=every), rounds) == sorted(expected)


@pytest.mark.parametrize(
    ("key", "kwargs"), [("every", {"every": -1}), ("num_clients", {"num_clients": 0})]
)
def test_evaluation_validation(key, kwargs):
    with pytest.raises(ConfigError) as info:
        Evaluation(**kwargs)
    assert info.value.key == key


# -- Cluster -----------------------------------------------------------------------------------


@given(cohort=st.integers(0, 10**7))
@settings(max_examples=200, deadline=None)
def test_auto_chunk_size_is_ceil_cohort_over_16_clamped(cohort):
    expected = (cohort + 15) // 16
    expected = min(max(expected, 1), 10_000)
    assert Cluster().chunk_size_for(cohort) == expected
    # Never depends on the worker count.
    assert Cluster(num_workers=3).chunk_size_for(cohort) == expected


def test_auto_chunk_size_examples():
    cluster = Cluster()
    assert cluster.chunk_size_for(0) == 1
    assert cluster.chunk_size_for(1) == 1
    assert cluster.chunk_size_for(16) == 1
    assert cluster.chunk_size_for(17) == 2
    assert cluster.chunk_size_for(100) == 7
    assert cluster.chunk_size_for(160_000) == 10_000
    assert cluster.chunk_size_for(160_001) == 10_000
    assert cluster.chunk_size_for(10**9) == 10_000


@given(chunk_size=st.integers(1, 10**6), cohort=st.integers(0, 10**7))
@settings(max_examples=100, deadline=None)
def test_explicit_chunk_size_wins(chunk_size, cohort):
    assert Cluster(chunk_size=chunk_size).chunk_size_for(cohort) == chunk_size


@pytest.mark.parametrize("key", ["num_workers", "chunk_size", "num_cpus"])
@pytest.mark.parametrize("value", [0, -1])
def test_cluster_validation_names_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        Cluster(**{key: value})
    assert info.value.key == key


def test_cluster_accepts_none_and_positive_values():
    Cluster(num_workers=None, chunk_size=None, num_cpus=None, address=None)
    Cluster(num_workers=1, chunk_size=1, num_cpus=1, address="ray://head:10001")


# -- Tracking ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["disabled", "offline", "online"])
def test_tracking_accepts_wandb_modes(mode):
    assert Tracking(mode=mode).mode == mode


@pytest.mark.parametrize("mode", ["", "Offline", "dryrun", "off"])
def test_tracking_validation_names_the_key(mode):
    with pytest.raises(ConfigError) as info:
        Tracking(mode=mode)
    assert info.value.key == "mode"
