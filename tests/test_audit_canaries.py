"""Canary clients: their directions, their place in the population, and their cosines in a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard

from common.errors import ConfigError
from engine.population.canaries import WithCanaries
from engine.runtime import LocalBackend, Simulation
from engine.scheduling import ParticipationLedger
from engine.scheduling.ledger import read_log
from mechanisms.audit.canaries import Canaries
from mechanisms.gaussian import GaussianMechanism
from tests.conftest import run_composed, smoke_experiment


@settings(max_examples=25, deadline=None)
@given(dim=st.integers(8, 3000), count=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_directions_are_orthonormal_and_cosines_are_dot_products(dim, count, seed):
    canaries = Canaries(count, dim, seed, first_id=100)
    if 2 * count > canaries.support:
        return
    directions = np.stack([canaries.update(100 + i, 1.0) for i in range(count)]).astype(float)
    np.testing.assert_allclose(directions @ directions.T, np.eye(count), atol=1e-6)
    assert not directions[:, canaries.support :].any()
    vector = np.random.default_rng(seed).normal(size=dim)
    observed, null = canaries.cosines(vector)
    np.testing.assert_allclose(observed, directions @ vector / np.linalg.norm(vector), atol=1e-6)
    assert null.shape == (count,) and np.all(np.abs(null) <= 1)


def test_directions_are_signed_hadamard_rows_of_the_seed():
    canaries = Canaries(4, 70, 5, first_id=0)
    rows = {tuple(row) for row in hadamard(64)}
    directions = [canaries.update(i, 1.0) for i in range(4)]
    for direction in directions:
        assert np.allclose(np.abs(direction[:64]), 1 / 8) and not direction[64:].any()
    for first in directions:  # (H[r] D) * (H[s] D) = H[r xor s]: the signs cancel
        for second in directions:
            assert tuple(np.rint(first[:64] * second[:64] * 64).astype(int)) in rows
    again = Canaries(4, 70, 5, first_id=0)
    assert np.array_equal(again.update(2, 1.0), canaries.update(2, 1.0))
    other = Canaries(4, 70, 6, first_id=0)
    assert not np.array_equal(other.update(2, 1.0), canaries.update(2, 1.0))


def test_null_directions_are_orthogonal_to_every_canary():
    canaries = Canaries(8, 1000, 1, first_id=0)
    change = np.sum([canaries.update(i, 1.0 + i) for i in range(8)], axis=0)
    observed, null = canaries.cosines(change)
    weights = 1.0 + np.arange(8)
    np.testing.assert_allclose(observed, weights / np.linalg.norm(weights), atol=1e-6)
    np.testing.assert_allclose(null, 0.0, atol=1e-6)
    zero_observed, zero_null = canaries.cosines(np.zeros(1000))
    assert not zero_observed.any() and not zero_null.any()


def test_canaries_validate_and_know_their_ids():
    with pytest.raises(ConfigError, match=r"audit\.num_canaries"):
        Canaries(300, 1000, 0, first_id=10)  # 600 directions > 512
    with pytest.raises(ConfigError, match=r"audit\.num_canaries"):
        Canaries(0, 1000, 0, first_id=10)
    canaries = Canaries(3, 1000, 0, first_id=10)
    assert canaries.is_canary(np.array([9, 10, 12, 13])).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="not a canary"):
        canaries.update(13, 1.0)
    with pytest.raises(ValueError, match="1000 coordinates"):
        canaries.cosines(np.ones(999))


def test_the_population_appends_canaries_and_moves_held_out_ids():
    experiment = smoke_experiment()
    base = experiment.population
    population = WithCanaries(base, 5, 7)
    assert population.num_clients == base.num_clients + 5
    ids = np.array([0, base.num_clients - 1, base.num_clients, base.num_clients + 4])
    counts = population.num_examples(ids)
    assert counts[2:].tolist() == [7, 7]
    assert counts[:2].tolist() == base.num_examples(ids[:2]).tolist()
    held_out = population.held_out_ids(3)
    assert held_out.min() >= population.num_clients
    data = population.client_data(int(held_out[0]))
    assert np.array_equal(data.x, base.client_data(int(base.held_out_ids(3)[0])).x)
    with pytest.raises(ValueError, match="canary"):
        population.client_data(base.num_clients + 1)


def test_canaries_need_clipping():
    with pytest.raises(ConfigError, match=r"audit\.num_canaries: canaries need clipping"):
        smoke_experiment("audit=canaries", "audit.num_canaries=4")


def _closed_form(log: Path, first: int, count: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """The cosines when only canaries move the model: per round, (c / n) sum of its canaries."""
    round_of, client = read_log(log)
    canary = client >= first
    per_round = [client[canary & (round_of == r)] - first for r in range(rounds)]
    k = np.bincount(np.concatenate(per_round), minlength=count).astype(float)
    final = k / np.linalg.norm(k)
    largest = np.zeros(count)
    for members in per_round:
        if len(members):
            largest[members] = np.maximum(largest[members], 1 / np.sqrt(len(members)))
    return final, largest


def test_cosines_match_the_closed_form_when_only_canaries_move_the_model(tmp_path):
    # Clients train with lr 1e-30, so (to 1e-30) only the canaries' updates move the model:
    # each round by (c / cohort) times the sum of the round's canary directions (orthonormal).
    experiment = smoke_experiment(
        "audit=canaries", "audit.num_canaries=12", "clipping=fixed", "training.lr=1e-30",
        "population.num_clients=30", "participation.cohort_size=8",
    )  # fmt: skip
    rounds, first = 6, 30
    log = tmp_path / "log"
    ledger = ParticipationLedger(experiment.population.num_clients, log)
    with Simulation(experiment, ledger, LocalBackend()) as sim:
        for round_idx in range(rounds):
            sim.run_round(round_idx)
        final, largest = sim.canary_cosines()
    ledger.close()
    expected_final, expected_largest = _closed_form(log, first, 12, rounds)
    assert expected_final.max() > 0  # some canaries joined
    np.testing.assert_allclose(final[0], expected_final, atol=1e-5)
    np.testing.assert_allclose(final[1], 0.0, atol=1e-5)
    np.testing.assert_allclose(largest[0], expected_largest, atol=1e-5)
    np.testing.assert_allclose(largest[1], 0.0, atol=1e-5)


def test_canaries_never_appear_in_a_run_without_an_audit(tmp_path):
    experiment = smoke_experiment("clipping=fixed")
    assert experiment.canaries is None
    assert not isinstance(experiment.population, WithCanaries)
    summary = run_composed(tmp_path, "experiment=smoke", "clipping=fixed", backend=LocalBackend())
    assert not any(key.startswith("audit/") for key in summary)
    assert summary["population/num_clients"] == experiment.population.num_clients
    assert not (tmp_path / "audit_cosines.png").exists()


def test_an_audited_run_reports_the_estimate_and_draws_the_cosines(tmp_path):
    summary = run_composed(
        tmp_path, "experiment=smoke", "audit=canaries", "audit.num_canaries=20",
        "clipping=fixed", "mechanism=gaussian", "mechanism.noise_multiplier=1.0",
        backend=LocalBackend(),
    )  # fmt: skip
    assert summary["audit/num_canaries"] == 20
    assert summary["population/num_clients"] == 1020
    for suffix in ("", "_all_iterates"):
        estimate = summary[f"audit/epsilon_estimate{suffix}"]
        assert estimate >= 0
        assert summary[f"audit/epsilon_estimate{suffix}_low"] <= estimate
        assert summary[f"audit/null_std{suffix}"] > 0
    assert summary["privacy/epsilon"] > 0
    assert (tmp_path / "audit_cosines.png").stat().st_size > 0


AUDITED_PRIVATE = (
    "experiment=smoke", "rounds=10", "population.num_clients=100", "population.num_features=2000",
    "participation.cohort_size=20", "eval.every=0", "audit=canaries", "audit.num_canaries=64",
    "clipping=fixed", "mechanism=gaussian", "mechanism.noise_multiplier=auto",
    "privacy.target_epsilon=4", "privacy.delta=1e-6",
)  # fmt: skip


def test_noise_skipped_on_some_rounds_lifts_the_estimate_above_the_accounted_epsilon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    honest = run_composed(tmp_path / "honest", *AUDITED_PRIVATE, backend=LocalBackend())
    privatize = GaussianMechanism.privatize

    def skips_even_rounds(self, total, round_idx, state):  # the bug, injected on purpose
        released, state = privatize(self, total, round_idx, state)
        return (total if round_idx % 2 == 0 else released), state

    monkeypatch.setattr(GaussianMechanism, "privatize", skips_even_rounds)
    buggy = run_composed(tmp_path / "buggy", *AUDITED_PRIVATE, backend=LocalBackend())
    accounted = buggy["privacy/epsilon"]
    assert accounted == honest["privacy/epsilon"] <= 4
    assert buggy["audit/epsilon_estimate_all_iterates_low"] > accounted
    assert honest["audit/epsilon_estimate_all_iterates_low"] <= accounted


def test_canaries_go_through_secure_aggregation_like_any_client(tmp_path: Path):
    summary = run_composed(
        tmp_path, "experiment=smoke", "audit=canaries", "audit.num_canaries=50",
        "population.num_clients=100", "clipping=fixed", "mechanism=ddp_skellam",
        "mechanism.noise_multiplier=1", "mechanism.bits=20", backend=LocalBackend(),
    )  # fmt: skip
    assert summary["audit/num_canaries"] == 50
    assert summary["audit/epsilon_estimate_all_iterates"] >= 0
    assert summary["privacy/epsilon"] > 0  # the distributed accountant
