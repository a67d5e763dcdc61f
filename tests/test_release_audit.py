"""The release audit: a private run releases nothing that tells neighbouring data sets apart.

Every private configuration (mechanism x clipping x aggregation x participation policy, at toy
sizes) runs on D and on two neighbours of it (`tests.audit`): one client's data zeroed (and its
example count changed), and that client's update non-finite. With identical noise, every key
that `engine.app.metric_keys` declares `PUBLIC` must be identical in everything the runs write and
hand wandb; no undeclared key may appear; no `non-private only` key may appear. A metric added
without a declaration fails here, and so does a public one that depends on the clients' data.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import engine.app.metric_keys
import tests.audit
from engine.app.metric_keys import Metric, Release, UndeclaredMetricError, declared
from engine.runtime import Simulation
from engine.scheduling import RoundClock
from tests.audit import RecordingWandb, audit, audit_env

__all__ = ["audit_env"]

MECHANISMS = ("gaussian", "tree", "banded_mf", "blt")
CLIPPINGS = ("fixed", "adaptive")
# Each aggregation with a model and population it applies to (sparse: row-sparse embeddings;
# moe: experts), at toy sizes.
TEXT = (
    "population=zipf_text",
    "population.vocab_size=120",
    "population.topic_vocab=30",
    "population.seq_len=6",
    "population.median_sequences=3",
)
AGGREGATIONS = {
    "dense": ("model=logreg",),
    "sparse": ("aggregation=sparse", *TEXT, "model=lm", "model.embedding_dim=8", "model.hidden=8"),
    "moe": (
        "aggregation=moe",
        *TEXT,
        "model=moe_lm",
        "model.d_model=8",
        "model.num_heads=2",
        "model.num_layers=1",
        "model.num_experts=3",
        "model.expert_hidden=8",
    ),
}
POLICIES = {
    "uniform": (),
    "cyclic": ("participation.num_groups=2",),
    "min_separation": ("participation.min_separation=2",),
    "max_participations": ("participation.max_participations=2",),
    "hourly": ("participation.min_hours=24",),
}
# Small, and with stragglers, dropouts and over-selection, so that the schedule has choices to
# make (which a client's data must not sway).
SMALL = (
    "experiment=smoke",
    "rounds=4",
    "population.num_clients=40",
    "participation.cohort_size=4",
    "eval.every=0",
    "eval.num_clients=4",
    "clock.deadline_s=2.0",
    "clock.over_selection=2.0",
    "clock.dropout_prob=0.2",
    "clock.min_report_fraction=0.5",
    "mechanism.noise_multiplier=1.0",
)
CASES = list(itertools.product(MECHANISMS, CLIPPINGS, AGGREGATIONS, POLICIES))


def overrides(mechanism: str, clipping: str, aggregation: str, policy: str) -> list[str]:
    """The command line of one audited configuration."""
    return [
        *SMALL,
        f"mechanism={mechanism}",
        f"clipping={clipping}",
        f"participation={policy}",
        *POLICIES[policy],
        *AGGREGATIONS[aggregation],
    ]


@pytest.mark.parametrize("case", CASES, ids=["-".join(case) for case in CASES])
def test_a_private_run_releases_nothing_that_tells_neighbours_apart(
    case: tuple[str, str, str, str], tmp_path: Path, audit_env: RecordingWandb
):
    assert audit(overrides(*case), tmp_path, audit_env) == []


@pytest.mark.parametrize("mechanism", ["gaussian", "blt"])
def test_a_calibrated_run_releases_nothing_that_tells_neighbours_apart(
    mechanism: str, tmp_path: Path, audit_env: RecordingWandb
):
    # The solved noise multiplier (released in the summary) is a function of the config only.
    auto = ("mechanism.noise_multiplier=auto", "privacy.target_epsilon=8")
    case = [*overrides(mechanism, "fixed", "dense", "cyclic"), *auto]
    assert audit(case, tmp_path, audit_env) == []


DISTRIBUTED = list(itertools.product(("ddp_gaussian", "ddp_skellam"), POLICIES))


@pytest.mark.parametrize("case", DISTRIBUTED, ids=["-".join(case) for case in DISTRIBUTED])
def test_a_distributed_run_releases_nothing_that_tells_neighbours_apart(
    case: tuple[str, str], tmp_path: Path, audit_env: RecordingWandb
):
    # Secure aggregation: fixed clipping and dense sums only (the others are refused).
    mechanism, policy = case
    assert (
        audit(
            [*overrides(mechanism, "fixed", "dense", policy), "mechanism.bits=20"],
            tmp_path,
            audit_env,
        )
        == []
    )


# Empirical auditing: canaries (and, for the language models, secrets) in private runs.
AUDITED = {
    "canaries-gaussian": ("gaussian", "fixed", "dense", "uniform", ()),
    "canaries-blt-adaptive": ("blt", "adaptive", "dense", "cyclic", ()),
    "canaries-tree-sparse-secrets": (
        "tree", "fixed", "sparse", "uniform",
        ("audit.secrets=[1,2]", "audit.secrets_per_repetition=1", "audit.num_candidates=8"),
    ),
    "canaries-moe-secrets": (
        "gaussian", "fixed", "moe", "min_separation",
        ("audit.secrets=[2]", "audit.secrets_per_repetition=1", "audit.num_candidates=8"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(AUDITED))
def test_an_audited_run_releases_nothing_that_tells_neighbours_apart(
    name: str, tmp_path: Path, audit_env: RecordingWandb
):
    *case, extra = AUDITED[name]
    canaries = ("audit=canaries", "audit.num_canaries=4", "eval.every=2")
    assert audit([*overrides(*case), *canaries, *extra], tmp_path, audit_env) == []


# The audit can fail: today's leaks, put back, are caught.
DENSE = overrides("gaussian", "fixed", "dense", "uniform")


def test_the_audit_catches_a_schedule_that_depends_on_example_counts(
    tmp_path: Path, audit_env: RecordingWandb, monkeypatch: pytest.MonkeyPatch
):
    # Before: clients were timed by their own example counts, in private runs too.
    monkeypatch.setattr(RoundClock, "timed_counts", lambda self, counts, private: counts)
    found = audit(DENSE, tmp_path, audit_env)
    assert any(line.startswith("zeroed") for line in found)


def test_the_audit_catches_a_data_dependent_key_declared_public(
    tmp_path: Path, audit_env: RecordingWandb, monkeypatch: pytest.MonkeyPatch
):
    # Sparse uploads carry the rows a client touched: their bytes are data.
    def public_bytes(key: str) -> Metric:
        metric = declared(key)
        if key == "system/upload_bytes":
            return Metric("participation/upload_bytes", Release.PUBLIC, "", "round", "")
        return metric

    monkeypatch.setattr(tests.audit, "declared", public_bytes)
    monkeypatch.setattr(engine.app.metric_keys, "declared", public_bytes)  # the tracker keeps it
    found = audit(overrides("gaussian", "fixed", "sparse", "uniform"), tmp_path, audit_env)
    assert any("system/upload_bytes" in line for line in found)


def test_an_undeclared_key_fails_the_run(
    tmp_path: Path, audit_env: RecordingWandb, monkeypatch: pytest.MonkeyPatch
):
    run_round = Simulation.run_round

    def with_new_key(self: Simulation, round_idx: int) -> dict[str, float]:
        return {**run_round(self, round_idx), "participation/examples_seen": 1.0}

    monkeypatch.setattr(Simulation, "run_round", with_new_key)
    with pytest.raises(UndeclaredMetricError, match="participation/examples_seen"):
        audit(DENSE, tmp_path, audit_env)
